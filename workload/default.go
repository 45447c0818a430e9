package workload

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// The package-level functions use one Client opened on first use with
// Open: the EE needs no configuration.
var (
	defMu     sync.Mutex
	defClient *Client
)

// Default returns the package's shared Client, opening it (and waiting up
// to a minute for the EE's identity) on first use.
func Default() (*Client, error) {
	defMu.Lock()
	defer defMu.Unlock()
	if defClient != nil {
		return defClient, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Open(ctx)
	if err != nil {
		return nil, err
	}
	defClient = c
	return c, nil
}

// Listen is Default().Listen.
func Listen(network, addr string, opts ...Option) (net.Listener, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.Listen(network, addr, opts...)
}

// Dial is Default().Dial.
func Dial(ctx context.Context, network, addr string, opts ...Option) (net.Conn, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.Dial(ctx, network, addr, opts...)
}

// PeerInfo is Default().PeerInfo.
func PeerInfo(conn net.Conn) (*Peer, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.PeerInfo(conn)
}

// PeerFromRequest is Default().PeerFromRequest.
func PeerFromRequest(r *http.Request) (*Peer, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.PeerFromRequest(r)
}

// Secret is Default().Secret.
func Secret(ctx context.Context, name string) ([]byte, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.Secret(ctx, name)
}

// OpenStore is Default().OpenStore.
func OpenStore(dir string) (*Store, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.OpenStore(dir)
}

// HTTPClient is Default().HTTPClient.
func HTTPClient(opts ...Option) (*http.Client, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	return c.HTTPClient(opts...), nil
}
