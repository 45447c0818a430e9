// Package image builds, opens and verifies EE images, and archives EE
// writable state into content-addressed snapshots.
//
// An image is a directory holding rootfs/, the file tree an EE's root is
// made from, and manifest.json, which lists every directory, regular file
// (mode, size, SHA-256) and symbolic link (target) of that tree. The image
// digest is the SHA-256 of the manifest's canonical encoding, so one digest
// pins the whole tree. Ownership, timestamps and extended attributes are
// not part of an image: Build copies files as the building user, and
// drivers mount the tree read-only under a writable layer.
//
// The manifest is untrusted input: ParseManifest accepts only version 1,
// known fields, clean relative paths in sorted order without duplicates,
// parents that exist, and well-formed modes and hashes.
package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Layout of an image directory.
const (
	ManifestFile = "manifest.json"
	RootFSDir    = "rootfs"
)

// Version is the only manifest version this package reads and writes.
const Version = 1

// Limits on manifests, so a hostile one cannot exhaust the reader.
const (
	MaxManifestBytes = 16 << 20
	MaxEntries       = 200_000
	MaxPathLen       = 4096
)

// Manifest lists an image's tree. Paths are slash-separated, relative to
// rootfs/, clean, and sorted within each list.
type Manifest struct {
	Version  int       `json:"version"`
	Dirs     []Dir     `json:"dirs"`
	Files    []File    `json:"files"`
	Symlinks []Symlink `json:"symlinks"`
}

// Dir is a directory of the tree.
type Dir struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode"` // permission bits, including setgid and sticky
}

// File is a regular file of the tree.
type File struct {
	Path   string `json:"path"`
	Mode   uint32 `json:"mode"` // permission bits, including setuid
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex
}

// Symlink is a symbolic link of the tree. Its target is not followed or
// checked: inside an EE it resolves against the EE's own root.
type Symlink struct {
	Path   string `json:"path"`
	Target string `json:"target"`
}

// Canonical returns the manifest's canonical encoding: compact JSON with
// every list sorted by path and empty lists as [].
func (m Manifest) Canonical() []byte {
	c := Manifest{Version: m.Version, Dirs: slices.Clone(m.Dirs), Files: slices.Clone(m.Files), Symlinks: slices.Clone(m.Symlinks)}
	if c.Dirs == nil {
		c.Dirs = []Dir{}
	}
	if c.Files == nil {
		c.Files = []File{}
	}
	if c.Symlinks == nil {
		c.Symlinks = []Symlink{}
	}
	sort.Slice(c.Dirs, func(i, j int) bool { return c.Dirs[i].Path < c.Dirs[j].Path })
	sort.Slice(c.Files, func(i, j int) bool { return c.Files[i].Path < c.Files[j].Path })
	sort.Slice(c.Symlinks, func(i, j int) bool { return c.Symlinks[i].Path < c.Symlinks[j].Path })
	b, err := json.Marshal(c)
	if err != nil {
		panic("image: marshal manifest: " + err.Error()) // plain structs of strings and numbers
	}
	return b
}

// Digest returns "sha256:" and the hex SHA-256 of the canonical encoding.
func (m Manifest) Digest() string {
	sum := sha256.Sum256(m.Canonical())
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseManifest decodes and checks a manifest. It checks the manifest's
// own consistency only; it does not look at any file tree (see Verify).
func ParseManifest(b []byte) (Manifest, error) {
	if len(b) > MaxManifestBytes {
		return Manifest{}, fmt.Errorf("manifest: %d bytes: want at most %d", len(b), MaxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, errors.New("manifest: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// Validate checks a manifest's consistency: version, entry count, paths,
// order, duplicates, parents, modes, sizes and hash syntax.
func (m Manifest) Validate() error {
	if m.Version != Version {
		return fmt.Errorf("manifest: version %d: want %d", m.Version, Version)
	}
	if n := len(m.Dirs) + len(m.Files) + len(m.Symlinks); n > MaxEntries {
		return fmt.Errorf("manifest: %d entries: want at most %d", n, MaxEntries)
	}
	seen := make(map[string]string, len(m.Dirs)+len(m.Files)+len(m.Symlinks))
	dirs := map[string]bool{".": true}
	check := func(kind, p, prev string) error {
		if err := checkPath(p); err != nil {
			return fmt.Errorf("manifest: %s %q: %w", kind, p, err)
		}
		if prev != "" && p <= prev {
			return fmt.Errorf("manifest: %s %q: want %ss sorted by path without duplicates (after %q)", kind, p, kind, prev)
		}
		if other, ok := seen[p]; ok {
			return fmt.Errorf("manifest: %s %q: path already listed as a %s", kind, p, other)
		}
		seen[p] = kind
		return nil
	}
	prev := ""
	for _, d := range m.Dirs {
		if err := check("dir", d.Path, prev); err != nil {
			return err
		}
		if d.Mode&^0o7777 != 0 {
			return fmt.Errorf("manifest: dir %q: mode %o: want permission bits only (<= 07777)", d.Path, d.Mode)
		}
		dirs[d.Path] = true
		prev = d.Path
	}
	prev = ""
	for _, f := range m.Files {
		if err := check("file", f.Path, prev); err != nil {
			return err
		}
		if f.Mode&^0o7777 != 0 {
			return fmt.Errorf("manifest: file %q: mode %o: want permission bits only (<= 07777)", f.Path, f.Mode)
		}
		if f.Size < 0 {
			return fmt.Errorf("manifest: file %q: size %d: want >= 0", f.Path, f.Size)
		}
		if !isHex64(f.SHA256) {
			return fmt.Errorf("manifest: file %q: sha256 %q: want 64 lowercase hex digits", f.Path, f.SHA256)
		}
		prev = f.Path
	}
	prev = ""
	for _, s := range m.Symlinks {
		if err := check("symlink", s.Path, prev); err != nil {
			return err
		}
		if s.Target == "" || len(s.Target) > MaxPathLen || strings.IndexByte(s.Target, 0) >= 0 {
			return fmt.Errorf("manifest: symlink %q: target %q: want 1-%d bytes without NUL", s.Path, s.Target, MaxPathLen)
		}
		prev = s.Path
	}
	// Every entry's parent must be a listed directory (or the root).
	for p, kind := range seen {
		if parent := path.Dir(p); !dirs[parent] {
			return fmt.Errorf("manifest: %s %q: parent %q is not a listed dir", kind, p, parent)
		}
	}
	return nil
}

func checkPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("want a non-empty path below the root")
	case len(p) > MaxPathLen:
		return fmt.Errorf("want at most %d bytes", MaxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("want no NUL byte")
	case strings.HasPrefix(p, "/"):
		return errors.New("want a relative path")
	case path.Clean(p) != p:
		return errors.New("want a clean path (no //, ./, trailing /)")
	case p == ".." || strings.HasPrefix(p, "../"):
		return errors.New("want a path inside the root (no ..)")
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Build copies the tree at dir into a new image directory out (which must
// not exist or be empty) and writes its manifest. Directories, regular
// files and symbolic links are copied; any other file type is an error.
// Hard links become separate copies. Ownership and timestamps are not
// kept.
func Build(dir, out string) (Manifest, error) {
	src, err := filepath.Abs(dir)
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if ents, err := os.ReadDir(out); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	} else if len(ents) != 0 {
		return Manifest{}, fmt.Errorf("build image: output %s: want an empty or missing directory", out)
	}
	root := filepath.Join(out, RootFSDir)
	if err := os.Mkdir(root, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	m := Manifest{Version: Version, Dirs: []Dir{}, Files: []File{}, Symlinks: []Symlink{}}
	var dirModes []Dir
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		dst := filepath.Join(root, filepath.FromSlash(rel))
		mode := uint32(info.Mode().Perm()) | specialBits(info.Mode())
		switch {
		case info.IsDir():
			if rel == "." {
				return nil
			}
			if err := os.Mkdir(dst, 0o700); err != nil {
				return err
			}
			m.Dirs = append(m.Dirs, Dir{Path: rel, Mode: mode})
			dirModes = append(dirModes, Dir{Path: dst, Mode: mode})
		case info.Mode().IsRegular():
			size, sum, err := copyFile(p, dst, mode)
			if err != nil {
				return err
			}
			m.Files = append(m.Files, File{Path: rel, Mode: mode, Size: size, SHA256: sum})
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			m.Symlinks = append(m.Symlinks, Symlink{Path: rel, Target: target})
		default:
			return fmt.Errorf("%s: file type %s: want directory, regular file or symlink", p, info.Mode().Type())
		}
		return nil
	})
	if err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	// Directory modes last, so read-only directories could be filled.
	for i := len(dirModes) - 1; i >= 0; i-- {
		if err := os.Chmod(dirModes[i].Path, fileMode(dirModes[i].Mode)); err != nil {
			return Manifest{}, fmt.Errorf("build image: %w", err)
		}
	}
	sort.Slice(m.Dirs, func(i, j int) bool { return m.Dirs[i].Path < m.Dirs[j].Path })
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	sort.Slice(m.Symlinks, func(i, j int) bool { return m.Symlinks[i].Path < m.Symlinks[j].Path })
	if err := m.Validate(); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	if err := writeFileSync(filepath.Join(out, ManifestFile), m.Canonical(), 0o644); err != nil {
		return Manifest{}, fmt.Errorf("build image: %w", err)
	}
	return m, nil
}

func specialBits(m fs.FileMode) uint32 {
	var b uint32
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

func fileMode(mode uint32) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

func copyFile(src, dst string, mode uint32) (int64, string, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err != nil {
		out.Close()
		return 0, "", err
	}
	if err := out.Chmod(fileMode(mode)); err != nil {
		out.Close()
		return 0, "", err
	}
	if err := out.Close(); err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func writeFileSync(name string, b []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Image is an opened, verified image.
type Image struct {
	Dir      string   // the image directory
	Manifest Manifest // its parsed manifest
	Digest   string   // Manifest.Digest()
}

// RootFS is the directory holding the image's tree.
func (im *Image) RootFS() string { return filepath.Join(im.Dir, RootFSDir) }

// Open reads the image at dir and verifies its tree against its manifest
// (see Verify for what that does and does not check).
func Open(dir string) (*Image, error) {
	b, err := readLimited(filepath.Join(dir, ManifestFile), MaxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", dir, err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("open image %s: %w", dir, err)
	}
	if err := Verify(filepath.Join(dir, RootFSDir), m); err != nil {
		return nil, fmt.Errorf("open image %s: %w", dir, err)
	}
	return &Image{Dir: dir, Manifest: m, Digest: m.Digest()}, nil
}

func readLimited(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, max)
	}
	return b, nil
}

// Mismatch is one difference between a tree and its manifest.
type Mismatch struct {
	Path string // slash-separated, relative to the tree's root
	What string // "missing", "unexpected", "type", "mode", "size", "sha256", "target"
	Want string // what the manifest says ("" for unexpected)
	Got  string // what the tree has ("" for missing)
}

func (m Mismatch) String() string {
	switch m.What {
	case "missing":
		return fmt.Sprintf("%s: missing (want %s)", m.Path, m.Want)
	case "unexpected":
		return fmt.Sprintf("%s: unexpected %s", m.Path, m.Got)
	}
	return fmt.Sprintf("%s: %s %s, want %s", m.Path, m.What, m.Got, m.Want)
}

// VerifyError lists every mismatch Verify found, sorted by path.
type VerifyError struct {
	Mismatches []Mismatch
}

func (e *VerifyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "image tree does not match its manifest (%d mismatches)", len(e.Mismatches))
	for i, m := range e.Mismatches {
		if i == 20 {
			fmt.Fprintf(&b, "; ...")
			break
		}
		b.WriteString("; ")
		b.WriteString(m.String())
	}
	return b.String()
}

// Verify re-hashes the tree at root and compares it with m: every listed
// entry must exist with the listed type, permission bits, size, SHA-256 or
// link target, and no unlisted entry may exist. It returns a *VerifyError
// naming every mismatch.
//
// Verify does NOT check ownership, timestamps, extended attributes or hard
// link structure; it does not follow symbolic links or judge where they
// point; it does not stop the tree from changing after it returns (mount it
// read-only); and it does not say whether m itself is trustworthy — compare
// m.Digest() with a digest from a trusted source for that.
func Verify(root string, m Manifest) error {
	want := make(map[string]any, len(m.Dirs)+len(m.Files)+len(m.Symlinks))
	for _, d := range m.Dirs {
		want[d.Path] = d
	}
	for _, f := range m.Files {
		want[f.Path] = f
	}
	for _, s := range m.Symlinks {
		want[s.Path] = s
	}
	var bad []Mismatch
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		w, ok := want[rel]
		delete(want, rel)
		if !ok {
			bad = append(bad, Mismatch{Path: rel, What: "unexpected", Got: kindOf(info.Mode())})
			if info.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if kindOf(info.Mode()) != kindOfEntry(w) {
			bad = append(bad, Mismatch{Path: rel, What: "type", Want: kindOfEntry(w), Got: kindOf(info.Mode())})
			if info.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		mode := uint32(info.Mode().Perm()) | specialBits(info.Mode())
		switch w := w.(type) {
		case Dir:
			if mode != w.Mode {
				bad = append(bad, Mismatch{Path: rel, What: "mode", Want: fmt.Sprintf("%04o", w.Mode), Got: fmt.Sprintf("%04o", mode)})
			}
		case File:
			if mode != w.Mode {
				bad = append(bad, Mismatch{Path: rel, What: "mode", Want: fmt.Sprintf("%04o", w.Mode), Got: fmt.Sprintf("%04o", mode)})
			}
			if info.Size() != w.Size {
				bad = append(bad, Mismatch{Path: rel, What: "size", Want: fmt.Sprint(w.Size), Got: fmt.Sprint(info.Size())})
				return nil
			}
			sum, err := hashFile(p)
			if err != nil {
				return err
			}
			if sum != w.SHA256 {
				bad = append(bad, Mismatch{Path: rel, What: "sha256", Want: w.SHA256, Got: sum})
			}
		case Symlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if target != w.Target {
				bad = append(bad, Mismatch{Path: rel, What: "target", Want: w.Target, Got: target})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("verify image tree: %w", err)
	}
	for p, w := range want {
		bad = append(bad, Mismatch{Path: p, What: "missing", Want: kindOfEntry(w)})
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Slice(bad, func(i, j int) bool {
		if bad[i].Path != bad[j].Path {
			return bad[i].Path < bad[j].Path
		}
		return bad[i].What < bad[j].What
	})
	return &VerifyError{Mismatches: bad}
}

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m.IsRegular():
		return "file"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "special file (" + m.Type().String() + ")"
}

func kindOfEntry(e any) string {
	switch e.(type) {
	case Dir:
		return "dir"
	case File:
		return "file"
	case Symlink:
		return "symlink"
	}
	return "?"
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
