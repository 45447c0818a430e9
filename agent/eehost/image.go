//go:build linux

package eehost

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/tvd-dev/tvd/ee/image"
)

// BaseImage is the name of the busybox base image the host builds into
// DataDir/images/base the first time an EE names no image.
const BaseImage = "base"

// imageRef is a resolved image: where it is, what it is called, its digest.
type imageRef struct {
	Dir    string
	Name   string
	Digest string // "sha256:" and 64 hex digits
}

var imageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// refKind says how an EE's image field names its image.
type refKind int

const (
	refBase   refKind = iota + 1 // empty: the base image
	refDigest                    // sha256:<hex>: the image in Images with that digest
	refPath                      // an absolute path to an image directory
	refName                      // a name in Images
)

// parseImageRef classifies an image reference from the node
// configuration: "" (the base image), "sha256:<64 hex>", an absolute path,
// or a name of 1-63 of [a-z0-9_.-].
func parseImageRef(s string) (refKind, error) {
	switch {
	case s == "":
		return refBase, nil
	case strings.HasPrefix(s, "sha256:"):
		if _, err := parseDigest(s); err != nil {
			return 0, err
		}
		return refDigest, nil
	case strings.Contains(s, "/"):
		if !filepath.IsAbs(s) || filepath.Clean(s) != s {
			return 0, fmt.Errorf("image path %q: want a clean absolute path to an image directory", s)
		}
		return refPath, nil
	case imageNameRE.MatchString(s):
		return refName, nil
	}
	return 0, fmt.Errorf("image %q: want a name of [a-z0-9_.-], sha256:<64 hex digits>, or an absolute path", s)
}

// parseDigest decodes "sha256:" and 64 lower-case hex digits.
func parseDigest(s string) ([32]byte, error) {
	var d [32]byte
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 || strings.ToLower(h) != h {
		return d, fmt.Errorf("digest %q: want sha256: and 64 lower-case hex digits", s)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("digest %q: want sha256: and 64 lower-case hex digits", s)
	}
	return d, nil
}

// ResolveImage finds and verifies the image an EE's configuration names:
// "" is the base image (built from busybox-static at first use), a name is
// Config.Images/<name>, "sha256:<hex>" is the image under Config.Images (or
// the base image) with that digest, and an absolute path is that image
// directory. It returns the image directory and its digest, so that the
// agent can declare the digest before the EE starts.
func (h *Host) ResolveImage(ref string) (dir, digest string, err error) {
	r, err := h.resolve(ref)
	if err != nil {
		return "", "", err
	}
	return r.Dir, r.Digest, nil
}

func (h *Host) resolve(ref string) (imageRef, error) {
	kind, err := parseImageRef(ref)
	if err != nil {
		return imageRef{}, err
	}
	switch kind {
	case refBase:
		return h.baseImage()
	case refName:
		if h.cfg.Images == "" {
			return imageRef{}, fmt.Errorf("image %q: no image directory configured (--images DIR)", ref)
		}
		return openRef(filepath.Join(h.cfg.Images, ref), ref)
	case refPath:
		return openRef(ref, filepath.Base(ref))
	}
	// A digest: look through the image directory, then the base image.
	var dirs []string
	if h.cfg.Images != "" {
		ents, err := os.ReadDir(h.cfg.Images)
		if err != nil {
			return imageRef{}, fmt.Errorf("image %s: %w", ref, err)
		}
		for _, e := range ents {
			if e.IsDir() && imageNameRE.MatchString(e.Name()) {
				dirs = append(dirs, filepath.Join(h.cfg.Images, e.Name()))
			}
		}
	}
	var errs []error
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, image.ManifestFile))
		if err != nil {
			continue // not an image
		}
		m, err := image.ParseManifest(b)
		if err != nil || m.Digest() != ref {
			continue
		}
		r, err := openRef(d, filepath.Base(d))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return r, nil
	}
	if b, err := h.baseImage(); err == nil && b.Digest == ref {
		return b, nil
	}
	if len(errs) > 0 {
		return imageRef{}, fmt.Errorf("image %s: %w", ref, errors.Join(errs...))
	}
	return imageRef{}, fmt.Errorf("image %s: no image with this digest in %q", ref, h.cfg.Images)
}

func openRef(dir, name string) (imageRef, error) {
	im, err := image.Open(dir)
	if err != nil {
		return imageRef{}, err
	}
	return imageRef{Dir: dir, Name: name, Digest: im.Digest}, nil
}

// baseImage opens DataDir/images/base, building it first if missing.
func (h *Host) baseImage() (imageRef, error) {
	h.baseMu.Lock()
	defer h.baseMu.Unlock()
	dir := filepath.Join(h.cfg.DataDir, "images", BaseImage)
	if _, err := os.Stat(filepath.Join(dir, image.ManifestFile)); errors.Is(err, fs.ErrNotExist) {
		tmp := dir + ".tmp"
		if err := os.RemoveAll(tmp); err != nil {
			return imageRef{}, fmt.Errorf("base image: %w", err)
		}
		if _, err := image.BuildBase(h.cfg.Busybox, tmp); err != nil {
			os.RemoveAll(tmp)
			return imageRef{}, err
		}
		if err := os.RemoveAll(dir); err != nil {
			return imageRef{}, fmt.Errorf("base image: %w", err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			return imageRef{}, fmt.Errorf("base image: %w", err)
		}
		h.log.Info("base image built", "dir", dir)
	}
	return openRef(dir, BaseImage)
}
