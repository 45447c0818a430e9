package channel

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary double as a helper process that runs one
// Interface, so the throughput benchmark compares like with like: our
// Interface in its own process against the upstream wireguard-go command in
// its own process.
func TestMain(m *testing.M) {
	if os.Getenv("TVDCH_HELPER") == "iface" {
		os.Exit(runIfaceHelper(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

type helperPeer struct {
	PublicKey  string
	Endpoint   string
	AllowedIPs []string
}

type helperConfig struct {
	Name, PrivateKey, Address, NetNS string
	ListenPort                       uint16
	Peers                            []helperPeer
}

// runIfaceHelper reads a helperConfig line, brings up the Interface, prints
// "ready", and closes it when stdin reaches EOF.
func runIfaceHelper(in io.Reader, out io.Writer) int {
	r := bufio.NewReader(in)
	line, err := r.ReadBytes('\n')
	if err != nil {
		fmt.Fprintln(out, "error: read config:", err)
		return 1
	}
	var hc helperConfig
	if err := json.Unmarshal(line, &hc); err != nil {
		fmt.Fprintln(out, "error: config:", err)
		return 1
	}
	key, err := ParsePrivateKey(hc.PrivateKey)
	if err != nil {
		fmt.Fprintln(out, "error:", err)
		return 1
	}
	i, err := New(Config{Name: hc.Name, Domain: "bench", PrivateKey: key, ListenPort: hc.ListenPort,
		Address: netip.MustParsePrefix(hc.Address), NetNS: hc.NetNS})
	if err != nil {
		fmt.Fprintln(out, "error:", err)
		return 1
	}
	defer i.Close()
	var peers []Peer
	for _, hp := range hc.Peers {
		pk, err := ParsePublicKey(hp.PublicKey)
		if err != nil {
			fmt.Fprintln(out, "error:", err)
			return 1
		}
		p := Peer{PublicKey: pk, Endpoint: netip.MustParseAddrPort(hp.Endpoint)}
		for _, a := range hp.AllowedIPs {
			p.AllowedIPs = append(p.AllowedIPs, netip.MustParsePrefix(a))
		}
		peers = append(peers, p)
	}
	if err := i.SetPeers(peers); err != nil {
		fmt.Fprintln(out, "error:", err)
		return 1
	}
	fmt.Fprintln(out, "ready")
	io.Copy(io.Discard, r)
	return 0
}

// startProcess starts cmd, waits for a line saying "ready" on its stdout,
// and stops it at cleanup by closing stdin, then killing it if needed.
func startProcess(b testing.TB, cmd *exec.Cmd, stdin string) {
	b.Helper()
	w, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		w.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if stdin != "" {
		io.WriteString(w, stdin)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			if t := sc.Text(); t == "ready" || strings.HasPrefix(t, "error") {
				ready <- t
			}
		}
		close(ready)
	}()
	select {
	case s := <-ready:
		if s != "ready" {
			b.Fatalf("%s: %s", cmd.Path, s)
		}
	case <-time.After(20 * time.Second):
		b.Fatalf("%s did not become ready", cmd.Path)
	}
}

// buildWireGuardGo builds the upstream wireguard-go command at the version
// in go.mod.
func buildWireGuardGo(b testing.TB) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "wireguard-go")
	out, err := exec.Command("go", "build", "-o", bin, "golang.zx2c4.com/wireguard").CombinedOutput()
	if err != nil {
		b.Fatalf("build wireguard-go: %v: %s", err, out)
	}
	return bin
}

// startPlainWireGuard runs upstream wireguard-go in node's namespace and
// configures it over its UAPI socket in one operation, the way wg(8) would.
func startPlainWireGuard(b testing.TB, bin string, n *labNode, name string, key PrivateKey, port uint16, addr netip.Prefix, peer Peer) {
	b.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.ns, bin, "-f", name)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	w, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		w.Close()
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sock := "/var/run/wireguard/" + name + ".sock"
	var c net.Conn
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			b.Fatalf("wireguard-go UAPI socket %s: %v", sock, err)
		}
	}
	defer c.Close()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "set=1\nprivate_key=%x\nlisten_port=%d\nreplace_peers=true\n", key[:], port)
	fmt.Fprintf(&cfg, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", peer.PublicKey.hex(), peer.Endpoint)
	for _, a := range peer.AllowedIPs {
		fmt.Fprintf(&cfg, "allowed_ip=%s\n", a)
	}
	cfg.WriteString("\n")
	if _, err := io.WriteString(c, cfg.String()); err != nil {
		b.Fatal(err)
	}
	resp, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || resp != "errno=0\n" {
		b.Fatalf("configure wireguard-go: %q %v", resp, err)
	}
	run(b, "ip", "-n", n.ns, "addr", "add", addr.String(), "dev", name)
	run(b, "ip", "-n", n.ns, "link", "set", name, "up")
}

// startHelperInterface runs our Interface in a helper process (this test
// binary) in node's namespace.
func startHelperInterface(b testing.TB, n *labNode, name string, key PrivateKey, port uint16, addr netip.Prefix, peer Peer) {
	b.Helper()
	text := key.SecretBase64()
	hc := helperConfig{Name: name, PrivateKey: string(text), Address: addr.String(), NetNS: n.path, ListenPort: port,
		Peers: []helperPeer{{PublicKey: peer.PublicKey.String(), Endpoint: peer.Endpoint.String(), AllowedIPs: []string{peer.AllowedIPs[0].String()}}}}
	js, _ := json.Marshal(hc)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TVDCH_HELPER=iface")
	startProcess(b, cmd, string(js)+"\n")
}

// streamPath is one long-lived TCP connection from node B to node A over an
// overlay, with a reader on A that reports when a given number of bytes
// arrived.
type streamPath struct {
	conn net.Conn
	got  chan int
	want chan int
}

func newStreamPath(b testing.TB, na, nb *labNode, to netip.Addr, port int) *streamPath {
	b.Helper()
	var ln net.Listener
	na.do(b, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(to, uint16(port)).String())
		return err
	})
	b.Cleanup(func() { ln.Close() })
	p := &streamPath{got: make(chan int), want: make(chan int)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for want := range p.want {
			n := 0
			for n < want {
				m, err := c.Read(buf)
				if err != nil {
					p.got <- n
					return
				}
				n += m
			}
			p.got <- n
		}
	}()
	var dialErr error
	deadline := time.Now().Add(10 * time.Second)
	for {
		nb.do(b, func() error {
			p.conn, dialErr = net.DialTimeout("tcp4", netip.AddrPortFrom(to, uint16(port)).String(), 2*time.Second)
			return nil
		})
		if dialErr == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if dialErr != nil {
		b.Fatalf("dial %s over the overlay: %v", to, dialErr)
	}
	b.Cleanup(func() { p.conn.Close(); close(p.want) })
	return p
}

// send moves n bytes and returns how long it took until all arrived.
func (p *streamPath) send(b testing.TB, chunk []byte, n int) time.Duration {
	start := time.Now()
	p.want <- n
	for sent := 0; sent < n; sent += len(chunk) {
		if _, err := p.conn.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if got := <-p.got; got < n {
		b.Fatalf("received %d of %d bytes", got, n)
	}
	return time.Since(start)
}

// BenchmarkOverlayThroughput measures TCP throughput between two namespaces
// over our Interface and over upstream wireguard-go configured directly with
// the same keys, in the same run and alternating, each data plane in its own
// process. Reports MB/s of both and the median per-pair throughput ratio
// ours/plain (goal >= 0.95). Run with e.g. -benchtime 40x.
func BenchmarkOverlayThroughput(b *testing.B) {
	l := newLab(b, 2)
	na, nb := l.nodes[0], l.nodes[1]
	bin := buildWireGuardGo(b)
	ka, kb := mustKey(b), mustKey(b)
	ourA, ourB := na.overlay, nb.overlay
	plainA := netip.MustParsePrefix("198.19.88.1/24")
	plainB := netip.MustParsePrefix("198.19.88.2/24")
	peerOf := func(n *labNode, k PrivateKey, port uint16, a netip.Prefix) Peer {
		return Peer{PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(n.underlay, port), AllowedIPs: []netip.Prefix{netip.PrefixFrom(a.Addr(), 32)}}
	}
	startHelperInterface(b, na, "tvd0", ka, 51820, ourA, peerOf(nb, kb, 51820, ourB))
	startHelperInterface(b, nb, "tvd0", kb, 51820, ourB, peerOf(na, ka, 51820, ourA))
	suffix := strings.TrimPrefix(l.id, "tvdch-")
	startPlainWireGuard(b, bin, na, "wgb"+suffix+"a", ka, 51821, plainA, peerOf(nb, kb, 51821, plainB))
	startPlainWireGuard(b, bin, nb, "wgb"+suffix+"b", kb, 51821, plainB, peerOf(na, ka, 51821, plainA))

	ours := newStreamPath(b, na, nb, ourA.Addr(), 7100)
	plain := newStreamPath(b, na, nb, plainA.Addr(), 7101)
	chunk := make([]byte, 256<<10)
	const perIter = 8 << 20
	// Warm up both paths (handshakes, TCP windows).
	ours.send(b, chunk, 4<<20)
	plain.send(b, chunk, 4<<20)

	// Back-to-back pairs in alternating order; the ratio reported is the
	// median of the per-pair ratios, which tolerates load from other
	// processes on the machine better than a ratio of totals.
	var tOurs, tPlain time.Duration
	var ratios []float64
	iter := 0
	for b.Loop() {
		var o, p time.Duration
		if iter%2 == 0 {
			o = ours.send(b, chunk, perIter)
			p = plain.send(b, chunk, perIter)
		} else {
			p = plain.send(b, chunk, perIter)
			o = ours.send(b, chunk, perIter)
		}
		tOurs += o
		tPlain += p
		ratios = append(ratios, p.Seconds()/o.Seconds())
		iter++
	}
	slices.Sort(ratios)
	mb := float64(perIter*iter) / 1e6
	b.ReportMetric(mb/tOurs.Seconds(), "MB/s-ours")
	b.ReportMetric(mb/tPlain.Seconds(), "MB/s-plain-wireguard-go")
	b.ReportMetric(ratios[len(ratios)/2], "x-vs-plain-wireguard-go")
}

// BenchmarkSetPeersOneChange measures applying a peer set that differs from
// the current one (200 peers) in one peer, and reports p50/p99 latency
// against the baseline primitive: wireguard-go's IpcSet of the same
// single-peer operation on the same device, in the same run. Kinds:
// "allowed-ips" (a peer gains, then loses, a prefix outside the interface's
// own prefix, so the TUN plane also adds and removes a route) and "revoke"
// (a peer is removed, then admitted again).
func BenchmarkSetPeersOneChange(b *testing.B) {
	for _, kind := range []string{"allowed-ips", "revoke"} {
		b.Run("netstack/"+kind, func(b *testing.B) {
			u := newUserspace(b, "tvdbench", "198.19.77.1/24")
			benchSetPeers(b, u.core, u.SetPeers, kind)
		})
		b.Run("tun/"+kind, func(b *testing.B) {
			l := newLab(b, 1)
			i := l.nodes[0].iface(b, "tvd0", mustKey(b), labPort, l.nodes[0].overlay)
			benchSetPeers(b, i.core, i.SetPeers, kind)
		})
	}
}

func benchSetPeers(b *testing.B, c *core, set func([]Peer) error, kind string) {
	const n = 200
	base := make([]Peer, n)
	for i := range base {
		base[i] = Peer{
			PublicKey:  mustKey(b).PublicKey(),
			Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51820),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 77, byte(i + 2)}), 32)},
		}
	}
	if err := set(base); err != nil {
		b.Fatal(err)
	}
	extra := []netip.Prefix{netip.MustParsePrefix("198.19.100.0/24"), netip.MustParsePrefix("198.19.101.0/24")}
	// rawOp is the baseline: the same single-peer operation on peer q,
	// straight to wireguard-go, outside our bookkeeping; step 1 undoes
	// step 0, so the device matches the bookkeeping after every pair.
	rawOp := func(q Peer, step int) string {
		switch {
		case kind == "revoke" && step == 0:
			return fmt.Sprintf("public_key=%s\nremove=true\n", q.PublicKey.hex())
		case kind == "revoke":
			return fmt.Sprintf("public_key=%s\nendpoint=%s\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=%s\n",
				q.PublicKey.hex(), q.Endpoint, q.AllowedIPs[0])
		case step == 0:
			return fmt.Sprintf("public_key=%s\nupdate_only=true\nallowed_ip=%s\n", q.PublicKey.hex(), extra[1])
		default:
			return fmt.Sprintf("public_key=%s\nupdate_only=true\nallowed_ip=-%s\n", q.PublicKey.hex(), extra[1])
		}
	}
	var ours, raw []time.Duration
	iter := 0
	for b.Loop() {
		// Ours: step 0 changes peer k, step 1 restores it: one changed
		// peer per call.
		k, step := iter/2%n, iter%2
		next := slices.Clone(base)
		if step == 0 {
			if kind == "revoke" {
				next = slices.Delete(next, k, k+1)
			} else {
				p := next[k]
				p.AllowedIPs = append(slices.Clone(p.AllowedIPs), extra[0])
				next[k] = p
			}
		}
		start := time.Now()
		if err := set(next); err != nil {
			b.Fatal(err)
		}
		ours = append(ours, time.Since(start))
		q := base[(k+n/2)%n]
		start = time.Now()
		if err := c.dev.IpcSet(rawOp(q, step)); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(start))
		iter++
	}
	if iter%2 == 1 { // leave the device as our bookkeeping says
		if err := c.dev.IpcSet(rawOp(base[((iter-1)/2%n+n/2)%n], 1)); err != nil {
			b.Fatal(err)
		}
	}
	p50, p99 := percentile(ours, 50), percentile(ours, 99)
	b.ReportMetric(float64(p50.Nanoseconds()), "ns-p50")
	b.ReportMetric(float64(p99.Nanoseconds()), "ns-p99")
	b.ReportMetric(float64(percentile(raw, 50).Nanoseconds()), "ns-p50-raw-ipcset")
	b.ReportMetric(float64(p50)/float64(percentile(raw, 50)), "x-vs-raw-ipcset")
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}
