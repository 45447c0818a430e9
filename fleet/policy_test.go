package fleet

import (
	"github.com/tvd-dev/tvd/policy"
	"testing"
	"time"
)

func TestPolicyCompiles(t *testing.T) {
	if _, err := policy.ParseAndCompile(Policy("fleet", 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}
