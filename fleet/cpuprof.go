package fleet

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// CPUByLabel sums the CPU time of a pprof CPU profile (gzipped
// profile.proto, as runtime/pprof writes it) by the value of one goroutine
// label. Samples without the label (the garbage collector's workers, the
// scheduler, goroutines started outside pprof.Do) are summed under "".
func CPUByLabel(profile []byte, key string) (map[string]time.Duration, error) {
	zr, err := gzip.NewReader(bytes.NewReader(profile))
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	type label struct{ key, str int64 }
	type sample struct {
		values []int64
		labels []label
	}
	var (
		strs    []string
		types   []int64 // string index of each sample type's type
		samples []sample
	)
	errBad := errors.New("cpu profile: malformed profile.proto")
	// fields calls f for every field of a message.
	fields := func(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, buf []byte) error) error {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				return errBad
			}
			b = b[n:]
			var v uint64
			var buf []byte
			switch typ {
			case protowire.VarintType:
				v, n = protowire.ConsumeVarint(b)
			case protowire.BytesType:
				buf, n = protowire.ConsumeBytes(b)
			default:
				n = protowire.ConsumeFieldValue(num, typ, b)
			}
			if n < 0 {
				return errBad
			}
			b = b[n:]
			if err := f(num, typ, v, buf); err != nil {
				return err
			}
		}
		return nil
	}
	err = fields(raw, func(num protowire.Number, typ protowire.Type, _ uint64, buf []byte) error {
		switch {
		case num == 1 && typ == protowire.BytesType: // sample_type
			var t int64
			if err := fields(buf, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) error {
				if num == 1 {
					t = int64(v)
				}
				return nil
			}); err != nil {
				return err
			}
			types = append(types, t)
		case num == 2 && typ == protowire.BytesType: // sample
			var s sample
			if err := fields(buf, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
				switch {
				case num == 2 && typ == protowire.VarintType:
					s.values = append(s.values, int64(v))
				case num == 2 && typ == protowire.BytesType: // packed
					for len(b) > 0 {
						x, n := protowire.ConsumeVarint(b)
						if n < 0 {
							return errBad
						}
						s.values = append(s.values, int64(x))
						b = b[n:]
					}
				case num == 3 && typ == protowire.BytesType:
					var l label
					if err := fields(b, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) error {
						switch num {
						case 1:
							l.key = int64(v)
						case 2:
							l.str = int64(v)
						}
						return nil
					}); err != nil {
						return err
					}
					s.labels = append(s.labels, l)
				}
				return nil
			}); err != nil {
				return err
			}
			samples = append(samples, s)
		case num == 6 && typ == protowire.BytesType: // string_table
			strs = append(strs, string(buf))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	str := func(i int64) string {
		if i < 0 || i >= int64(len(strs)) {
			return ""
		}
		return strs[i]
	}
	cpu := -1
	for i, t := range types {
		if str(t) == "cpu" {
			cpu = i
		}
	}
	if cpu < 0 {
		return nil, errors.New("cpu profile: no cpu sample type (is this a CPU profile?)")
	}
	out := map[string]time.Duration{}
	for _, s := range samples {
		if cpu >= len(s.values) {
			return nil, errBad
		}
		side := ""
		for _, l := range s.labels {
			if str(l.key) == key {
				side = str(l.str)
			}
		}
		out[side] += time.Duration(s.values[cpu])
	}
	return out, nil
}
