package linux

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"golang.org/x/sys/unix"
)

// The controllers an EE uses. "freezer" on cgroup v2 is the core
// cgroup.freeze file, present in every non-root cgroup.
var controllers = []string{"cpu", "cpuacct", "memory", "pids", "freezer"}

// Placement is where one controller lives on this host.
type Placement struct {
	Version int    // 1 or 2
	Dir     string // the agent's own cgroup directory in that hierarchy
}

// CgroupLayout tells, for each controller, which hierarchy enforces it.
// Hosts differ: pure v2 (unified), pure v1, or hybrid — v1 controllers with
// a v2 mount that has few or none of them (this project's CI machine mounts
// every controller on v1 and only hugetlb on v2).
type CgroupLayout struct {
	Controllers map[string]Placement // controller name -> placement
	V2Mount     string               // the cgroup2 mount point, "" if none
}

// DetectCgroups reads /proc/self/mountinfo and /proc/self/cgroup and
// places each controller: on v2 when the v2 hierarchy offers it to the
// agent's cgroup, else on the v1 hierarchy that has it. The freezer is
// v2's cgroup.freeze whenever a v2 hierarchy is mounted.
func DetectCgroups() (CgroupLayout, error) {
	mounts, err := readCgroupMounts("/proc/self/mountinfo")
	if err != nil {
		return CgroupLayout{}, err
	}
	paths, err := readSelfCgroups("/proc/self/cgroup")
	if err != nil {
		return CgroupLayout{}, err
	}
	l := CgroupLayout{Controllers: map[string]Placement{}}
	var v2Dir string
	for _, m := range mounts {
		if m.v2 {
			p, ok := paths[""]
			if !ok {
				continue
			}
			l.V2Mount = m.point
			v2Dir = joinCgroup(m.point, m.root, p)
			break
		}
	}
	var v2Avail []string
	if v2Dir != "" {
		b, err := os.ReadFile(filepath.Join(v2Dir, "cgroup.controllers"))
		if err == nil {
			v2Avail = strings.Fields(string(b))
		}
		l.Controllers["freezer"] = Placement{Version: 2, Dir: v2Dir}
	}
	for _, c := range controllers {
		if _, done := l.Controllers[c]; done {
			continue
		}
		if slices.Contains(v2Avail, c) {
			l.Controllers[c] = Placement{Version: 2, Dir: v2Dir}
			continue
		}
		for _, m := range mounts {
			if m.v2 || !slices.Contains(m.controllers, c) {
				continue
			}
			p, ok := paths[strings.Join(m.controllers, ",")]
			if !ok {
				continue
			}
			l.Controllers[c] = Placement{Version: 1, Dir: joinCgroup(m.point, m.root, p)}
			break
		}
	}
	if _, ok := l.Controllers["cpuacct"]; !ok && v2Dir != "" {
		// v2 accounts CPU time in cpu.stat of every cgroup.
		l.Controllers["cpuacct"] = Placement{Version: 2, Dir: v2Dir}
	}
	return l, nil
}

func joinCgroup(point, root, p string) string {
	rel := p
	if root != "/" {
		rel = strings.TrimPrefix(p, root)
	}
	return filepath.Join(point, filepath.FromSlash(rel))
}

type cgroupMount struct {
	point, root string
	v2          bool
	controllers []string // sorted, v1 only
}

func readCgroupMounts(name string) ([]cgroupMount, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		switch b[0] {
		case "cgroup2":
			out = append(out, cgroupMount{point: unescapeMount(a[4]), root: unescapeMount(a[3]), v2: true})
		case "cgroup":
			var cs []string
			for _, o := range strings.Split(b[2], ",") {
				if slices.Contains(controllers, o) || o == "cpuset" || o == "devices" || o == "blkio" ||
					o == "net_cls" || o == "net_prio" || o == "perf_event" || o == "hugetlb" || o == "rdma" || o == "misc" ||
					strings.HasPrefix(o, "name=") {
					cs = append(cs, o)
				}
			}
			slices.Sort(cs)
			out = append(out, cgroupMount{point: unescapeMount(a[4]), root: unescapeMount(a[3]), controllers: cs})
		}
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readSelfCgroups maps the sorted, comma-joined controller list of each
// hierarchy ("" for v2) to the process's path in it.
func readSelfCgroups(name string) (map[string]string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		cs := strings.Split(parts[1], ",")
		slices.Sort(cs)
		out[strings.Join(cs, ",")] = parts[2]
	}
	return out, nil
}

// cgroupSet is the cgroups of one EE run.
type cgroupSet struct {
	dirs    map[string]Placement // controller -> the EE's own cgroup dir
	created []string             // directories made, in creation order
}

// newCgroupSet creates the EE's cgroups below parent (a relative path
// such as "tvd/ee-name") in every hierarchy the layout uses and applies
// limits. A limit whose controller the host lacks is an error.
func newCgroupSet(l CgroupLayout, parent string, lim ee.Limits) (cs *cgroupSet, err error) {
	cs = &cgroupSet{dirs: map[string]Placement{}}
	defer func() {
		if err != nil {
			cs.remove()
		}
	}()
	need := map[string]bool{"freezer": true, "pids": true, "memory": true, "cpuacct": true, "cpu": lim.CPUMillis > 0}
	var v2Enable []string
	for _, c := range []string{"cpu", "memory", "pids"} {
		if p, ok := l.Controllers[c]; ok && p.Version == 2 && need[c] {
			v2Enable = append(v2Enable, c)
		}
	}
	for _, c := range controllers {
		p, ok := l.Controllers[c]
		if !ok {
			if (c == "cpu" && lim.CPUMillis > 0) || (c == "memory" && lim.MemoryBytes > 0) ||
				(c == "pids" && lim.Pids > 0) || c == "freezer" {
				return cs, fmt.Errorf("cgroup controller %s: not available on this host", c)
			}
			continue
		}
		if !need[c] {
			continue
		}
		dir := filepath.Join(p.Dir, filepath.FromSlash(parent))
		if err := cs.mkdirAll(p.Dir, parent, p.Version == 2, v2Enable); err != nil {
			return cs, err
		}
		cs.dirs[c] = Placement{Version: p.Version, Dir: dir}
	}
	if err := cs.apply(lim); err != nil {
		return cs, err
	}
	return cs, nil
}

func (cs *cgroupSet) mkdirAll(base, rel string, v2 bool, enable []string) error {
	cur := base
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		if v2 && len(enable) > 0 {
			// Controllers must be enabled in every ancestor's
			// subtree_control for a v2 child to use them.
			var b strings.Builder
			for _, c := range enable {
				b.WriteString("+" + c + " ")
			}
			if err := os.WriteFile(filepath.Join(cur, "cgroup.subtree_control"), []byte(strings.TrimSpace(b.String())), 0); err != nil {
				if errors.Is(err, unix.EBUSY) {
					return fmt.Errorf("enable cgroup controllers %v in %s: %w (cgroup v2 allows no processes in a cgroup that delegates controllers: run the agent in a leaf cgroup of a delegated subtree, e.g. systemd Delegate=yes)", enable, cur, err)
				}
				return fmt.Errorf("enable cgroup controllers %v in %s: %w", enable, cur, err)
			}
		}
		cur = filepath.Join(cur, part)
		if err := os.Mkdir(cur, 0o755); err != nil {
			if errors.Is(err, fs.ErrExist) {
				if i == len(parts)-1 && !slices.Contains(cs.created, cur) {
					// The EE's own cgroup, left by an agent that died:
					// reuse it and remove it when this run ends.
					cs.created = append(cs.created, cur)
				}
				continue
			}
			return fmt.Errorf("create cgroup: %w", err)
		}
		cs.created = append(cs.created, cur)
	}
	return nil
}

func writeCg(dir, file, val string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0); err != nil {
		return fmt.Errorf("cgroup %s: write %q: %w", filepath.Join(dir, file), val, err)
	}
	return nil
}

func (cs *cgroupSet) apply(lim ee.Limits) error {
	if p, ok := cs.dirs["cpu"]; ok && lim.CPUMillis > 0 {
		const period = 100000
		quota := lim.CPUMillis * period / 1000
		if p.Version == 2 {
			if err := writeCg(p.Dir, "cpu.max", fmt.Sprintf("%d %d", quota, period)); err != nil {
				return err
			}
		} else {
			if err := writeCg(p.Dir, "cpu.cfs_period_us", strconv.Itoa(period)); err != nil {
				return err
			}
			if err := writeCg(p.Dir, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10)); err != nil {
				return err
			}
		}
	}
	if p, ok := cs.dirs["memory"]; ok && lim.MemoryBytes > 0 {
		v := strconv.FormatInt(lim.MemoryBytes, 10)
		if p.Version == 2 {
			if err := writeCg(p.Dir, "memory.max", v); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(p.Dir, "memory.swap.max")); err == nil {
				if err := writeCg(p.Dir, "memory.swap.max", "0"); err != nil {
					return err
				}
			}
		} else {
			if err := writeCg(p.Dir, "memory.limit_in_bytes", v); err != nil {
				return err
			}
			// memory+swap no higher than memory: no escape into swap.
			if _, err := os.Stat(filepath.Join(p.Dir, "memory.memsw.limit_in_bytes")); err == nil {
				if err := writeCg(p.Dir, "memory.memsw.limit_in_bytes", v); err != nil {
					return err
				}
			}
		}
	}
	if p, ok := cs.dirs["pids"]; ok && lim.Pids > 0 {
		if err := writeCg(p.Dir, "pids.max", strconv.FormatInt(lim.Pids, 10)); err != nil {
			return err
		}
	}
	return nil
}

// attach moves pid into every cgroup of the set.
func (cs *cgroupSet) attach(pid int) error {
	done := map[string]bool{}
	for _, c := range controllers {
		p, ok := cs.dirs[c]
		if !ok || done[p.Dir] {
			continue
		}
		done[p.Dir] = true
		if err := writeCg(p.Dir, "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// paths reports controller -> directory.
func (cs *cgroupSet) paths() map[string]string {
	out := map[string]string{}
	for c, p := range cs.dirs {
		out[c] = p.Dir
	}
	return out
}

// freeze sets the freezer and waits until every task is frozen (or
// thawed) or ctx ends.
func (cs *cgroupSet) freeze(ctx context.Context, frozen bool) error {
	p, ok := cs.dirs["freezer"]
	if !ok {
		return errors.New("no freezer cgroup")
	}
	var file, val, stateFile, want string
	if p.Version == 2 {
		file, stateFile = "cgroup.freeze", "cgroup.events"
		val, want = "0", "frozen 0"
		if frozen {
			val, want = "1", "frozen 1"
		}
	} else {
		file, stateFile = "freezer.state", "freezer.state"
		val, want = "THAWED", "THAWED"
		if frozen {
			val, want = "FROZEN", "FROZEN"
		}
	}
	for delay := 100 * time.Microsecond; ; delay = min(delay*2, 10*time.Millisecond) {
		// v1 may stay FREEZING while a task is busy in the kernel; writing
		// again retries the freeze.
		if err := writeCg(p.Dir, file, val); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(p.Dir, stateFile))
		if err != nil {
			return fmt.Errorf("cgroup freezer: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(line) == want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup freezer: wait for %q: %w", want, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// usage reads the set's metered use.
func (cs *cgroupSet) usage() ee.Usage {
	var u ee.Usage
	if p, ok := cs.dirs["memory"]; ok {
		f := "memory.usage_in_bytes"
		if p.Version == 2 {
			f = "memory.current"
		}
		u.MemoryBytes = readInt(filepath.Join(p.Dir, f))
	}
	if p, ok := cs.dirs["pids"]; ok {
		u.Pids = readInt(filepath.Join(p.Dir, "pids.current"))
	}
	if p, ok := cs.dirs["cpuacct"]; ok {
		if p.Version == 1 {
			u.CPUNanos = readInt(filepath.Join(p.Dir, "cpuacct.usage"))
		} else if b, err := os.ReadFile(filepath.Join(p.Dir, "cpu.stat")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					u.CPUNanos = n * 1000
				}
			}
		}
	}
	return u
}

func readInt(p string) int64 {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// procs lists the pids in the set's cgroups.
func (cs *cgroupSet) procs() []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range cs.dirs {
		b, err := os.ReadFile(filepath.Join(p.Dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// remove deletes the cgroups the set created, deepest first, retrying
// briefly while exiting tasks leave them. A directory that still holds
// other cgroups (the parent shared with other EEs) is left in place.
func (cs *cgroupSet) remove() error {
	var errs []error
	for i := len(cs.created) - 1; i >= 0; i-- {
		dir := cs.created[i]
		var err error
		for try := 0; try < 400; try++ {
			err = os.Remove(dir)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				err = nil
				break
			}
			if hasChildCgroups(dir) {
				err = nil
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	cs.created = nil
	return errors.Join(errs...)
}

func hasChildCgroups(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() {
			return true
		}
	}
	return false
}
