package report

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseJSON feeds ParseJSON (which reads reports the CLI and other
// tools receive) arbitrary input: it must fail cleanly, and whatever it
// accepts must render in every format without panicking.
func FuzzParseJSON(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.golden.json"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"statements":[{"id":"a"}],"members":[{"ee":"x"}],"cells":[[{"status":"violated"}]]}`))
	f.Add([]byte(`{"cells":[[]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseJSON(b)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := r.WriteTable(&out); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteHTML(&out); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteJSON(&out); err != nil {
			t.Fatal(err)
		}
	})
}
