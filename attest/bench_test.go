package attest

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

func (st *NodeState) clone() *NodeState { return st.Clone() }

// The benchmarks below time the baseline primitive and the subject in
// alternation inside one loop, so both see the same machine load; ns/op
// covers both, the custom metrics only the subject.

// reportRatio reports baseline time over subject time: the subject's
// throughput as a fraction of the baseline's.
func reportRatio(b *testing.B, baseline, subject time.Duration, unit string) {
	b.ReportMetric(float64(baseline.Nanoseconds())/float64(subject.Nanoseconds()), unit)
	b.ReportMetric(float64(subject.Nanoseconds())/float64(b.N), "subject-ns/op")
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
	var base_, subj time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		ecdsa.Verify(base.ak.Key, digest[:], sig.R, sig.S)
		t1 := time.Now()
		if _, err := v.Appraise(base.clone(), ev, tls); err != nil {
			b.Fatal(err)
		}
		base_ += t1.Sub(t0)
		subj += time.Since(t1)
	}
	reportRatio(b, base_, subj, "x-vs-ecdsa-verify")
	b.ReportMetric(float64(b.N)*1e9/float64(subj.Nanoseconds()), "quotes/s")
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
	values := make([][32]byte, len(st.pcrs))
	var base, subj time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		for _, e := range encoded {
			sha256.Sum256(e)
		}
		t1 := time.Now()
		clear(values)
		if err := st.replay(events, 0, values); err != nil {
			b.Fatal(err)
		}
		var res Result
		if err := v.appraiseEntries(events, 0, &res); err != nil {
			b.Fatal(err)
		}
		base += t1.Sub(t0)
		subj += time.Since(t1)
	}
	reportRatio(b, base, subj, "x-vs-sha256")
	b.ReportMetric(float64(b.N*len(events))*1e9/float64(subj.Nanoseconds()), "entries/s")
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
	values := make([][32]byte, len(st.pcrs))
	var base, subj time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		for off := 0; off < len(wire); {
			n := 4 + int(binary.BigEndian.Uint32(wire[off:]))
			sha256.Sum256(wire[off : off+n])
			off += n
		}
		t1 := time.Now()
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
		base += t1.Sub(t0)
		subj += time.Since(t1)
	}
	reportRatio(b, base, subj, "x-vs-sha256")
	b.ReportMetric(float64(b.N*len(events))*1e9/float64(subj.Nanoseconds()), "entries/s")
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
