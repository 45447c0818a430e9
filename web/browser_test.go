package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/web"
)

// caseStudy1 is the paper's Figure 4 on three nodes.
func caseStudy1() []agent.NodeConfig {
	return []agent.NodeConfig{
		{Node: "mgmt", EEs: []agent.EEConfig{
			{Name: "yellow-dc", Domain: "yellow", Role: "domain-controller", Owner: "ibm-global-services"},
			{Name: "yellow-gw", Domain: "yellow", Role: "gateway", Owner: "ibm-global-services"},
			{Name: "red-gw", Domain: "red", Role: "gateway", Owner: "outsourcing-customer"},
			{Name: "red-dc", Domain: "red", Role: "domain-controller", Owner: "outsourcing-customer"},
		}},
		{Node: "pc1", EEs: []agent.EEConfig{
			{Name: "yellow-mc1", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
			{Name: "red-client1", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"},
		}},
		{Node: "pc2", EEs: []agent.EEConfig{
			{Name: "yellow-mc2", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
			{Name: "red-client2", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"},
		}},
	}
}

// browser is a headless Chromium with its own profile.
type browser struct {
	t       *testing.T
	bin     string
	profile string
	spki    string // base64 SHA-256 of the server key, the only certificate error it ignores
	out     string // where screenshots go
}

func findChromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no headless browser: chromium is not installed (Debian: apt-get install -y chromium)")
	return ""
}

func (b *browser) args(extra ...string) []string {
	return append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + b.profile, "--ignore-certificate-errors-spki-list=" + b.spki, "--window-size=1400,2400"}, extra...)
}

// run runs Chromium with args and the URL url() returns, and returns its
// output. A browser that crashes (this happens under heavy load) is run
// once more, with a fresh URL: a login token works only once.
func (b *browser) run(url func() string, args ...string) string {
	b.t.Helper()
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, b.bin, b.args(append(args, url())...)...)
		cmd.WaitDelay = 5 * time.Second
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err == nil {
			return string(out)
		}
		var ee *exec.ExitError
		if attempt < 3 && errors.As(err, &ee) && ee.ProcessState != nil && !ee.Exited() {
			b.t.Logf("chromium crashed (%v); running it again", err)
			continue
		}
		b.t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
}

// dom loads the URL url() returns, lets its scripts run for budget of
// virtual time, and returns the DOM.
func (b *browser) dom(url func() string, budget time.Duration) string {
	b.t.Helper()
	return b.run(url, "--virtual-time-budget="+strconv.FormatInt(budget.Milliseconds(), 10), "--dump-dom")
}

// screenshot saves a PNG of the URL url() returns as name.
func (b *browser) screenshot(url func() string, name string) {
	b.t.Helper()
	path := filepath.Join(b.out, name+".png")
	b.run(url, "--virtual-time-budget=3000", "--screenshot="+path)
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		b.t.Errorf("screenshot %s: %v", path, err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

// dashboard finds the dashboard on the controller's port, or, if the
// controller does not mount it, serves it beside the API with the same
// TLS configuration.
func dashboard(t *testing.T, env *tvdtest.Env) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.Controller.Bundle().CertPool()}}}
	if resp, err := hc.Get(env.URL + web.Prefix); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Logf("the dashboard is served on the controller's port")
			return env.URL
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: env.Controller.WebHandler(), TLSConfig: env.Controller.TLSConfig(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)} // Chromium probes and drops connections
	go srv.Serve(tls.NewListener(l, srv.TLSConfig))
	t.Cleanup(func() { srv.Close() })
	t.Logf("the controller does not mount the dashboard; serving it beside the API")
	return "https://" + l.Addr().String()
}

// serverSPKI returns the base64 SHA-256 of the dashboard's certificate
// key, for --ignore-certificate-errors-spki-list.
func serverSPKI(t *testing.T, base string) string {
	t.Helper()
	u, _ := url.Parse(base)
	conn, err := tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// dialAs issues an admin certificate with role and returns a client.
func dialAs(t *testing.T, env *tvdtest.Env, name, role string) *client.Client {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := env.Admin.Admin.IssueAdminCert(context.Background(), connect.NewRequest(&tvdv1.IssueAdminCertRequest{Name: name, Role: role, Csr: csr, Ttl: durationpb.New(time.Hour)}))
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{resp.Msg.GetCert()}, PrivateKey: key}
	cl, err := client.New(env.URL, env.Controller.Bundle().ClientTLSConfig(&cert, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// loginURL mints a login token as cl and returns the dashboard URL that
// redeems it and then shows next.
func loginURL(t *testing.T, cl *client.Client, base, next string) string {
	t.Helper()
	resp, err := cl.Admin.CreateLoginToken(context.Background(), connect.NewRequest(&tvdv1.CreateLoginTokenRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return base + web.Prefix + "login?token=" + url.QueryEscape(resp.Msg.GetToken()) + "&next=" + url.QueryEscape(next)
}

// as returns a maker of fresh login URLs for cl that show next.
func as(t *testing.T, cl *client.Client, base, next string) func() string {
	return func() string { return loginURL(t, cl, base, next) }
}

// session logs a Go HTTP client in with a login token.
func session(t *testing.T, env *tvdtest.Env, cl *client.Client, base string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.Controller.Bundle().CertPool()}}}
	resp, err := hc.Get(loginURL(t, cl, base, web.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login: %s", resp.Status)
	}
	return hc
}

func status(t *testing.T, hc *http.Client, u string) int {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDashboardInChromium runs case study 1 on a real controller and
// agents, logs a headless Chromium into the dashboard as the admin and as
// red's auditor, and checks what each sees: the domains, a member going
// stale when its agent stops, the auditor confined to red, and the audit
// checkpoint verified by the browser itself.
func TestDashboardInChromium(t *testing.T) {
	bin := findChromium(t)
	env := tvdtest.New(t, tvdtest.Options{})
	env.ApplyFiles(tvdtest.ImplicitOutsourcing(t))
	agents := map[string]*tvdtest.RunningAgent{}
	for _, nc := range caseStudy1() {
		agents[nc.Node] = env.StartAgent(nc)
	}
	tvdtest.Eventually(t, 15*time.Second, "8 verified members", func() bool {
		ms := env.Members("")
		if len(ms) != 8 {
			return false
		}
		for _, m := range ms {
			if m.GetVerdict().GetStatus() != tvdv1.Status_STATUS_VERIFIED {
				return false
			}
		}
		return true
	})
	base := dashboard(t, env)
	out := os.Getenv("TVD_WEB_ARTIFACTS")
	if out == "" {
		out = t.TempDir()
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, bin: bin, profile: t.TempDir(), spki: serverSPKI(t, base), out: out}
	aud := dialAs(t, env, "red-cio", "auditor:red")

	// Without a login, the page asks for one.
	if dom := b.dom(func() string { return base + web.Prefix }, time.Second); !strings.Contains(dom, "tvd admin login") || strings.Contains(dom, `data-domain="red"`) {
		t.Errorf("unauthenticated overview:\n%s", dom)
	}
	// The admin sees both domains and the flow grid.
	dom := b.dom(as(t, env.Admin, base, web.Prefix), 2*time.Second)
	for _, want := range []string{`class="domain" data-domain="red"`, `class="domain" data-domain="yellow"`, `class="flow-via-gateway"`, `data-ee="yellow-mc2"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("admin overview lacks %s", want)
		}
	}
	b.screenshot(as(t, env.Admin, base, web.Prefix), "admin-overview")

	// The auditor sees red only.
	dom = b.dom(as(t, aud, base, web.Prefix), 2*time.Second)
	if !strings.Contains(dom, `class="domain" data-domain="red"`) || strings.Contains(dom, `data-domain="yellow"`) || strings.Contains(dom, "yellow-mc1") {
		t.Errorf("auditor:red overview shows other domains:\n%s", dom)
	}
	if dom := b.dom(as(t, aud, base, web.Prefix+"domain/yellow"), time.Second); !strings.Contains(dom, "permission denied") || strings.Contains(dom, "yellow-dc") {
		t.Errorf("auditor:red opening yellow:\n%s", dom)
	}
	b.screenshot(as(t, aud, base, web.Prefix+"domain/red"), "auditor-red")
	hc := session(t, env, aud, base)
	for _, p := range []string{"domain/yellow", "api/report/yellow", "api/events?domain=yellow"} {
		if got := status(t, hc, base+web.Prefix+p); got != http.StatusForbidden {
			t.Errorf("auditor:red GET %s: %d, want 403", p, got)
		}
	}
	if got := status(t, hc, base+web.Prefix+"api/report/red"); got != http.StatusOK {
		t.Errorf("auditor:red GET api/report/red: %d", got)
	}

	// The browser verifies the audit checkpoint itself, and pins the key.
	dom = b.dom(as(t, aud, base, web.Prefix+"domain/red?verify=1"), 5*time.Second)
	if !strings.Contains(dom, "checkpoint verified: size") {
		t.Errorf("checkpoint verification:\n%s", excerpt(dom, "checkpoint-result"))
	}
	if !strings.Contains(dom, "kind-admit") {
		t.Errorf("the live feed shows no admission of red:\n%s", excerpt(dom, `id="events"`))
	}

	// pc2 stops reporting: red-client2 goes stale and the dashboard shows
	// the violation, in the member list and the compliance matrix.
	agents["pc2"].Stop()
	tvdtest.Eventually(t, 30*time.Second, "red-client2 violated", func() bool {
		for _, m := range env.Members("red") {
			if m.GetMember().GetEe() == "red-client2" {
				return m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VIOLATED
			}
		}
		return false
	})
	dom = b.dom(as(t, aud, base, web.Prefix+"domain/red?verify=1"), 5*time.Second)
	if !strings.Contains(dom, `data-ee="red-client2" data-status="violated"`) {
		t.Errorf("the member list does not show red-client2 violated:\n%s", excerpt(dom, "red-client2"))
	}
	if !strings.Contains(dom, `past-deadline">red-client2`) {
		t.Errorf("the compliance matrix does not list red-client2 past its deadline:\n%s", excerpt(dom, "Past their deadline"))
	}
	// The second verification in the same profile checks consistency
	// with the first (the log grew with the stale verdict).
	if !strings.Contains(dom, "checkpoint verified: size") || !strings.Contains(dom, "consistent with the checkpoint verified before") {
		t.Errorf("second checkpoint verification:\n%s", excerpt(dom, "checkpoint-result"))
	}
	b.screenshot(as(t, env.Admin, base, web.Prefix+"domain/red"), "admin-red-violation")

	// A login token works once.
	u := loginURL(t, aud, base, web.Prefix)
	jar, _ := cookiejar.New(nil)
	hc2 := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.Controller.Bundle().CertPool()}}}
	if got := status(t, hc2, u); got != http.StatusOK {
		t.Errorf("first login: %d", got)
	}
	jar2, _ := cookiejar.New(nil)
	hc2.Jar = jar2
	if got := status(t, hc2, u); got != http.StatusUnauthorized {
		t.Errorf("second use of a login token: %d, want 401", got)
	}
}

// excerpt returns the text around the first occurrence of marker.
func excerpt(s, marker string) string {
	i := strings.Index(s, marker)
	if i < 0 {
		if len(s) > 2000 {
			return s[:2000] + "…"
		}
		return s
	}
	lo, hi := max(0, i-300), min(len(s), i+700)
	return s[lo:hi]
}
