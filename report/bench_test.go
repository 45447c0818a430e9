package report

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// bigSnapshot returns the mixed yellow case grown to n members.
func bigSnapshot(b *testing.B, n int) *Snapshot {
	base := loadCase(b, filepath.Join("testdata", "yellow-mixed.json"))
	snap := *base
	snap.Members = make([]Member, n)
	for i := range snap.Members {
		m := base.Members[i%len(base.Members)]
		m.EE = fmt.Sprintf("%s-%05d", m.EE, i)
		snap.Members[i] = m
	}
	return &snap
}

// BenchmarkBuild10k builds the report of a 10,000-member domain and
// reports the time as a ratio against JSON-encoding the same snapshot
// (the cheapest thing the controller could ship instead), measured in the
// same run.
func BenchmarkBuild10k(b *testing.B) {
	comp := testPolicy(b)
	snap := bigSnapshot(b, 10000)
	const rounds = 3
	start := time.Now()
	for range rounds {
		if err := json.NewEncoder(io.Discard).Encode(snap); err != nil {
			b.Fatal(err)
		}
	}
	baseline := time.Since(start) / rounds
	b.ResetTimer()
	for b.Loop() {
		if _, err := Build(comp, snap); err != nil {
			b.Fatal(err)
		}
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(baseline), "x-vs-json-encode")
	b.ReportMetric(float64(per.Microseconds())/10000, "µs/member")
}

// BenchmarkRenderJSON10k renders a 10,000-member report as JSON.
func BenchmarkRenderJSON10k(b *testing.B) {
	r, err := Build(testPolicy(b), bigSnapshot(b, 10000))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := r.WriteJSON(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
