package filter

import (
	"slices"
	"testing"

	"github.com/tvd-dev/tvd/flow/nft"
)

// TestCounterNamesAreNFTs: the filter counts under flow/nft's names, so a
// report reads either data plane's counters the same way.
func TestCounterNamesAreNFTs(t *testing.T) {
	want := nft.CounterNames()
	if got := CounterNames()[:len(want)]; !slices.Equal(got, want) {
		t.Fatalf("counter names %v, flow/nft's %v", got, want)
	}
}
