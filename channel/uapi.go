package channel

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// peerDiff is the change from one peer set to the next.
type peerDiff struct {
	added, removed, updated int
	uapi                    string // wireguard-go UAPI "set" body; empty when nothing changed
}

// diffPeers computes the UAPI set operation that turns cur into next. next
// must be normalised. The operation never replaces the whole peer set:
// removals use remove=true, changes use update_only=true and, only when the
// allowed IPs change, replace_allowed_ips=true.
func diffPeers(cur map[PublicKey]Peer, next []Peer) peerDiff {
	var d peerDiff
	var b strings.Builder
	want := make(map[PublicKey]bool, len(next))
	for _, p := range next {
		want[p.PublicKey] = true
	}
	// Removals first, in a stable order, so freed allowed IPs can move.
	var gone []PublicKey
	for k := range cur {
		if !want[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b PublicKey) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range gone {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		d.removed++
	}
	for _, p := range next {
		old, ok := cur[p.PublicKey]
		switch {
		case !ok:
			fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.hex())
			if p.Endpoint.IsValid() {
				fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
			}
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
			b.WriteString("replace_allowed_ips=true\n")
			for _, pfx := range p.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", pfx)
			}
			d.added++
		case !old.equal(p):
			fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\n", p.PublicKey.hex())
			if p.Endpoint != old.Endpoint && p.Endpoint.IsValid() {
				fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
			}
			if p.PersistentKeepalive != old.PersistentKeepalive {
				fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
			}
			if !slices.Equal(p.AllowedIPs, old.AllowedIPs) {
				b.WriteString("replace_allowed_ips=true\n")
				for _, pfx := range p.AllowedIPs {
					fmt.Fprintf(&b, "allowed_ip=%s\n", pfx)
				}
			}
			d.updated++
		}
	}
	d.uapi = b.String()
	return d
}

// PeerStatus is a peer's configuration together with its live state.
type PeerStatus struct {
	Peer
	// LastHandshake is the time of the last completed handshake; zero if
	// none has completed.
	LastHandshake time.Time
	// RxBytes and TxBytes count the bytes received from and sent to the
	// peer (WireGuard messages, including overhead).
	RxBytes, TxBytes uint64
}

// deviceState is the parsed output of a UAPI "get" operation.
type deviceState struct {
	ListenPort uint16
	Peers      []PeerStatus
}

// parseUAPIGet parses wireguard-go's UAPI "get" output. It ignores the
// private_key and preshared_key lines (never copying them) and rejects
// anything that is not a key=value line with a known key and well-formed
// value.
func parseUAPIGet(b []byte) (deviceState, error) {
	var st deviceState
	var cur *PeerStatus
	var hsSec, hsNsec int64
	flush := func() {
		if cur == nil {
			return
		}
		if hsSec != 0 || hsNsec != 0 {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
		slices.SortFunc(cur.AllowedIPs, comparePrefix)
		st.Peers = append(st.Peers, *cur)
		cur, hsSec, hsNsec = nil, 0, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	line := 0
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if len(text) == 0 {
			break // end of operation
		}
		k, v, ok := bytes.Cut(text, []byte("="))
		if !ok {
			return deviceState{}, fmt.Errorf("uapi line %d: expected key=value", line)
		}
		key, val := string(k), string(v)
		var err error
		switch key {
		case "private_key", "fwmark":
			if cur != nil {
				err = errors.New("device key inside a peer section")
			}
		case "listen_port":
			if cur != nil {
				err = errors.New("device key inside a peer section")
				break
			}
			var n uint64
			n, err = strconv.ParseUint(val, 10, 16)
			st.ListenPort = uint16(n)
		case "public_key":
			flush()
			var raw []byte
			raw, err = hex.DecodeString(val)
			if err == nil && len(raw) != KeyLen {
				err = fmt.Errorf("expected %d bytes, got %d", KeyLen, len(raw))
			}
			if err == nil {
				cur = &PeerStatus{Peer: Peer{PublicKey: PublicKey(raw)}}
			}
		default:
			if cur == nil {
				err = errors.New("peer key outside a peer section")
				break
			}
			err = parsePeerLine(cur, key, val, &hsSec, &hsNsec)
		}
		if err != nil {
			return deviceState{}, fmt.Errorf("uapi line %d (%s): %w", line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return deviceState{}, fmt.Errorf("read uapi: %w", err)
	}
	flush()
	return st, nil
}

func parsePeerLine(cur *PeerStatus, key, val string, hsSec, hsNsec *int64) error {
	var err error
	switch key {
	case "preshared_key":
		// Deliberately not retained.
	case "protocol_version":
		if val != "1" {
			err = fmt.Errorf("expected protocol version 1, got %q", val)
		}
	case "endpoint":
		cur.Endpoint, err = netip.ParseAddrPort(val)
	case "last_handshake_time_sec":
		*hsSec, err = strconv.ParseInt(val, 10, 64)
	case "last_handshake_time_nsec":
		*hsNsec, err = strconv.ParseInt(val, 10, 64)
		if err == nil && (*hsNsec < 0 || *hsNsec >= int64(time.Second)) {
			err = fmt.Errorf("expected nanoseconds below 1e9, got %d", *hsNsec)
		}
	case "tx_bytes":
		cur.TxBytes, err = strconv.ParseUint(val, 10, 64)
	case "rx_bytes":
		cur.RxBytes, err = strconv.ParseUint(val, 10, 64)
	case "persistent_keepalive_interval":
		var n uint64
		n, err = strconv.ParseUint(val, 10, 16)
		cur.PersistentKeepalive = time.Duration(n) * time.Second
	case "allowed_ip":
		var p netip.Prefix
		p, err = netip.ParsePrefix(val)
		if err == nil {
			cur.AllowedIPs = append(cur.AllowedIPs, p.Masked())
		}
	default:
		err = errors.New("unknown key")
	}
	return err
}
