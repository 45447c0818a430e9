package channel

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func testKey(t testing.TB, b byte) PublicKey {
	t.Helper()
	var k PublicKey
	for i := range k {
		k[i] = b
	}
	return k
}

func TestDiffPeersIsIncremental(t *testing.T) {
	a, b, c, d := testKey(t, 1), testKey(t, 2), testKey(t, 3), testKey(t, 4)
	ep := netip.MustParseAddrPort("198.18.0.2:51820")
	cur := map[PublicKey]Peer{
		a: {PublicKey: a, Endpoint: ep, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}},
		b: {PublicKey: b, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}},
		c: {PublicKey: c, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.3/32")}},
	}
	next, err := normalisePeers([]Peer{
		cur[a], // unchanged
		{PublicKey: b, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32"), netip.MustParsePrefix("10.1.0.0/16")}},
		{PublicKey: d, Endpoint: ep, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.4/32")}, PersistentKeepalive: 25 * time.Second},
	}, testKey(t, 9))
	if err != nil {
		t.Fatal(err)
	}
	diff := diffPeers(cur, next)
	if diff.added != 1 || diff.removed != 1 || diff.updated != 1 {
		t.Fatalf("diff counts = +%d -%d ~%d, want +1 -1 ~1", diff.added, diff.removed, diff.updated)
	}
	want := "public_key=" + c.hex() + "\nremove=true\n" +
		"public_key=" + b.hex() + "\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\nallowed_ip=10.1.0.0/16\n" +
		"public_key=" + d.hex() + "\nendpoint=198.18.0.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.4/32\n"
	if diff.uapi != want {
		t.Fatalf("uapi:\n%s\nwant:\n%s", diff.uapi, want)
	}
	if strings.Contains(diff.uapi, a.hex()) || strings.Contains(diff.uapi, "replace_peers") {
		t.Fatal("unchanged peer or replace_peers in the operation")
	}
	if d := diffPeers(map[PublicKey]Peer{a: cur[a]}, []Peer{cur[a]}); d.uapi != "" {
		t.Fatalf("no-op diff produced %q", d.uapi)
	}
}

func TestNormalisePeersRejects(t *testing.T) {
	self := testKey(t, 9)
	p := func(k byte, ips ...string) Peer {
		pp := Peer{PublicKey: testKey(t, k)}
		for _, s := range ips {
			pp.AllowedIPs = append(pp.AllowedIPs, netip.MustParsePrefix(s))
		}
		return pp
	}
	for name, peers := range map[string][]Peer{
		"zero key":      {{}},
		"own key":       {{PublicKey: self}},
		"duplicate key": {p(1), p(1)},
		"shared prefix": {p(1, "10.0.0.0/24"), p(2, "10.0.0.7/24")},
		"bad prefix":    {{PublicKey: testKey(t, 1), AllowedIPs: []netip.Prefix{{}}}},
		"zero port":     {{PublicKey: testKey(t, 1), Endpoint: netip.MustParseAddrPort("198.18.0.1:0")}},
		"unspecified":   {{PublicKey: testKey(t, 1), Endpoint: netip.MustParseAddrPort("0.0.0.0:1")}},
		"keepalive ms":  {{PublicKey: testKey(t, 1), PersistentKeepalive: 1500 * time.Millisecond}},
		"keepalive big": {{PublicKey: testKey(t, 1), PersistentKeepalive: 70000 * time.Second}},
	} {
		if _, err := normalisePeers(peers, self); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	got, err := normalisePeers([]Peer{p(1, "10.0.0.9/24", "10.0.0.0/24", "::ffff:10.2.0.0/112")}, self)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.2.0.0/16")}; len(got[0].AllowedIPs) != 2 || got[0].AllowedIPs[0] != want[0] || got[0].AllowedIPs[1] != want[1] {
		t.Fatalf("normalised allowed IPs = %v, want %v", got[0].AllowedIPs, want)
	}
}

const sampleGet = `private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=12912
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52
allowed_ip=192.168.4.4/32
endpoint=[abcd:23::33%2]:51820
last_handshake_time_sec=0
last_handshake_time_nsec=0
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376
tx_bytes=38333
rx_bytes=2224
allowed_ip=192.168.241.0/24
allowed_ip=10.0.0.0/8
endpoint=182.122.22.19:3233
persistent_keepalive_interval=111
last_handshake_time_sec=1700000000
last_handshake_time_nsec=5
protocol_version=1

`

func TestParseUAPIGet(t *testing.T) {
	st, err := parseUAPIGet([]byte(sampleGet))
	if err != nil {
		t.Fatal(err)
	}
	if st.ListenPort != 12912 || len(st.Peers) != 2 {
		t.Fatalf("state = %+v", st)
	}
	p := st.Peers[1]
	if p.TxBytes != 38333 || p.RxBytes != 2224 || p.PersistentKeepalive != 111*time.Second ||
		p.Endpoint != netip.MustParseAddrPort("182.122.22.19:3233") || !p.LastHandshake.Equal(time.Unix(1700000000, 5)) ||
		len(p.AllowedIPs) != 2 || p.AllowedIPs[0] != netip.MustParsePrefix("10.0.0.0/8") {
		t.Fatalf("peer = %+v", p)
	}
	if !st.Peers[0].LastHandshake.IsZero() {
		t.Fatal("zero handshake time not reported as zero")
	}
	for _, bad := range []string{
		"garbage\n",
		"allowed_ip=10.0.0.0/8\n",
		"public_key=zz\n",
		"public_key=" + strings.Repeat("ab", 32) + "\nlisten_port=1\n",
		"public_key=" + strings.Repeat("ab", 32) + "\nrx_bytes=-1\n",
		"public_key=" + strings.Repeat("ab", 32) + "\nlast_handshake_time_nsec=1000000000\n",
		"public_key=" + strings.Repeat("ab", 32) + "\nsurprise=1\n",
		"listen_port=70000\n",
	} {
		if _, err := parseUAPIGet([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzParseUAPIGet(f *testing.F) {
	f.Add([]byte(sampleGet))
	f.Add([]byte("listen_port=1\n\n"))
	f.Add([]byte("public_key=" + strings.Repeat("00", 32) + "\nallowed_ip=::/0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseUAPIGet(b)
		if err != nil {
			return
		}
		for _, p := range st.Peers {
			for _, pfx := range p.AllowedIPs {
				if !pfx.IsValid() {
					t.Fatalf("invalid prefix accepted: %v", pfx)
				}
			}
		}
	})
}
