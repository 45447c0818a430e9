package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestEntryEncodeGolden(t *testing.T) {
	loc := time.FixedZone("CET", 3600)
	e := Entry{
		Time:    time.Date(2026, 11, 27, 13, 4, 5, 120000000, loc),
		Kind:    KindAdmin,
		Actor:   "spiffe://tvd.test/admin/alice",
		Subject: "policy/red@7",
		Domain:  "red",
		Detail:  map[string]string{"z": "last", "a": "<first>", "m": "ü\n"},
	}
	got, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"time":"2026-11-27T12:04:05.12Z","kind":"admin","actor":"spiffe://tvd.test/admin/alice","subject":"policy/red@7","domain":"red","detail":{"a":"\u003cfirst\u003e","m":"ü\n","z":"last"}}`
	if string(got) != want {
		t.Fatalf("encoding:\n got %s\nwant %s", got, want)
	}
	d, err := DecodeEntry(got)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Time.Equal(e.Time) || d.Time.Location() != time.UTC || d.Kind != e.Kind || d.Actor != e.Actor ||
		d.Subject != e.Subject || d.Domain != e.Domain || len(d.Detail) != 3 || d.Detail["m"] != "ü\n" {
		t.Fatalf("decoded %+v, want %+v", d, e)
	}
	// Optional members are left out when empty; an empty detail map equals nil.
	min := Entry{Time: time.Unix(0, 0), Kind: "enrol", Actor: "a", Detail: map[string]string{}}
	got, err = min.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,"time":"1970-01-01T00:00:00Z","kind":"enrol","actor":"a"}`; string(got) != want {
		t.Fatalf("minimal encoding %s, want %s", got, want)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for i := range 50 {
		e := testEntry(i)
		b, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		d, err := DecodeEntry(b)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		b2, err := d.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("entry %d: re-encoding differs:\n%s\n%s", i, b, b2)
		}
	}
}

func TestEntryValidate(t *testing.T) {
	ok := Entry{Time: time.Unix(1, 0), Kind: "admit", Actor: "controller"}
	tests := []struct {
		name string
		mod  func(*Entry)
		want string
	}{
		{"zero time", func(e *Entry) { e.Time = time.Time{} }, "time is zero"},
		{"year", func(e *Entry) { e.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "out of range"},
		{"empty kind", func(e *Entry) { e.Kind = "" }, "kind"},
		{"upper kind", func(e *Entry) { e.Kind = "Admit" }, "kind"},
		{"digit first", func(e *Entry) { e.Kind = "1x" }, "kind"},
		{"long kind", func(e *Entry) { e.Kind = strings.Repeat("a", 65) }, "kind"},
		{"no actor", func(e *Entry) { e.Actor = "" }, "actor is empty"},
		{"bad utf8", func(e *Entry) { e.Subject = "\xff" }, "UTF-8"},
		{"bad detail", func(e *Entry) { e.Detail = map[string]string{"k": "\xc3"} }, "UTF-8"},
		{"empty detail key", func(e *Entry) { e.Detail = map[string]string{"": "v"} }, "empty key"},
		{"too large", func(e *Entry) { e.Detail = map[string]string{"k": strings.Repeat("x", MaxEntrySize)} }, "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ok
			tt.mod(&e)
			_, err := e.Encode()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Encode error %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := ok.Encode(); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeEntryStrict(t *testing.T) {
	base := `{"v":1,"time":"2026-11-27T12:00:00Z","kind":"admit","actor":"c","subject":"s","domain":"d","detail":{"a":"1","b":"2"}}`
	if _, err := DecodeEntry([]byte(base)); err != nil {
		t.Fatalf("base: %v", err)
	}
	bad := map[string]string{
		"empty":            ``,
		"not object":       `[]`,
		"whitespace":       strings.Replace(base, `"kind":`, `"kind": `, 1),
		"trailing newline": base + "\n",
		"trailing data":    base + `{}`,
		"member order":     `{"time":"2026-11-27T12:00:00Z","v":1,"kind":"admit","actor":"c"}`,
		"detail order":     strings.Replace(base, `{"a":"1","b":"2"}`, `{"b":"2","a":"1"}`, 1),
		"unknown member":   strings.Replace(base, `"v":1,`, `"v":1,"x":1,`, 1),
		"duplicate member": strings.Replace(base, `"actor":"c",`, `"actor":"c","actor":"c",`, 1),
		"case folded":      strings.Replace(base, `"kind"`, `"KIND"`, 1),
		"version":          strings.Replace(base, `"v":1`, `"v":2`, 1),
		"offset time":      strings.Replace(base, `12:00:00Z`, `13:00:00+01:00`, 1),
		"padded nanos":     strings.Replace(base, `12:00:00Z`, `12:00:00.100Z`, 1),
		"lower z":          strings.Replace(base, `12:00:00Z`, `12:00:00z`, 1),
		"empty subject":    strings.Replace(base, `"subject":"s"`, `"subject":""`, 1),
		"empty detail":     strings.Replace(base, `{"a":"1","b":"2"}`, `{}`, 1),
		"null detail":      strings.Replace(base, `{"a":"1","b":"2"}`, `null`, 1),
		"escaped ascii":    strings.Replace(base, `"actor":"c"`, `"actor":"\u0063"`, 1),
		"raw lt":           strings.Replace(base, `"actor":"c"`, `"actor":"<"`, 1),
		"invalid utf8":     strings.Replace(base, `"actor":"c"`, "\"actor\":\"\xff\"", 1),
		"bad kind":         strings.Replace(base, `"kind":"admit"`, `"kind":"Admit"`, 1),
		"missing actor":    strings.Replace(base, `"actor":"c",`, ``, 1),
		"number as string": strings.Replace(base, `"v":1`, `"v":"1"`, 1),
		"float version":    strings.Replace(base, `"v":1`, `"v":1.0`, 1),
	}
	for name, in := range bad {
		if e, err := DecodeEntry([]byte(in)); err == nil {
			t.Errorf("%s: accepted %q as %+v", name, in, e)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	for i := range 10 {
		b, err := testEntry(i).Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"time":"2026-11-27T12:00:00Z","kind":"admit","actor":"c","detail":{"a":"\u003c"}}`))
	f.Add([]byte(`{"v":1,"time":"2026-11-27T12:00:00Z","kind":"admit","actor":"c","actor":"d"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEntry(b)
		if err != nil {
			return
		}
		// Every accepted input is the canonical encoding of what it decodes to.
		c, err := e.Encode()
		if err != nil {
			t.Fatalf("decoded entry does not encode: %v", err)
		}
		if !bytes.Equal(c, b) {
			t.Fatalf("accepted non-canonical input\n in %q\nout %q", b, c)
		}
	})
}

// TestJSONStringMatchesEncodingJSON checks that the package's own string
// escaping equals encoding/json's today and that encoding/json reads it back.
// (If a Go release changes its escaping, the canonical form does not change:
// only this comparison and the doc comment of Encode need a look.)
func TestJSONStringMatchesEncodingJSON(t *testing.T) {
	var all []byte
	for c := range 128 {
		all = append(all, byte(c))
	}
	inputs := []string{"", string(all), "ü€𝄞", "a\u2028b\u2029c", "<script>&amp;</script>", `"\"`, "\x7f", "日本語\x00"}
	for _, s := range inputs {
		checkJSONString(t, s)
	}
}

func checkJSONString(t *testing.T, s string) {
	t.Helper()
	got := appendJSONString(nil, s)
	want, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("escaping %q:\n got %s\nwant %s", s, got, want)
	}
	var back string
	if err := json.Unmarshal(got, &back); err != nil || back != s {
		t.Fatalf("%q does not read back: %q, %v", s, back, err)
	}
}

func FuzzJSONString(f *testing.F) {
	f.Add("plain")
	f.Add("\x00\x1f\"\\<>&\u2028")
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		checkJSONString(t, s)
	})
}
