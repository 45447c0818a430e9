package ee

import (
	"errors"
	"strings"
	"testing"
)

func TestSpecValidate(t *testing.T) {
	ok := Spec{Name: "web-1", Image: "/img", Command: []string{"sh"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"empty name", func(s *Spec) { s.Name = "" }, "ee name"},
		{"slash in name", func(s *Spec) { s.Name = "a/b" }, "ee name"},
		{"upper case", func(s *Spec) { s.Name = "Web" }, "ee name"},
		{"long name", func(s *Spec) { s.Name = strings.Repeat("a", 64) }, "ee name"},
		{"no image", func(s *Spec) { s.Image = "" }, "image"},
		{"no command", func(s *Spec) { s.Command = nil }, "command"},
		{"bad env", func(s *Spec) { s.Env = []string{"=x"} }, "KEY=value"},
		{"bad hostname", func(s *Spec) { s.Hostname = "a b" }, "hostname"},
		{"negative cpu", func(s *Spec) { s.Limits.CPUMillis = -1 }, "cpu"},
		{"tiny memory", func(s *Spec) { s.Limits.MemoryBytes = 1000 }, "memory"},
		{"negative pids", func(s *Spec) { s.Limits.Pids = -1 }, "pids"},
		{"relative bind", func(s *Spec) { s.Binds = []Bind{{Source: "run/tvd", Target: "/run/tvd"}} }, "bind"},
		{"bind onto root", func(s *Spec) { s.Binds = []Bind{{Source: "/srv/x", Target: "/"}} }, "bind"},
		{"unclean bind", func(s *Spec) { s.Binds = []Bind{{Source: "/srv/x", Target: "/run/../etc"}} }, "bind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			s.Command = append([]string(nil), ok.Command...)
			tc.edit(&s)
			if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	var err error = &StateError{Name: "a", Op: "freeze", Have: StateStopped}
	if !errors.Is(err, ErrState) || err.Error() != "ee a: cannot freeze while stopped" {
		t.Fatalf("StateError: %v", err)
	}
	if got := WithDefaultPath([]string{"A=1"}); len(got) != 2 || got[1] != DefaultPath {
		t.Fatalf("WithDefaultPath: %v", got)
	}
	if got := WithDefaultPath([]string{"PATH=/x"}); len(got) != 1 {
		t.Fatalf("WithDefaultPath kept no existing PATH: %v", got)
	}
}
