// Command shop is the TVD-aware on-line shop of the paper's §2.4, built on
// the workload SDK: orders from members of the shop's own domain are
// unlimited, orders from anyone else are capped at $100. The shop
// authenticates nobody itself, and keeps no key of its own: the TVD gives
// it its channel (mutual TLS with its member identity), the peer's
// membership, the order-signing secret and the encrypted order ledger.
//
//	shop serve [-listen :8443] [-data /var/lib/shop]
//	shop order -amount 150.00 [-item book] https://10.91.0.2:8443
//	shop whoami
//
// Both run inside an EE of a TVD node; see README.md.
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/tvd-dev/tvd/workload"
)

// CapCents is the largest order a non-member may place: $100.
const CapCents = 100_00

// Order is a purchase order.
type Order struct {
	Item        string `json:"item"`
	AmountCents int64  `json:"amountCents"`
}

// Receipt answers an order.
type Receipt struct {
	Accepted  bool   `json:"accepted"`
	Member    bool   `json:"member"`
	Peer      string `json:"peer,omitempty"`
	Reason    string `json:"reason,omitempty"`
	OrderID   int    `json:"orderId,omitempty"`
	Signature string `json:"signature,omitempty"`
}

// Shop is the shop's HTTP handler.
type Shop struct {
	c     *workload.Client
	store *workload.Store
	mu    sync.Mutex
	n     int
}

// NewShop returns the shop, keeping its ledger in store.
func NewShop(c *workload.Client, store *workload.Store) *Shop { return &Shop{c: c, store: store} }

func (s *Shop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/order" || r.Method != http.MethodPost {
		http.Error(w, "POST /order {\"item\":..., \"amountCents\":...}", http.StatusNotFound)
		return
	}
	var o Order
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&o); err != nil || o.AmountCents <= 0 {
		http.Error(w, "bad order: want JSON {\"item\": string, \"amountCents\": positive integer}", http.StatusBadRequest)
		return
	}
	// The TVD says who the customer is: a member of the shop's domain in
	// good standing, or not.
	peer, err := s.c.PeerFromRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	rc := Receipt{Member: peer.Member(), Peer: peer.SPIFFEID}
	switch {
	case !rc.Member && o.AmountCents > CapCents:
		rc.Reason = fmt.Sprintf("orders from non-members are capped at $%d.%02d", CapCents/100, CapCents%100)
		if peer.Reason != "" {
			rc.Reason += " (" + peer.Reason + ")"
		}
		writeJSON(w, http.StatusForbidden, rc)
		return
	}
	key, err := s.c.Secret(r.Context(), "order-signing-key")
	if err != nil {
		http.Error(w, "the shop cannot sign orders: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	rc.Accepted, rc.OrderID = true, s.n
	line, _ := json.Marshal(struct {
		ID    int    `json:"id"`
		Peer  string `json:"peer"`
		Order Order  `json:"order"`
	}{s.n, peer.SPIFFEID, o})
	mac := hmac.New(sha256.New, key)
	mac.Write(line)
	rc.Signature = hex.EncodeToString(mac.Sum(nil))
	if s.store != nil {
		ledger, err := s.store.Get(r.Context(), "ledger")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			http.Error(w, "ledger: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := s.store.Put(r.Context(), "ledger", append(append(ledger, line...), '\n')); err != nil {
			http.Error(w, "ledger: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	writeJSON(w, http.StatusOK, rc)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// PlaceOrder posts o to the shop at base with hc and returns the receipt.
func PlaceOrder(ctx context.Context, hc *http.Client, base string, o Order) (Receipt, int, error) {
	b, _ := json.Marshal(o)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/order", bytes.NewReader(b))
	if err != nil {
		return Receipt{}, 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Receipt{}, 0, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var rc Receipt
	if err := json.Unmarshal(body, &rc); err != nil {
		return rc, resp.StatusCode, fmt.Errorf("shop answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return rc, resp.StatusCode, nil
}

func whoami(w io.Writer) error {
	c, err := workload.Default()
	if err != nil {
		return err
	}
	id, err := c.Identity()
	if err != nil {
		return err
	}
	ctx := context.Background()
	key, err := c.Secret(ctx, "order-signing-key")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "whoami-")
	if err != nil {
		return err
	}
	st, err := c.OpenStore(dir)
	if err != nil {
		return err
	}
	if err := st.Put(ctx, "probe", []byte("sealed")); err != nil {
		return err
	}
	got, err := st.Get(ctx, "probe")
	if err != nil {
		return err
	}
	ents, _ := os.ReadDir("/run/tvd")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	fmt.Fprintf(w, "whoami %s secret=%d store=%s run-tvd=%v\n", id.SPIFFEID, len(key), got, names)
	return nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: shop serve [-listen ADDR] [-data DIR] | shop order -amount DOLLARS [-item NAME] URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		listen := fs.String("listen", ":8443", "address to serve on")
		data := fs.String("data", "/var/lib/shop", "directory of the encrypted order ledger")
		fs.Parse(os.Args[2:])
		// The handful of SDK lines: a listener with mutual TLS and the
		// member identity, admitting non-members for the capped orders.
		l, err := workload.Listen("tcp", *listen, workload.AllowNonMembers())
		if err != nil {
			log.Error("listen", "err", err)
			os.Exit(1)
		}
		st, err := workload.OpenStore(*data)
		if err != nil {
			log.Error("store", "err", err)
			os.Exit(1)
		}
		c, _ := workload.Default()
		log.Info("shop open", "addr", l.Addr().String())
		srv := &http.Server{Handler: NewShop(c, st), ReadHeaderTimeout: 10 * time.Second}
		if err := srv.Serve(l); err != nil {
			log.Error("serve", "err", err)
			os.Exit(1)
		}
	case "order":
		fs := flag.NewFlagSet("order", flag.ExitOnError)
		amount := fs.Float64("amount", 10, "order amount in dollars")
		item := fs.String("item", "book", "what to buy")
		fs.Parse(os.Args[2:])
		if fs.NArg() != 1 {
			fmt.Fprintln(os.Stderr, "shop order: want the shop's URL, e.g. https://10.91.0.2:8443")
			os.Exit(2)
		}
		hc, err := workload.HTTPClient()
		if err != nil {
			log.Error("workload API", "err", err)
			os.Exit(1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rc, code, err := PlaceOrder(ctx, hc, fs.Arg(0), Order{Item: *item, AmountCents: int64(*amount*100 + 0.5)})
		if err != nil {
			log.Error("order", "err", err)
			os.Exit(1)
		}
		b, _ := json.Marshal(rc)
		fmt.Println(strconv.Itoa(code), string(b))
		if !rc.Accepted {
			os.Exit(3)
		}
	case "whoami":
		// What the TVD tells this EE: its identity, its secrets, a sealed
		// round trip, and what its Workload API directory holds.
		if err := whoami(os.Stdout); err != nil {
			log.Error("whoami", "err", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "shop: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
