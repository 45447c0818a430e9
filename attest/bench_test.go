package attest

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"fmt"
	"slices"
	"testing"
	"time"
)

func (st *NodeState) clone() *NodeState {
	c := *st
	c.pcrs = slices.Clone(st.pcrs)
	c.values = slices.Clone(st.values)
	return &c
}

// nsPerOp runs f n times and returns the mean nanoseconds per call.
func nsPerOp(n int, f func()) float64 {
	start := time.Now()
	for range n {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n)
}

// BenchmarkQuoteAppraisal appraises a real simulator quote (with its three
// log entries) on one core and reports the throughput as a fraction of raw
// ecdsa.Verify P-256 of the same quote by the same key, measured in the
// same run (goal: at least 0.45).
func BenchmarkQuoteAppraisal(b *testing.B) {
	v := newTestVerifier(b)
	tls := recordedTLSHash(b)
	base := recordedState(b, "state0.bin")
	ev := recordedEvidence(b, "ev1")
	sig, err := ParseSignature(ev.Signature)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256(ev.Attest)
	if !ecdsa.Verify(base.ak.Key, digest[:], sig.R, sig.S) {
		b.Fatal("recorded signature does not verify")
	}
	baseline := nsPerOp(2000, func() { ecdsa.Verify(base.ak.Key, digest[:], sig.R, sig.S) })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.Appraise(base.clone(), ev, tls); err != nil {
			b.Fatal(err)
		}
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(baseline/per, "x-vs-ecdsa-verify")
	b.ReportMetric(1e9/per, "quotes/s")
}

// syntheticLog returns n valid entries and reference values listing all of
// their files among refs others.
func syntheticLog(n, refs int) ([]Event, *RefSet) {
	m := make(map[[32]byte]string, refs)
	for i := range refs {
		m[sha256.Sum256(fmt.Appendf(nil, "ref %d", i))] = fmt.Sprintf("pkg-%d", i)
	}
	events := make([]Event, n)
	for i := range events {
		e := &events[i]
		e.PCR, e.Type, e.EE = EEPCR, EventExec, "tmart-web"
		e.Path = fmt.Sprintf("/usr/lib/app/bin/worker-%d", i%50)
		e.FileDigest = sha256.Sum256(fmt.Appendf(nil, "ref %d", i%refs))
		e.Digest = e.ComputeDigest()
	}
	return events, NewRefSet(m)
}

// BenchmarkReplayAppraisal replays and appraises event-log entries (entry
// digest check, PCR extend, reference lookup, per-entry result) and
// reports entries/s (goal: at least 1M) and the ratio to raw SHA-256 of
// the same encoded entries, measured in the same run.
func BenchmarkReplayAppraisal(b *testing.B) {
	events, refs := syntheticLog(1000, 10000)
	v, err := NewVerifier(Config{Refs: refs})
	if err != nil {
		b.Fatal(err)
	}
	st := recordedState(b, "state0.bin")
	encoded := make([][]byte, len(events))
	for i := range events {
		encoded[i], _ = AppendEvent(nil, &events[i])
	}
	baseline := nsPerOp(200, func() {
		for _, e := range encoded {
			sha256.Sum256(e)
		}
	})
	values := make([][32]byte, len(st.pcrs))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(values)
		if err := st.replay(events, 0, values); err != nil {
			b.Fatal(err)
		}
		var res Result
		if err := v.appraiseEntries(events, 0, &res); err != nil {
			b.Fatal(err)
		}
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(float64(len(events))*1e9/per, "entries/s")
	b.ReportMetric(baseline/per, "x-vs-sha256")
}

// BenchmarkDecodeReplayAppraisal is BenchmarkReplayAppraisal with the
// wire decoding of the entries included.
func BenchmarkDecodeReplayAppraisal(b *testing.B) {
	events, refs := syntheticLog(1000, 10000)
	v, err := NewVerifier(Config{Refs: refs})
	if err != nil {
		b.Fatal(err)
	}
	st := recordedState(b, "state0.bin")
	wire, err := EncodeEvents(events)
	if err != nil {
		b.Fatal(err)
	}
	baseline := nsPerOp(200, func() {
		for off := 0; off < len(wire); {
			n := 4 + int(uint32(wire[off])<<24|uint32(wire[off+1])<<16|uint32(wire[off+2])<<8|uint32(wire[off+3]))
			sha256.Sum256(wire[off : off+n])
			off += n
		}
	})
	values := make([][32]byte, len(st.pcrs))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		evs, err := DecodeEvents(wire, 0)
		if err != nil {
			b.Fatal(err)
		}
		clear(values)
		if err := st.replay(evs, 0, values); err != nil {
			b.Fatal(err)
		}
		var res Result
		if err := v.appraiseEntries(evs, 0, &res); err != nil {
			b.Fatal(err)
		}
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(float64(len(events))*1e9/per, "entries/s")
	b.ReportMetric(baseline/per, "x-vs-sha256")
}

// BenchmarkNodeStateBytes reports the per-node state after an appraisal:
// persisted bytes, estimated memory bytes, and the larger as a fraction
// of the 64 KiB goal. Reference values are shared and not counted.
func BenchmarkNodeStateBytes(b *testing.B) {
	v := newTestVerifier(b)
	st := recordedState(b, "state0.bin")
	if _, err := v.Appraise(st, recordedEvidence(b, "ev1"), recordedTLSHash(b)); err != nil {
		b.Fatal(err)
	}
	var n int
	for b.Loop() {
		enc, err := st.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		n = len(enc)
	}
	mem := st.memSize()
	b.ReportMetric(float64(n), "persisted-bytes/node")
	b.ReportMetric(float64(mem), "memory-bytes/node")
	b.ReportMetric(float64(max(n, mem))/float64(64<<10), "x-of-64KiB-goal")
}
