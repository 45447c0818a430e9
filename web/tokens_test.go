package web

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ca"
)

func TestTokens(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	tk := NewTokensWithKey([]byte("0123456789abcdef0123456789abcdef"), clock)
	v := Viewer{ID: "spiffe://tvd.local/admin/cio/role/auditor/red", Role: ca.Role{Kind: ca.RoleAuditor, Domain: "red"}}
	tok, exp, err := tk.MintLogin(v, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !exp.Equal(now.Add(DefaultLoginTTL)) {
		t.Errorf("expires %v", exp)
	}
	if _, err := tk.session(tok); !errors.Is(err, ErrToken) {
		t.Errorf("a login token served as a session: %v", err)
	}
	got, err := tk.redeemLogin(tok)
	if err != nil || got != v {
		t.Fatalf("redeem = %v, %v", got, err)
	}
	if _, err := tk.redeemLogin(tok); !errors.Is(err, ErrToken) {
		t.Errorf("second redeem: %v, want ErrToken", err)
	}
	sess := tk.mintSession(v)
	if got, err := tk.session(sess); err != nil || got != v {
		t.Errorf("session = %v, %v", got, err)
	}
	if _, err := tk.redeemLogin(sess); !errors.Is(err, ErrToken) {
		t.Errorf("a session token logged in: %v", err)
	}
	// Another key does not accept it.
	other := NewTokens(clock)
	if _, err := other.session(sess); !errors.Is(err, ErrToken) {
		t.Errorf("session under another key: %v", err)
	}
	// A changed role breaks the MAC.
	payload, _, _, _ := ParseToken(sess)
	forged := strings.Replace(sess, payload, payload[:len(payload)-2]+"AA", 1)
	if _, err := tk.session(forged); !errors.Is(err, ErrToken) {
		t.Errorf("forged session: %v", err)
	}
	// Expiry.
	tok2, _, _ := tk.MintLogin(v, time.Minute)
	now = now.Add(2 * time.Minute)
	if _, err := tk.redeemLogin(tok2); !errors.Is(err, ErrToken) {
		t.Errorf("expired login: %v", err)
	}
	now = now.Add(SessionTTL)
	if _, err := tk.session(sess); !errors.Is(err, ErrToken) {
		t.Errorf("expired session: %v", err)
	}
	if _, _, err := tk.MintLogin(v, time.Hour); err == nil {
		t.Error("a login token of an hour was minted")
	}
	if _, _, err := tk.MintLogin(Viewer{ID: "x"}, 0); err == nil {
		t.Error("a login token without a role was minted")
	}
}

func FuzzParseToken(f *testing.F) {
	tk := NewTokensWithKey([]byte("k"), nil)
	good, _, _ := tk.MintLogin(Viewer{ID: "a", Role: ca.Role{Kind: ca.RoleAdmin}}, 0)
	f.Add(good)
	f.Add(tk.mintSession(Viewer{ID: "a", Role: ca.Role{Kind: ca.RoleAuditor, Domain: "red"}}))
	f.Add("tvdw1..")
	f.Add("tvdw1.e30.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		_, _, _, _ = ParseToken(s)
		if _, err := tk.session(s); err == nil {
			// Only tokens minted with the key pass.
			if _, _, c, perr := ParseToken(s); perr != nil || c.Kind != "session" {
				t.Fatalf("session accepted %q", s)
			}
		}
	})
}
