package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tvd-dev/tvd/ca"
)

// Token lifetimes.
const (
	DefaultLoginTTL = 2 * time.Minute
	MaxLoginTTL     = 10 * time.Minute
	SessionTTL      = time.Hour
	tokenPrefix     = "tvdw1"
	maxTokenLen     = 2048
)

// Viewer is who looks at the dashboard: an administrator identity and its
// role.
type Viewer struct {
	ID   string
	Role ca.Role
}

// ErrToken is returned for a token that is malformed, forged, expired or
// already used. Its message never says which, to an unauthenticated
// caller.
var ErrToken = errors.New("invalid or expired token")

// claims are a token's signed content.
type claims struct {
	Kind    string `json:"k"` // "login" or "session"
	Subject string `json:"sub"`
	Role    string `json:"role"`
	Expires int64  `json:"exp"` // Unix seconds
	Nonce   string `json:"n"`
}

// Tokens mints and checks dashboard tokens: a login token (single use,
// minutes) that an administrator gets from the controller with its client
// certificate, and the session cookie (an hour) the login turns it into.
// Both are HMAC-SHA-256 over their claims with a key that lives only in
// memory, so a controller restart logs every browser out.
//
// Tokens does not check that the administrator's certificate is still
// valid after the login: a session lasts its hour.
type Tokens struct {
	key []byte
	now func() time.Time

	mu   sync.Mutex
	used map[string]time.Time // redeemed login nonces until they expire
}

// NewTokens returns a Tokens with a fresh random key. now is the clock;
// nil means time.Now.
func NewTokens(now func() time.Time) *Tokens {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(fmt.Sprintf("web: read random key: %v", err)) // crypto/rand never fails on Linux
	}
	return NewTokensWithKey(key, now)
}

// NewTokensWithKey returns a Tokens with the given key (tests).
func NewTokensWithKey(key []byte, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	return &Tokens{key: append([]byte(nil), key...), now: now, used: map[string]time.Time{}}
}

// MintLogin returns a login token for v valid for ttl (DefaultLoginTTL if
// zero, at most MaxLoginTTL) and its expiry.
func (t *Tokens) MintLogin(v Viewer, ttl time.Duration) (string, time.Time, error) {
	if ttl == 0 {
		ttl = DefaultLoginTTL
	}
	if ttl < 0 || ttl > MaxLoginTTL {
		return "", time.Time{}, fmt.Errorf("login token ttl %v: want more than 0 and at most %v", ttl, MaxLoginTTL)
	}
	if err := v.Role.Validate(); err != nil {
		return "", time.Time{}, fmt.Errorf("login token: %w", err)
	}
	exp := t.now().Add(ttl)
	return t.mint(claims{Kind: "login", Subject: v.ID, Role: v.Role.String(), Expires: exp.Unix()}), exp, nil
}

func (t *Tokens) mintSession(v Viewer) string {
	return t.mint(claims{Kind: "session", Subject: v.ID, Role: v.Role.String(), Expires: t.now().Add(SessionTTL).Unix()})
}

func (t *Tokens) mint(c claims) string {
	var n [16]byte
	if _, err := rand.Read(n[:]); err != nil {
		panic(fmt.Sprintf("web: read random nonce: %v", err))
	}
	c.Nonce = hex.EncodeToString(n[:])
	body, _ := json.Marshal(c)
	p := base64.RawURLEncoding.EncodeToString(body)
	return tokenPrefix + "." + p + "." + base64.RawURLEncoding.EncodeToString(t.mac(p))
}

func (t *Tokens) mac(payload string) []byte {
	h := hmac.New(sha256.New, t.key)
	h.Write([]byte("tvd dashboard token\x00"))
	h.Write([]byte(payload))
	return h.Sum(nil)
}

// ParseToken splits a token into its payload and MAC and decodes the
// payload's claims, without checking the MAC. It is the parser of
// untrusted input; callers check the MAC with the key.
func ParseToken(s string) (payload string, mac []byte, c claims, err error) {
	if len(s) > maxTokenLen {
		return "", nil, c, fmt.Errorf("token of %d bytes: at most %d", len(s), maxTokenLen)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 3 || parts[0] != tokenPrefix {
		return "", nil, c, fmt.Errorf("token: want %s.PAYLOAD.MAC", tokenPrefix)
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", nil, c, fmt.Errorf("token payload: %w", err)
	}
	if mac, err = base64.RawURLEncoding.DecodeString(parts[2]); err != nil || len(mac) != sha256.Size {
		return "", nil, c, fmt.Errorf("token mac: want %d bytes of base64url", sha256.Size)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return "", nil, c, fmt.Errorf("token claims: %w", err)
	}
	if c.Kind != "login" && c.Kind != "session" {
		return "", nil, c, fmt.Errorf("token kind %q: want login or session", c.Kind)
	}
	return parts[1], mac, c, nil
}

// check verifies a token of kind and returns its claims and viewer.
func (t *Tokens) check(s, kind string) (claims, Viewer, error) {
	payload, mac, c, err := ParseToken(s)
	if err != nil {
		return c, Viewer{}, ErrToken
	}
	if !hmac.Equal(mac, t.mac(payload)) || c.Kind != kind || t.now().Unix() >= c.Expires {
		return c, Viewer{}, ErrToken
	}
	role, err := ca.ParseRole(c.Role)
	if err != nil || c.Subject == "" {
		return c, Viewer{}, ErrToken
	}
	return c, Viewer{ID: c.Subject, Role: role}, nil
}

// redeemLogin checks a login token and marks it used: a second use fails.
func (t *Tokens) redeemLogin(s string) (Viewer, error) {
	c, v, err := t.check(s, "login")
	if err != nil {
		return Viewer{}, err
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	for n, exp := range t.used {
		if now.After(exp) {
			delete(t.used, n)
		}
	}
	if _, dup := t.used[c.Nonce]; dup {
		return Viewer{}, ErrToken
	}
	t.used[c.Nonce] = time.Unix(c.Expires, 0)
	return v, nil
}

// session checks a session cookie's value.
func (t *Tokens) session(s string) (Viewer, error) {
	_, v, err := t.check(s, "session")
	return v, err
}
