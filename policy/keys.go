package policy

import (
	"encoding/base64"
	"strings"
)

// validPublicKey reports whether s is "ed25519:" followed by the base64 of a
// 32-byte key.
func validPublicKey(s string) bool {
	b64, ok := strings.CutPrefix(s, "ed25519:")
	if !ok {
		return false
	}
	k, err := base64.StdEncoding.DecodeString(b64)
	return err == nil && len(k) == 32
}
