package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/etcd"
)

// A controller replica opens the shared store from its --store flag and
// creates a key only if no other replica has.
func Example() {
	ctx := context.Background()
	cfg, err := etcd.ParseURL("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/tvd/prod")
	if err != nil {
		log.Fatal(err)
	}
	cfg.Logger = slog.Default()
	// cfg.TLS = ... the controller's client certificate and the cluster's CA.
	s, err := etcd.Open(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	_, err = s.Commit(ctx, store.Batch{
		Conds: []store.Cond{store.Absent("ca/root")},
		Ops:   []store.Op{store.Put("ca/root", []byte("..."))},
	})
	switch {
	case errors.Is(err, store.ErrConflict):
		fmt.Println("another replica created the CA first")
	case errors.Is(err, store.ErrIndeterminate):
		// Re-read: the create may or may not have happened.
	case err != nil:
		log.Fatal(err)
	}
}
