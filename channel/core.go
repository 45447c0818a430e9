package channel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// ErrClosed is returned by operations on a closed interface.
var ErrClosed = errors.New("channel: interface closed")

// core is the part shared by both data planes: a running wireguard-go
// device and the peer set it was last given.
type core struct {
	log  *slog.Logger
	dev  *device.Device
	self PublicKey

	mu     sync.Mutex
	peers  map[PublicKey]Peer // as last applied; normalised
	closed bool
	// afterPeers, if set, runs (under mu) after wireguard-go accepted a new
	// peer set; the TUN data plane uses it to sync routes.
	afterPeers func(peers map[PublicKey]Peer) error
}

func newCore(log *slog.Logger, dev *device.Device, key PrivateKey) (*core, error) {
	if err := dev.SetPrivateKey(device.NoisePrivateKey(key)); err != nil {
		return nil, fmt.Errorf("set private key: %w", err)
	}
	return &core{log: log, dev: dev, self: key.PublicKey(), peers: map[PublicKey]Peer{}}, nil
}

// wgLogger adapts wireguard-go's printf logger to slog. wireguard-go never
// prints key material (peers appear as abbreviated public keys).
func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...), "component", "wireguard-go")
			}
		},
		Errorf: func(format string, args ...any) {
			log.Warn(fmt.Sprintf(format, args...), "component", "wireguard-go")
		},
	}
}

// setPeers applies peers incrementally; see Interface.SetPeers.
func (c *core) setPeers(peers []Peer) error {
	next, err := normalisePeers(peers, c.self)
	if err != nil {
		return fmt.Errorf("set peers: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	d := diffPeers(c.peers, next)
	if d.uapi != "" {
		if err := c.dev.IpcSet(d.uapi); err != nil {
			// Part of the operation may have been applied: resynchronise
			// from the device so the next call diffs against the truth.
			if st, gerr := c.stateLocked(); gerr == nil {
				c.peers = make(map[PublicKey]Peer, len(st.Peers))
				for _, p := range st.Peers {
					c.peers[p.PublicKey] = p.Peer
				}
			} else {
				c.log.Error("resynchronise peers after failed update", "err", gerr)
			}
			return fmt.Errorf("set peers: apply to wireguard-go: %w", err)
		}
		greet := greetings(c.peers, next)
		c.peers = make(map[PublicKey]Peer, len(next))
		for _, p := range next {
			c.peers[p.PublicKey] = p
		}
		c.log.Info("peers updated", "added", d.added, "removed", d.removed, "updated", d.updated, "peers", len(next))
		c.greetLocked(greet)
	}
	// Run even when no peer changed, so a failed route update is retried.
	if c.afterPeers != nil {
		if err := c.afterPeers(c.peers); err != nil {
			return fmt.Errorf("set peers: %w", err)
		}
	}
	return nil
}

// greetings returns the peers of next to greet (see Peer.Greet): those
// with Greet, an endpoint and allowed IPs that had none in cur.
func greetings(cur map[PublicKey]Peer, next []Peer) []Peer {
	var out []Peer
	for _, p := range next {
		if !p.Greet || !p.Endpoint.IsValid() || len(p.AllowedIPs) == 0 {
			continue
		}
		if old, ok := cur[p.PublicKey]; ok && len(old.AllowedIPs) > 0 {
			continue
		}
		out = append(out, p)
	}
	return out
}

// greetLocked starts a handshake with each peer: turning a persistent
// keepalive on makes wireguard-go send a keepalive at once, which needs a
// session, so it sends a handshake initiation first; the keepalive is
// then set back as configured. A failure only costs the head start.
func (c *core) greetLocked(peers []Peer) {
	for _, p := range peers {
		on := fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=1\n", p.PublicKey.hex())
		back := fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", p.PublicKey.hex(), int(p.PersistentKeepalive/time.Second))
		if p.PersistentKeepalive != 0 {
			continue // a new peer with a keepalive was greeted when added
		}
		if err := c.dev.IpcSet(on); err != nil {
			c.log.Warn("greet peer", "peer", p.PublicKey, "err", err)
			continue
		}
		if err := c.dev.IpcSet(back); err != nil {
			c.log.Warn("greet peer: restore its keepalive", "peer", p.PublicKey, "err", err)
		}
		c.log.Debug("greeted peer", "peer", p.PublicKey, "endpoint", p.Endpoint)
	}
}

// peerStatus returns the configured peers with their live state, sorted by
// public key. Endpoint is the one wireguard-go currently uses (it follows
// roaming peers).
func (c *core) peerStatus() ([]PeerStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	st, err := c.stateLocked()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return st.Peers, nil
}

func (c *core) listenPort() (uint16, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, ErrClosed
	}
	st, err := c.stateLocked()
	return st.ListenPort, err
}

// stateLocked reads the device state. The UAPI text includes the private
// key in hex: our copy is wiped before returning and never leaves this
// function (wireguard-go's internal buffer pool is outside our control).
func (c *core) stateLocked() (deviceState, error) {
	var buf bytes.Buffer
	err := c.dev.IpcGetOperation(&buf)
	defer func() { clear(buf.Bytes()) }()
	if err != nil {
		return deviceState{}, fmt.Errorf("read wireguard-go state: %w", err)
	}
	st, err := parseUAPIGet(buf.Bytes())
	if err != nil {
		return deviceState{}, fmt.Errorf("read wireguard-go state: %w", err)
	}
	return st, nil
}

// close stops the device once; it reports whether this call closed it.
func (c *core) close() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.closed = true
	c.dev.Close()
	return true
}
