package policy

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Load reads a policy from paths. Each path is a YAML file or a directory;
// a directory contributes every *.yaml and *.yml file below it, in lexical
// order. Problems in the sources come back as Errors, every one at once.
func Load(paths ...string) (*Policy, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("load policy: no path given")
	}
	var files []File
	seen := map[string]bool{}
	for _, p := range paths {
		names, err := sourceFiles(p)
		if err != nil {
			return nil, fmt.Errorf("load policy: %w", err)
		}
		for _, n := range names {
			if seen[n] {
				continue
			}
			seen[n] = true
			content, err := readLimited(n)
			if err != nil {
				return nil, fmt.Errorf("load policy: %w", err)
			}
			files = append(files, File{Name: n, Content: content})
		}
	}
	return Parse(files)
}

func sourceFiles(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{filepath.Clean(p)}, nil
	}
	var out []string
	err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != p && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			out = append(out, filepath.Clean(path))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no *.yaml or *.yml files in directory", p)
	}
	sort.Strings(out)
	return out, nil
}

func readLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// Parse decodes policy sources that are already in memory. It reports
// syntax and schema problems (unknown fields, wrong types, missing fields);
// Check reports the rest.
func Parse(files []File) (*Policy, error) {
	p := &Policy{Files: files}
	var e errs
	for _, f := range files {
		parseFile(p, f, &e)
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// LoadAndCompile loads, checks and compiles a policy in one step.
func LoadAndCompile(paths ...string) (*Compiled, error) {
	p, err := Load(paths...)
	if err != nil {
		return nil, err
	}
	return p.Compile()
}

// ParseAndCompile parses, checks and compiles in-memory sources.
func ParseAndCompile(files []File) (*Compiled, error) {
	p, err := Parse(files)
	if err != nil {
		return nil, err
	}
	return p.Compile()
}
