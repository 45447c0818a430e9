package flow

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestWireRoundTrip(t *testing.T) {
	m := table3(t)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := UnmarshalMatrix(b)
	if err != nil {
		t.Fatal(err)
	}
	for a := 0; a < m.NumClasses(); a++ {
		for c := 0; c < m.NumClasses(); c++ {
			if m.Decide(ClassID(a), ClassID(c)) != m2.Decide(ClassID(a), ClassID(c)) {
				t.Errorf("decision %d -> %d differs after a round trip", a, c)
			}
		}
	}
	b2, _ := json.Marshal(m2)
	if !bytes.Equal(b, b2) {
		t.Errorf("serialization not stable:\n%s\n%s", b, b2)
	}
}

func TestWireRejects(t *testing.T) {
	for _, in := range []string{
		`{`,
		`{"domains":[{"name":"a","roles":["x","x"]}]}`,
		`{"domains":[{"name":"a","roles":["x"]}],"rows":[{"from":"a/y","to":"a","rule":"none"}]}`,
		`{"domains":[{"name":"a","roles":["x"]},{"name":"b","roles":["y"]}],"rows":[{"from":"a/x","to":"b","rule":"allow"}]}`,
		`{"domains":[{"name":"a","roles":["x"]},{"name":"b","roles":["y"]}],"rows":[{"from":"a/x","to":"a","rule":"none"}]}`,
		`{"domains":[{"name":"a","roles":["x"]},{"name":"b","roles":["y"]}],"rows":[{"from":"a/x","to":"b","rule":"point-to-point"}]}`,
		`{"domains":[{"name":"a","roles":["x"],"gateways":[4]}]}`,
	} {
		if _, err := UnmarshalMatrix([]byte(in)); err == nil {
			t.Errorf("accepted %s", in)
		}
	}
}

func FuzzUnmarshalMatrix(f *testing.F) {
	b, _ := json.Marshal(table3(f))
	f.Add(b)
	f.Add([]byte(`{"domains":[{"name":"a","roles":["x"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := UnmarshalMatrix(data)
		if err != nil {
			return
		}
		for a := 0; a < m.NumClasses() && a < 8; a++ {
			for c := 0; c < m.NumClasses() && c < 8; c++ {
				m.Decide(ClassID(a), ClassID(c))
				m.Via(ClassID(a), ClassID(c))
			}
		}
	})
}
