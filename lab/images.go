package lab

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"

	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/policy"
)

// Image is an EE image the lab builds before its nodes start: the base
// image (busybox) plus the Go main package in Build, compiled with
// CGO_ENABLED=0 into /bin/NAME. Building needs the go command where the
// lab runs.
//
//	images:
//	  - {name: shop, build: ., referenceValues: shop-image}
//
// ReferenceValues, if set, names a ReferenceValues document of the
// scenario's policy that the lab replaces with the measured image (every
// executable in it), so that the binary, built on the spot, is on the
// domain's allowlist. The document must be alone in its file.
type Image struct {
	Name            string `yaml:"name"`
	Build           string `yaml:"build"`
	ReferenceValues string `yaml:"referenceValues"`
}

var labImageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func (im Image) check(where string) error {
	switch {
	case !labImageRE.MatchString(im.Name) || im.Name == "busybox":
		return fmt.Errorf("%s: name %q: want 1-63 of [a-z0-9_.-], not busybox", where, im.Name)
	case im.Build == "":
		return fmt.Errorf("%s (%s): build: want the directory of a Go main package, relative to the scenario", where, im.Name)
	case im.ReferenceValues != "" && !nameRE.MatchString(im.ReferenceValues):
		return fmt.Errorf("%s (%s): referenceValues %q: want a ReferenceValues document's name", where, im.Name, im.ReferenceValues)
	}
	return nil
}

// BuildImages builds the scenario's images into dir (one image directory
// per name, for the agents' --images) and returns the policy files with
// the measured ReferenceValues documents in place of the named ones.
func (s *Scenario) BuildImages(ctx context.Context, dir string, files []policy.File) ([]policy.File, error) {
	if len(s.Images) == 0 {
		return files, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "tvdlab-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	base := filepath.Join(work, "base")
	if _, err := image.BuildBase("", base); err != nil {
		return nil, err
	}
	bimg, err := image.Open(base)
	if err != nil {
		return nil, err
	}
	out := append([]policy.File(nil), files...)
	for _, im := range s.Images {
		tree := filepath.Join(work, "tree-"+im.Name)
		if err := copyTree(bimg.RootFS(), tree); err != nil {
			return nil, fmt.Errorf("image %s: %w", im.Name, err)
		}
		src := im.Build
		if !filepath.IsAbs(src) {
			src = filepath.Join(filepath.Dir(s.Path), src)
		}
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(tree, "bin", im.Name), ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("image %s: go build in %s: %w\n%s", im.Name, src, err, b)
		}
		if _, err := image.Build(tree, filepath.Join(dir, im.Name)); err != nil {
			return nil, fmt.Errorf("image %s: %w", im.Name, err)
		}
		if im.ReferenceValues == "" {
			continue
		}
		doc, _, err := policy.Measure(tree, im.ReferenceValues)
		if err != nil {
			return nil, fmt.Errorf("image %s: measure: %w", im.Name, err)
		}
		replaced := false
		for i, f := range out {
			p, err := policy.Parse([]policy.File{f})
			if err != nil || len(p.ReferenceValues) != 1 || p.ReferenceValues[0].Name.Value != im.ReferenceValues {
				continue
			}
			if len(p.Domains)+len(p.Claims)+len(p.Issuers)+len(p.Mappings)+len(p.Tests) != 0 {
				return nil, fmt.Errorf("image %s: %s holds more than the ReferenceValues document %s the lab replaces", im.Name, f.Name, im.ReferenceValues)
			}
			out[i] = policy.File{Name: f.Name, Content: append([]byte("# Measured by tvd lab up from image "+im.Name+".\n"), doc...)}
			replaced = true
		}
		if !replaced {
			return nil, fmt.Errorf("image %s: no policy file holds just the ReferenceValues document %q to replace", im.Name, im.ReferenceValues)
		}
	}
	return out, nil
}

// copyTree copies the directory tree src to dst: directories, regular
// files and symbolic links, with their permission bits.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		t := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.MkdirAll(t, 0o755); err != nil {
				return err
			}
			return os.Chmod(t, info.Mode()&fs.ModePerm|info.Mode()&fs.ModeSticky)
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, t)
		case info.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			o, err := os.OpenFile(t, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode()&fs.ModePerm)
			if err != nil {
				return err
			}
			if _, err := io.Copy(o, in); err != nil {
				o.Close()
				return err
			}
			return o.Close()
		}
		return nil
	})
}
