package fleet
import ("testing";"time";"github.com/tvd-dev/tvd/policy")
func TestPolicyCompiles(t *testing.T){ if _, err := policy.ParseAndCompile(Policy("fleet", 10*time.Second)); err != nil { t.Fatal(err) } }
