package audittest_test

import (
	"testing"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/audit/audittest"
)

func TestMemoryStorage(t *testing.T) {
	audittest.TestStorage(t, func(t *testing.T) audit.Storage { return audit.NewMemoryStorage() })
}

func TestFileStorage(t *testing.T) {
	audittest.TestStorage(t, func(t *testing.T) audit.Storage {
		st, err := audit.OpenFile(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	})
}
