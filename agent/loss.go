package agent

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/proto"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow"
)

// degrade returns the plan to enforce while the controller is lost, under
// the domains' rule (ARCHITECTURE §4):
//
//   - keep-intra: members keep talking inside their domains; every
//     cross-domain cell becomes none;
//   - isolate: every member is quarantined (only the controller stays
//     reachable, so that it can come back);
//   - keep-all: the last plan stays as it is.
//
// No rule ever admits anyone new: the node simply keeps its last members.
func degrade(p *tvdv1.Plan) (*tvdv1.Plan, error) {
	rule := p.GetOnControllerLoss()
	if rule == "keep-all" {
		return p, nil
	}
	d := proto.Clone(p).(*tvdv1.Plan)
	switch rule {
	case "isolate":
		for _, m := range d.GetMembers() {
			d.Quarantine = append(d.Quarantine, &tvdv1.QuarantinedMember{Member: m.GetMember(), Addresses: []string{m.GetOverlayAddress()}, Reason: "controller lost: isolate"})
		}
		return d, nil
	case "", "keep-intra":
		if d.GetFlow() == nil || len(d.GetFlow().GetMatrix()) == 0 {
			return d, nil
		}
		m, err := flow.UnmarshalMatrix(d.GetFlow().GetMatrix())
		if err != nil {
			return nil, fmt.Errorf("controller-loss plan: %w", err)
		}
		b, err := flow.NewBuilder(m.Domains())
		if err != nil {
			return nil, fmt.Errorf("controller-loss plan: %w", err)
		}
		intra, err := json.Marshal(b.Build())
		if err != nil {
			return nil, fmt.Errorf("controller-loss plan: %w", err)
		}
		d.Flow.Matrix = intra
		d.Flow.MatrixId = d.GetFlow().GetMatrixId() + "+controller-lost"
		return d, nil
	}
	return nil, fmt.Errorf("controller-loss plan: unknown rule %q", rule)
}
