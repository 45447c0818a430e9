package client

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFailover: requests go to the replica that answers; a replica that is
// down or answers 503 (a standby) is skipped, and the next request starts
// where the last one succeeded.
func TestFailover(t *testing.T) {
	hit := map[string]int{}
	serve := func(name string, status int) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hit[name]++
			w.WriteHeader(status)
			io.WriteString(w, name)
		}))
	}
	down := serve("down", 200)
	down.Close()
	standby := serve("standby", http.StatusServiceUnavailable)
	defer standby.Close()
	leader := serve("leader", 200)
	defer leader.Close()
	host := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	f := &failover{hosts: []string{host(down), host(standby), host(leader)}, next: http.DefaultTransport}
	get := func() (string, error) {
		req, _ := http.NewRequest("GET", "http://controller/x", nil)
		resp, err := f.RoundTrip(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	for i := range 3 {
		got, err := get()
		if err != nil || got != "leader" {
			t.Fatalf("request %d: %q, %v", i, got, err)
		}
	}
	if hit["standby"] != 1 || hit["leader"] != 3 {
		t.Errorf("hits %v: the standby should be asked once, the leader every time", hit)
	}
	// A stream's body cannot be sent twice: it is not retried.
	f.cur.Store(0)
	req, _ := http.NewRequest("POST", "http://controller/x", io.NopCloser(strings.NewReader("body")))
	if _, err := f.RoundTrip(req); err == nil {
		t.Fatal("a body that cannot be replayed was sent to a second replica")
	}
	if got, err := get(); err != nil || got != "leader" {
		t.Fatalf("after a failed stream: %q, %v", got, err)
	}
	// Nobody answers: one error naming every replica.
	leader.Close()
	_, err := get()
	if err == nil || strings.Count(err.Error(), "127.0.0.1") < 3 {
		t.Errorf("err %v", err)
	}
	if _, err := parseURLs("https://a:1, http://b:2"); err == nil {
		t.Error("accepted a plain http URL in the list")
	}
}
