package store_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
)

// Enrol a node only if it is not enrolled yet, and count enrolments in the
// same atomic step.
func ExampleStore_Commit() {
	dir, err := os.MkdirTemp("", "tvd-store-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := bolt.Open(filepath.Join(dir, "tvd.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	enrol := func(id string) error {
		key, err := store.Key("nodes", id)
		if err != nil {
			return err
		}
		count := 0
		cond := store.Absent("stats/enrolled")
		if kv, err := s.Get(ctx, "stats/enrolled"); err == nil {
			fmt.Sscan(string(kv.Value), &count)
			cond = store.RevIs(kv.Key, kv.Rev)
		}
		_, err = s.Commit(ctx, store.Batch{
			Conds: []store.Cond{store.Absent(key), cond},
			Ops: []store.Op{
				store.Put(key, []byte(`{"assurance":"tpm"}`)),
				store.Put("stats/enrolled", []byte(fmt.Sprint(count+1))),
			},
		})
		return err
	}
	fmt.Println(enrol("n1"))
	err = enrol("n1")
	var conflict *store.ConflictError
	fmt.Println(errors.As(err, &conflict), conflict.Cond.Key)
	fmt.Println(enrol("n1/../n2") != nil)

	prefix, _ := store.Prefix("nodes")
	kvs, _ := s.List(ctx, prefix, store.ListOptions{})
	kv, _ := s.Get(ctx, "stats/enrolled")
	fmt.Println(len(kvs), string(kv.Value))
	// Output:
	// <nil>
	// true nodes/n1
	// true
	// 1 1
}

// Allocate the next free number from a counter, safely against concurrent
// allocators.
func ExampleUpdate() {
	dir, err := os.MkdirTemp("", "tvd-store-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := bolt.Open(filepath.Join(dir, "tvd.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	next := func(kv store.KV, found bool) ([]byte, error) {
		n := 0
		if found {
			if _, err := fmt.Sscan(string(kv.Value), &n); err != nil {
				return nil, fmt.Errorf("counter %q: %w", kv.Key, err)
			}
		}
		return []byte(fmt.Sprint(n + 1)), nil
	}
	for range 3 {
		if _, err := store.Update(context.Background(), s, "ipam/dom-a/next", next); err != nil {
			log.Fatal(err)
		}
	}
	kv, _ := s.Get(context.Background(), "ipam/dom-a/next")
	fmt.Println(string(kv.Value))
	// Output: 3
}
