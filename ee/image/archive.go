package image

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"golang.org/x/sys/unix"
)

// Archives are PAX tar files written in a deterministic way: entries in
// lexical walk order, modification times in whole seconds, no access or
// change times, no user or group names, extended attributes (only the
// "trusted.overlay." and "user." namespaces) as sorted SCHILY.xattr
// records. The same tree therefore always gives the same bytes and digest.
//
// Entry types: directories, regular files, symbolic links, hard links to an
// earlier entry, and character devices 0:0 (overlayfs whiteouts). Anything
// else in the tree is an error when archiving and when extracting.

const archivePrefix = "sha256-"

// ArchiveName returns the file name of the archive with the given digest.
func ArchiveName(digest string) string {
	return archivePrefix + strings.TrimPrefix(digest, "sha256:") + ".tar"
}

// Archive writes the tree at dir as a deterministic tar into outDir, names
// the file after its SHA-256 and returns it. An archive already present
// under that name is kept (content addressing makes them equal).
func Archive(dir, outDir string) (ee.Snapshot, error) {
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(outDir, ".partial-*.tar")
	if err != nil {
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	bw := bufio.NewWriterSize(cw, 1<<20)
	if err := WriteArchive(bw, dir); err != nil {
		tmp.Close()
		return ee.Snapshot{}, err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	if err := tmp.Close(); err != nil {
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	final := filepath.Join(outDir, ArchiveName(digest))
	if err := os.Rename(tmp.Name(), final); err != nil {
		return ee.Snapshot{}, fmt.Errorf("archive %s: %w", dir, err)
	}
	return ee.Snapshot{Digest: digest, Path: final, Size: cw.n}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteArchive writes the tree at dir to w as a deterministic tar.
func WriteArchive(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    int64(st.Mode & 0o7777),
			Uid:     int(st.Uid),
			Gid:     int(st.Gid),
			ModTime: time.Unix(st.Mtim.Sec, 0),
			Format:  tar.FormatPAX,
		}
		xattrs, err := readXattrs(p)
		if err != nil {
			return err
		}
		if len(xattrs) > 0 {
			hdr.PAXRecords = make(map[string]string, len(xattrs))
			for k, v := range xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		var body *os.File
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				break
			}
			if st.Nlink > 1 {
				links[key] = name
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = st.Size
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			body = f
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
		case unix.S_IFCHR:
			if st.Rdev != 0 {
				return fmt.Errorf("%s: character device %d:%d: only whiteouts (0:0) can be archived", p, unix.Major(st.Rdev), unix.Minor(st.Rdev))
			}
			hdr.Typeflag = tar.TypeChar
		default:
			return fmt.Errorf("%s: file type %o: want directory, regular file, symlink or whiteout", p, st.Mode&unix.S_IFMT)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			if body != nil {
				body.Close()
			}
			return fmt.Errorf("%s: %w", p, err)
		}
		if body != nil {
			n, err := io.Copy(tw, body)
			body.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("%s: changed size while archived", p)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	return nil
}

func keepXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.")
}

func readXattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: list xattrs: %w", p, err)
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("%s: list xattrs: %w", p, err)
	}
	out := map[string]string{}
	for _, name := range strings.Split(string(buf[:size]), "\x00") {
		if name == "" || !keepXattr(name) {
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: get xattr %s: %w", p, name, err)
		}
		v := make([]byte, n)
		if n > 0 {
			if n, err = unix.Lgetxattr(p, name, v); err != nil {
				return nil, fmt.Errorf("%s: get xattr %s: %w", p, name, err)
			}
		}
		out[name] = string(v[:n])
	}
	return out, nil
}

// DigestError reports an archive whose content does not match the digest
// it was named by.
type DigestError struct {
	Path      string
	Want, Got string
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("archive %s: digest %s, want %s", e.Path, e.Got, e.Want)
}

// HashFile returns "sha256:" and the hex SHA-256 of the file at p.
func HashFile(p string) (string, error) {
	sum, err := hashFile(p)
	if err != nil {
		return "", err
	}
	return "sha256:" + sum, nil
}

// Extract replaces the tree at dir with the archive snap. It first hashes
// the archive and refuses one whose SHA-256 is not snap.Digest (a
// *DigestError); it then extracts into a sibling directory while hashing
// again, and swaps that directory in only if the bytes extracted are the
// ones checked. On any error dir is left as it was.
//
// Extract does NOT check that snap.Digest is one the caller trusts (that
// is the caller's record of trusted snapshots), and it refuses rather than
// sanitises entries outside the formats Archive writes: absolute or
// unclean names, "..", entries below a non-directory, devices other than
// whiteouts, xattrs outside trusted.overlay. and user.
func Extract(snap ee.Snapshot, dir string) error {
	got, err := HashFile(snap.Path)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	if got != snap.Digest {
		return &DigestError{Path: snap.Path, Want: snap.Digest, Got: got}
	}
	f, err := os.Open(snap.Path)
	if err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	defer f.Close()
	tmp := dir + ".restore"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	h := sha256.New()
	if err := extractTar(io.TeeReader(bufio.NewReaderSize(f, 1<<20), h), tmp); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("extract %s: %w", snap.Path, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != snap.Digest {
		os.RemoveAll(tmp)
		return &DigestError{Path: snap.Path, Want: snap.Digest, Got: got}
	}
	old := dir + ".old"
	if err := os.RemoveAll(old); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("extract: %w", err)
	}
	if err := os.Rename(dir, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.RemoveAll(tmp)
		return fmt.Errorf("extract: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.Rename(old, dir)
		os.RemoveAll(tmp)
		return fmt.Errorf("extract: %w", err)
	}
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("extract: remove previous tree: %w", err)
	}
	return nil
}

type pendingMeta struct {
	path    string
	mode    uint32
	isDir   bool
	isLink  bool
	modTime time.Time
}

func extractTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	dirs := map[string]bool{}
	files := map[string]bool{}
	var metas []pendingMeta
	sawRoot := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if name == "" {
			name = "."
		}
		if name == "." {
			if hdr.Typeflag != tar.TypeDir || sawRoot {
				return fmt.Errorf("entry %q: want the root directory first and once", hdr.Name)
			}
			sawRoot = true
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			dirs["."] = true
		} else {
			if !sawRoot {
				return fmt.Errorf("entry %q: want the root directory first", hdr.Name)
			}
			if err := checkPath(name); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if !dirs[path.Dir(name)] {
				return fmt.Errorf("entry %q: parent is not a directory of the archive", hdr.Name)
			}
			if dirs[name] || files[name] {
				return fmt.Errorf("entry %q: duplicate", hdr.Name)
			}
		}
		if hdr.Mode&^0o7777 != 0 {
			return fmt.Errorf("entry %q: mode %o: want permission bits only", hdr.Name, hdr.Mode)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		mode := uint32(hdr.Mode)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err := os.Mkdir(target, 0o700); err != nil {
					return err
				}
				dirs[name] = true
			}
		case tar.TypeReg:
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			files[name] = true
		case tar.TypeLink:
			if err := checkPath(hdr.Linkname); err != nil || !files[hdr.Linkname] {
				return fmt.Errorf("entry %q: hard link to %q: want an earlier regular file", hdr.Name, hdr.Linkname)
			}
			if err := os.Link(filepath.Join(dir, filepath.FromSlash(hdr.Linkname)), target); err != nil {
				return err
			}
			files[name] = true
			continue // shares the first entry's metadata
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
				return fmt.Errorf("entry %q: want a symlink target", hdr.Name)
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
			files[name] = true
		case tar.TypeChar:
			if hdr.Devmajor != 0 || hdr.Devminor != 0 {
				return fmt.Errorf("entry %q: device %d:%d: only whiteouts (0:0) are allowed", hdr.Name, hdr.Devmajor, hdr.Devminor)
			}
			if err := unix.Mknod(target, unix.S_IFCHR|0o600, 0); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			files[name] = true
		default:
			return fmt.Errorf("entry %q: type %q: want directory, file, hard link, symlink or whiteout", hdr.Name, hdr.Typeflag)
		}
		if err := unix.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		keys := make([]string, 0, len(hdr.PAXRecords))
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			xname := strings.TrimPrefix(k, "SCHILY.xattr.")
			if !keepXattr(xname) {
				return fmt.Errorf("entry %q: xattr %q: want trusted.overlay.* or user.*", hdr.Name, xname)
			}
			if err := unix.Lsetxattr(target, xname, []byte(hdr.PAXRecords[k]), 0); err != nil {
				return fmt.Errorf("entry %q: set xattr %s: %w", hdr.Name, xname, err)
			}
		}
		metas = append(metas, pendingMeta{path: target, mode: mode, isDir: hdr.Typeflag == tar.TypeDir,
			isLink: hdr.Typeflag == tar.TypeSymlink, modTime: hdr.ModTime})
	}
	if !sawRoot {
		return errors.New("empty archive: want at least the root directory")
	}
	// Modes and times last, deepest first, so that writing children did not
	// bump a parent's time and read-only directories could be filled.
	for i := len(metas) - 1; i >= 0; i-- {
		m := metas[i]
		if !m.isLink {
			if err := os.Chmod(m.path, fileMode(m.mode)); err != nil {
				return err
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(m.modTime.UnixNano()), unix.NsecToTimespec(m.modTime.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, m.path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// TreeDigest returns the digest of the deterministic archive of the tree
// at dir without writing it anywhere: two trees with the same digest have
// the same content, modes, owners, whole-second times, kept xattrs and
// whiteouts.
func TreeDigest(dir string) (string, error) {
	h := sha256.New()
	if err := WriteArchive(h, dir); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
