package policy

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzPolicy feeds arbitrary sources through the parser, the checker and the
// compiler. Nothing may panic; a refusal must be Errors naming the file; an
// accepted policy must explain, run its tests and answer queries.
func FuzzPolicy(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/errors/*.yaml")
	ex, _ := filepath.Glob("../examples/*/*.yaml")
	for _, s := range append(seeds, ex...) {
		b, err := os.ReadFile(s)
		if err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseAndCompile([]File{{Name: "fuzz.yaml", Content: data}})
		if err != nil {
			var pe Errors
			if !errors.As(err, &pe) || len(pe) == 0 {
				t.Fatalf("refusal is not policy Errors: %v", err)
			}
			for _, e := range pe {
				if e.Pos.File != "fuzz.yaml" && e.Pos.File != "" {
					t.Fatalf("error names file %q", e.Pos.File)
				}
			}
			return
		}
		if err := c.Explain(io.Discard); err != nil {
			t.Fatal(err)
		}
		c.RunTests()
		m := c.Matrix
		for a := 0; a < m.NumClasses() && a < 16; a++ {
			for b := 0; b < m.NumClasses() && b < 16; b++ {
				d1, r1 := m.ClassName(flowClass(a))
				d2, r2 := m.ClassName(flowClass(b))
				if _, err := c.Query(d1+"/"+r1, d2+"/"+r2); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
