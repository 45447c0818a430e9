package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd/store"
)

func TestValidateKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want string // "" for valid, else a fragment of the error
	}{
		{"nodes/n1", ""},
		{"a", ""},
		{"é/日本/\U0001F600", ""},
		{strings.Repeat("k", store.MaxKeyLen), ""},
		{"", "empty key"},
		{strings.Repeat("k", store.MaxKeyLen+1), "1025 bytes: want at most 1024"},
		{"\xff", "not valid UTF-8"},
		{"nodes/\xc3", "not valid UTF-8"},
	} {
		err := store.ValidateKey(tc.key)
		if tc.want == "" {
			if err != nil {
				t.Errorf("ValidateKey(%.20q) = %v, want nil", tc.key, err)
			}
			continue
		}
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateKey(%.20q) = %v, want ErrInvalid saying %q", tc.key, err, tc.want)
		}
		if len(err.Error()) > 200 {
			t.Errorf("ValidateKey(%.20q) error is %d bytes long: a long key must be cut in messages", tc.key, len(err.Error()))
		}
	}
}

func TestValidatePrefixAndListOptions(t *testing.T) {
	if err := store.ValidatePrefix(""); err != nil {
		t.Errorf("empty prefix: %v", err)
	}
	if err := store.ValidatePrefix("\xff"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("bad prefix: %v", err)
	}
	for _, o := range []store.ListOptions{{}, {Limit: 1}, {After: "a/b", Limit: 10}} {
		if err := o.Validate(); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
	for _, o := range []store.ListOptions{{Limit: -1}, {After: "\xff"}} {
		if err := o.Validate(); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", o, err)
		}
	}
}

func TestBatchValidate(t *testing.T) {
	ok := store.Put("k", []byte("v"))
	valid := []store.Batch{
		{Ops: []store.Op{ok}},
		{Ops: []store.Op{store.Delete("k")}},
		{Ops: []store.Op{store.Put("k", nil)}},
		// Conditions may name keys the batch writes, and a key twice.
		{Conds: []store.Cond{store.RevIs("k", 3), store.Present("k")}, Ops: []store.Op{ok, store.Delete("j")}},
	}
	for _, b := range valid {
		if err := b.Validate(); err != nil {
			t.Errorf("%+v: %v", b, err)
		}
	}
	for _, tc := range []struct {
		b    store.Batch
		want string
	}{
		{store.Batch{}, "no puts or deletes"},
		{store.Batch{Ops: []store.Op{ok, ok}}, `key "k" is written twice`},
		{store.Batch{Ops: []store.Op{ok}, Conds: []store.Cond{store.RevIs("k", 0)}}, "positive revision"},
		{store.Batch{Ops: []store.Op{ok}, Conds: []store.Cond{{Kind: store.CondPresent, Key: "k", Rev: 1}}}, "takes no revision"},
		{store.Batch{Ops: []store.Op{ok}, Conds: []store.Cond{{Kind: 0, Key: "k"}}}, "unknown kind 0"},
		{store.Batch{Ops: []store.Op{{Key: "k", Value: []byte{}, Delete: true}}}, "carries a value"},
		{store.Batch{Ops: []store.Op{ok, store.Put("big", make([]byte, store.MaxValueLen+1))}}, "op 1: value of \"big\""},
	} {
		err := tc.b.Validate()
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%.60v) = %v, want ErrInvalid saying %q", tc.b, err, tc.want)
		}
	}
}

func TestCondHolds(t *testing.T) {
	for _, tc := range []struct {
		c     store.Cond
		found bool
		rev   int64
		want  bool
	}{
		{store.Absent("k"), false, 0, true},
		{store.Absent("k"), true, 4, false},
		{store.Present("k"), true, 4, true},
		{store.Present("k"), false, 0, false},
		{store.RevIs("k", 4), true, 4, true},
		{store.RevIs("k", 4), true, 5, false},
		{store.RevIs("k", 4), false, 0, false},
		{store.Cond{Kind: 42, Key: "k"}, true, 1, false},
	} {
		if got := tc.c.Holds(tc.found, tc.rev); got != tc.want {
			t.Errorf("%v.Holds(%v, %d) = %v, want %v", tc.c, tc.found, tc.rev, got, tc.want)
		}
	}
}

func TestConflictError(t *testing.T) {
	var err error = fmt.Errorf("commit: %w", &store.ConflictError{Cond: store.RevIs("nodes/n1", 7), Found: true, Rev: 9})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatal("ConflictError does not match ErrConflict")
	}
	if errors.Is(err, store.ErrInvalid) {
		t.Fatal("ConflictError matches ErrInvalid")
	}
	want := `commit: store: condition failed: want "nodes/n1" at rev 7, key is at rev 9`
	if err.Error() != want {
		t.Fatalf("error = %q, want %q", err, want)
	}
	err = &store.ConflictError{Cond: store.Present("tokens/t")}
	if want := `store: condition failed: want "tokens/t" present, key is absent`; err.Error() != want {
		t.Fatalf("error = %q, want %q", err, want)
	}
	if got := store.CondKind(9).String(); got != "CondKind(9)" {
		t.Fatalf("unknown kind prints %q", got)
	}
}

func TestKeyAndPrefix(t *testing.T) {
	for _, tc := range []struct {
		segs []string
		key  string // "" means an error is expected
	}{
		{[]string{"nodes", "n1"}, "nodes/n1"},
		{[]string{"ipam", "dom-a", "10.0.0.1"}, "ipam/dom-a/10.0.0.1"},
		{[]string{"é"}, "é"},
		{nil, ""},
		{[]string{"nodes", ""}, ""},
		{[]string{"nodes", "n1/x"}, ""},
		{[]string{"nodes", "/"}, ""},
		{[]string{"nodes", "\xff"}, ""},
		{[]string{"nodes", strings.Repeat("n", store.MaxKeyLen)}, ""},
	} {
		key, err := store.Key(tc.segs...)
		if tc.key == "" {
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Key(%.40q) = %q, %v; want ErrInvalid", tc.segs, key, err)
			}
			if _, err := store.Prefix(tc.segs...); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Prefix(%.40q): %v, want ErrInvalid", tc.segs, err)
			}
			continue
		}
		if err != nil || key != tc.key {
			t.Errorf("Key(%q) = %q, %v; want %q", tc.segs, key, err, tc.key)
		}
		if p, err := store.Prefix(tc.segs...); err != nil || p != tc.key+"/" {
			t.Errorf("Prefix(%q) = %q, %v; want %q", tc.segs, p, err, tc.key+"/")
		}
	}
	// A key of exactly MaxKeyLen bytes is valid, but its prefix is not.
	long := strings.Repeat("n", store.MaxKeyLen-len("nodes/"))
	if _, err := store.Key("nodes", long); err != nil {
		t.Errorf("Key at the limit: %v", err)
	}
	if _, err := store.Prefix("nodes", long); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Prefix over the limit: %v, want ErrInvalid", err)
	}
}
