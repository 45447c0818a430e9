package agent

import (
	"encoding/json"
	"testing"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
)

func TestDegrade(t *testing.T) {
	c, err := policy.LoadAndCompile("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	mj, _ := json.Marshal(c.Matrix)
	base := &tvdv1.Plan{
		Members: []*tvdv1.PlanMember{{Member: &tvdv1.Member{Domain: "red", Role: "gateway", Ee: "red-gw"}, OverlayAddress: "10.78.0.2"}},
		Flow:    &tvdv1.FlowPlan{MatrixId: "sha256:x", Matrix: mj},
	}
	gw, _ := c.Class("red/gateway")
	ygw, _ := c.Class("yellow/gateway")
	rdc, _ := c.Class("red/domain-controller")

	base.OnControllerLoss = "keep-intra"
	d, err := degrade(base)
	if err != nil {
		t.Fatal(err)
	}
	m, err := flow.UnmarshalMatrix(d.GetFlow().GetMatrix())
	if err != nil {
		t.Fatal(err)
	}
	if m.Decide(gw, ygw).Direct {
		t.Error("keep-intra: red gateway still reaches yellow's gateway")
	}
	if !m.Decide(gw, rdc).Direct {
		t.Error("keep-intra: intra-domain traffic cut")
	}
	if d.GetFlow().GetMatrixId() == base.GetFlow().GetMatrixId() {
		t.Error("keep-intra: matrix id unchanged")
	}
	if !c.Matrix.Decide(gw, ygw).Direct {
		t.Error("degrade changed the original plan")
	}

	base.OnControllerLoss = "isolate"
	if d, err = degrade(base); err != nil || len(d.GetQuarantine()) != 1 {
		t.Errorf("isolate: %v, quarantine %v", err, d.GetQuarantine())
	}
	base.OnControllerLoss = "keep-all"
	if d, _ = degrade(base); d != base {
		t.Error("keep-all changed the plan")
	}
	base.OnControllerLoss = "panic"
	if _, err := degrade(base); err == nil {
		t.Error("unknown rule accepted")
	}
}
