package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/report"
)

// logSource is a Source over a real audit log in memory and fixed
// domain data; tamper and otherKey make its checkpoint lie.
type logSource struct {
	lg       *audit.Log
	vk       string
	otherVK  string
	mu       sync.Mutex
	tamper   bool
	otherKey bool
}

func newLogSource(t testing.TB) *logSource {
	t.Helper()
	sk, vk, err := audit.GenerateKey(nil, "test.local/audit")
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := audit.GenerateKey(nil, "test.local/audit")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := audit.NewSigner(sk)
	v, _ := audit.NewVerifier(vk)
	lg, err := audit.Open(context.Background(), audit.NewMemoryStorage(), audit.Config{Signer: s, Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	src := &logSource{lg: lg, vk: vk, otherVK: other}
	src.append(t, 3)
	return src
}

func (s *logSource) append(t testing.TB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		dom := []string{"red", "yellow"}[i%2]
		if _, err := s.lg.Append(context.Background(), audit.Entry{Kind: audit.KindVerdict, Actor: "spiffe://test.local/controller", Subject: "spiffe://test.local/domain/" + dom + "/role/r/ee/e" + strconv.Itoa(i), Domain: dom, Detail: map[string]string{"status": "verified"}}); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *logSource) Overview(ctx context.Context, v Viewer) (*Overview, error) {
	ov := &Overview{TrustDomain: "test.local", PolicyVersion: 2}
	for _, d := range []string{"red", "yellow"} {
		if v.Role.CanRead(d) {
			ov.Domains = append(ov.Domains, DomainInfo{Name: d, Owner: d + "-owner", Members: 1, Verified: 1})
			ov.Members = append(ov.Members, MemberInfo{Domain: d, Role: "r", EE: d + "-ee", Node: "n1", Status: "verified", LastVerified: time.Now()})
		}
	}
	ov.Flows = []FlowRule{{FromDomain: "red", FromRole: "r", To: "yellow", Rule: "via-gateway"}}
	return ov, nil
}

func (s *logSource) Report(ctx context.Context, v Viewer, domain string) (*report.Report, error) {
	if !v.Role.CanRead(domain) {
		return nil, ErrDenied
	}
	return &report.Report{Domain: domain, Owner: domain + "-owner", GeneratedAt: time.Now()}, nil
}

func (s *logSource) Events(ctx context.Context, v Viewer, domain string, after int64, limit int) ([]Event, error) {
	var out []Event
	for i := uint64(after + 1); i < s.lg.Size() && len(out) < limit; i++ {
		e, err := s.lg.Entry(ctx, i)
		if err != nil {
			return nil, err
		}
		if (domain == "" || e.Domain == domain) && v.Role.CanRead(e.Domain) {
			out = append(out, Event{Index: i, Time: e.Time, Kind: e.Kind, Domain: e.Domain, Subject: e.Subject})
		}
	}
	return out, nil
}

func (s *logSource) Checkpoint(ctx context.Context, v Viewer, oldSize uint64) (*CheckpointProof, error) {
	s.mu.Lock()
	tamper, otherKey := s.tamper, s.otherKey
	s.mu.Unlock()
	signed := s.lg.Checkpoint()
	cp := &CheckpointProof{Signed: string(signed), VerifierKey: s.vk}
	size := s.lg.Size()
	if oldSize > 0 && oldSize < size {
		p, err := s.lg.ConsistencyProof(ctx, oldSize, size)
		if err != nil {
			return nil, err
		}
		cp.OldSize, cp.Consistency = oldSize, p
	}
	if tamper {
		// Claim one more entry than signed.
		cp.Signed = strings.Replace(cp.Signed, "\n"+strconv.FormatUint(size, 10)+"\n", "\n"+strconv.FormatUint(size+1, 10)+"\n", 1)
	}
	if otherKey {
		cp.VerifierKey = s.otherVK
	}
	return cp, nil
}

var (
	admin   = Viewer{ID: "spiffe://test.local/admin/root/role/admin", Role: ca.Role{Kind: ca.RoleAdmin}}
	auditor = Viewer{ID: "spiffe://test.local/admin/cio/role/auditor/red", Role: ca.Role{Kind: ca.RoleAuditor, Domain: "red"}}
)

func newTestServer(t *testing.T, src Source) (*httptest.Server, *Tokens) {
	t.Helper()
	tk := NewTokens(nil)
	h, err := NewHandler(Config{Source: src, Tokens: tk})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, tk
}

func loggedIn(t *testing.T, srv *httptest.Server, tk *Tokens, v Viewer) *http.Client {
	t.Helper()
	tok, _, err := tk.MintLogin(v, 0)
	if err != nil {
		t.Fatal(err)
	}
	hc := srv.Client()
	hc.Jar, _ = cookiejar.New(nil)
	resp, err := hc.Get(srv.URL + Prefix + "login?token=" + url.QueryEscape(tok))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != Prefix {
		t.Fatalf("login: %s at %s", resp.Status, resp.Request.URL)
	}
	return hc
}

func get(t *testing.T, hc *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHandlerAccess(t *testing.T) {
	src := newLogSource(t)
	srv, tk := newTestServer(t, src)
	anon := srv.Client()
	for _, p := range []string{"", "domain/red", "api/overview", "api/events", "api/checkpoint", "api/report/red"} {
		if code, _ := get(t, anon, srv.URL+Prefix+p); code != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s: %d, want 401", p, code)
		}
	}
	if code, _ := get(t, anon, srv.URL+Prefix+"login?token=tvdw1.e30.AAAA"); code != http.StatusUnauthorized {
		t.Errorf("login with a forged token: %d", code)
	}
	hc := loggedIn(t, srv, tk, auditor)
	code, body := get(t, hc, srv.URL+Prefix)
	if code != http.StatusOK || !strings.Contains(body, `data-domain="red"`) || strings.Contains(body, `data-domain="yellow"`) {
		t.Errorf("auditor overview (%d):\n%s", code, body)
	}
	for p, want := range map[string]int{
		"domain/red": 200, "domain/yellow": 403, "api/report/red": 200, "api/report/yellow": 403,
		"api/events?domain=yellow": 403, "api/events?after=x": 400, "api/events?limit=100000": 400, "api/checkpoint?old=-1": 400,
		"domain/green": 403, "static/app.js": 200, "static/nothing.js": 404,
	} {
		if code, _ := get(t, hc, srv.URL+Prefix+p); code != want {
			t.Errorf("auditor GET %s: %d, want %d", p, code, want)
		}
	}
	_, body = get(t, hc, srv.URL+Prefix+"api/events?after=-1")
	if strings.Contains(body, `"yellow"`) || !strings.Contains(body, `"red"`) {
		t.Errorf("auditor events: %s", body)
	}
	resp, err := hc.Get(srv.URL + Prefix)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	adm := loggedIn(t, srv, tk, admin)
	if code, body := get(t, adm, srv.URL+Prefix+"domain/yellow"); code != 200 || !strings.Contains(body, "yellow-ee") {
		t.Errorf("admin domain/yellow: %d", code)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/ui/domain/red":        "/ui/domain/red",
		"/ui/domain/red?x=1":    "/ui/domain/red?x=1",
		"":                      "/ui/",
		"https://evil.example/": "/ui/",
		"//evil.example/ui/":    "/ui/",
		"/ui//evil.example":     "/ui/",
		"/ui/\\evil":            "/ui/",
		"/other":                "/ui/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCheckpointVerificationInChromium runs the dashboard's JavaScript
// checkpoint verifier in a headless Chromium against a real audit log:
// a good checkpoint verifies, a grown log is shown consistent with the
// one verified before, and a tampered checkpoint or a changed verifier
// key is refused.
func TestCheckpointVerificationInChromium(t *testing.T) {
	var bin string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("no headless browser: chromium is not installed (Debian: apt-get install -y chromium)")
	}
	src := newLogSource(t)
	srv, tk := newTestServer(t, src)
	sum := sha256.Sum256(srv.Certificate().RawSubjectPublicKeyInfo)
	spki := base64.StdEncoding.EncodeToString(sum[:])
	profile := t.TempDir()
	page := func() string {
		t.Helper()
		for attempt := 1; ; attempt++ {
			tok, _, err := tk.MintLogin(auditor, 0)
			if err != nil {
				t.Fatal(err)
			}
			u := srv.URL + Prefix + "login?token=" + url.QueryEscape(tok) + "&next=" + url.QueryEscape(Prefix+"domain/red?verify=1")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
				"--user-data-dir="+profile, "--ignore-certificate-errors-spki-list="+spki, "--virtual-time-budget=5000", "--dump-dom", u)
			cmd.WaitDelay = 5 * time.Second
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			cancel()
			var ee *exec.ExitError
			if err != nil && attempt < 3 && errors.As(err, &ee) && !ee.Exited() {
				t.Logf("chromium crashed (%v); running it again", err)
				continue
			}
			if err != nil {
				t.Fatalf("chromium: %v\n%s", err, stderr.String())
			}
			s := string(out)
			i := strings.Index(s, `id="checkpoint-result"`)
			if i < 0 {
				t.Fatalf("no checkpoint result in the page:\n%s", s)
			}
			return s[i:min(len(s), i+400)]
		}
	}
	size := func() string { return fmt.Sprintf("size %d,", src.lg.Size()) }

	if got := page(); !strings.Contains(got, "checkpoint verified: "+size()) || strings.Contains(got, "consistent with") {
		t.Errorf("first verification: %s", got)
	}
	src.append(t, 5)
	if got := page(); !strings.Contains(got, "checkpoint verified: "+size()) || !strings.Contains(got, "consistent with the checkpoint verified before (size 3)") {
		t.Errorf("after the log grew: %s", got)
	}
	src.append(t, 1)
	src.mu.Lock()
	src.tamper = true
	src.mu.Unlock()
	if got := page(); !strings.Contains(got, "checkpoint NOT verified") {
		t.Errorf("tampered checkpoint: %s", got)
	}
	src.mu.Lock()
	src.tamper, src.otherKey = false, true
	src.mu.Unlock()
	if got := page(); !strings.Contains(got, "NOT verified: the log&#39;s verifier key changed") && !strings.Contains(got, "NOT verified: the log's verifier key changed") {
		t.Errorf("changed verifier key: %s", got)
	}
	// The failures stored nothing: the next proof is from size 8, a
	// power of two (the other branch of RFC 9162's algorithm).
	src.mu.Lock()
	src.otherKey = false
	src.mu.Unlock()
	src.append(t, 8)
	if got := page(); !strings.Contains(got, "checkpoint verified: "+size()) || !strings.Contains(got, "consistent with the checkpoint verified before (size 8)") {
		t.Errorf("from size 8: %s", got)
	}
}
