package linux

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/ee"
)

// initArg is argv[0] of the re-executed binary that becomes an EE's first
// process (the "supervisor").
const initArg = "tvd-ee-init"

// Init turns the current process into an EE supervisor when the driver
// started it, and otherwise returns at once. Every binary that uses this
// driver must call Init first thing in main (tests: in TestMain), before
// any other goroutine starts.
//
// The supervisor is pid 1 of the EE's namespaces. It mounts the EE's
// overlay root, /proc, a minimal /dev, read-only and masked /proc paths,
// sets the host name, brings loopback up and pivots into the overlay. Then,
// on its one locked OS thread, it gives up every capability (bounding,
// ambient, inheritable, permitted, effective), locks the securebits so that
// uid 0 regains none on exec, sets no_new_privs, and from that thread
// alone forks the workload and every Exec'd command, which therefore start
// with nothing. It reaps orphans, forwards the driver's stop request to
// the workload, and exits with the workload's status.
//
// What it does NOT do, in a binary built with cgo: there the supervisor's
// other OS threads (Go runtime threads) keep the capabilities it started
// with, since the Go runtime cannot run a system call on every thread of a
// cgo program. (Built with CGO_ENABLED=0, every thread drops them.) Either
// way the supervisor is non-dumpable (EE processes cannot ptrace it or read
// its memory), discards signals from inside the EE, and reads only from its
// control socket, which no EE process holds.
func Init() {
	if len(os.Args) == 0 || os.Args[0] != initArg {
		return
	}
	runtime.LockOSThread()
	os.Exit(supervise())
}

// ctlMsg is every message on the control socket, both directions.
type ctlMsg struct {
	Op string `json:"op"` // config, ready, error, exec, exit, term, kill

	// config
	Config *initConfig `json:"config,omitempty"`

	// exec request / exit report
	ID    int      `json:"id,omitempty"`
	Argv  []string `json:"argv,omitempty"`
	Env   []string `json:"env,omitempty"`
	Code  int      `json:"code,omitempty"`
	Pid   int      `json:"pid,omitempty"`
	Error string   `json:"error,omitempty"`
	// ready: the supervisor dropped capabilities on all its threads.
	AllThreads bool `json:"allThreads,omitempty"`
}

type initConfig struct {
	Lower, Upper, Work, Root string
	Hostname                 string
	Command, Env             []string
	UserNS                   bool      // overlay must use user.* xattrs
	Binds                    []ee.Bind // host directories to mount in the EE
}

const maxMsg = 1 << 20

func readMsg(c *net.UnixConn) (ctlMsg, []*os.File, error) {
	buf := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return ctlMsg{}, nil, err
	}
	if n == 0 {
		return ctlMsg{}, nil, errEOF
	}
	var files []*os.File
	if oobn > 0 {
		scms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return ctlMsg{}, nil, fmt.Errorf("control message: %w", err)
		}
		for _, scm := range scms {
			fds, err := unix.ParseUnixRights(&scm)
			if err != nil {
				return ctlMsg{}, nil, fmt.Errorf("control message: %w", err)
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "fd"+strconv.Itoa(fd)))
			}
		}
	}
	var m ctlMsg
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		for _, f := range files {
			f.Close()
		}
		return ctlMsg{}, nil, fmt.Errorf("control message: %w", err)
	}
	return m, files, nil
}

var errEOF = errors.New("control socket closed")

func writeMsg(c *net.UnixConn, m ctlMsg, files ...*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMsg {
		return fmt.Errorf("control message of %d bytes: want at most %d", len(b), maxMsg)
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// spawnReq asks the locked thread to start a process.
type spawnReq struct {
	argv, env []string
	files     [3]*os.File // stdin, stdout, stderr
	reply     chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

func supervise() int {
	// Whatever the agent's process inherited beyond stdio and the control
	// socket must not leak into the EE.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "tvd-ee-init: mark inherited descriptors close-on-exec: %v\n", err)
		return 125
	}
	ctlFile := os.NewFile(3, "ctl")
	fc, err := net.FileConn(ctlFile)
	ctlFile.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tvd-ee-init: control socket: %v\n", err)
		return 125
	}
	ctl := fc.(*net.UnixConn)
	var wmu sync.Mutex
	send := func(m ctlMsg) {
		wmu.Lock()
		defer wmu.Unlock()
		writeMsg(ctl, m)
	}
	m, _, err := readMsg(ctl)
	if err != nil || m.Op != "config" || m.Config == nil {
		fmt.Fprintf(os.Stderr, "tvd-ee-init: want a config message: %v\n", err)
		return 125
	}
	cfg := m.Config
	fail := func(err error) int {
		send(ctlMsg{Op: "error", Error: err.Error()})
		return 125
	}
	if err := setupRoot(cfg); err != nil {
		return fail(err)
	}
	// Signals from EE processes must not stop the supervisor; the driver
	// ends it with SIGKILL.
	// (Caught and discarded, not ignored: an ignored disposition would
	// be inherited by the workload.)
	sink := make(chan os.Signal, 16)
	signal.Notify(sink, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGALRM)
	go func() {
		for range sink {
		}
	}()
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fail(fmt.Errorf("set non-dumpable: %w", err))
	}
	allThreads, err := dropPrivileges()
	if err != nil {
		return fail(err)
	}

	r := newReaper()
	devnull, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
	if err != nil {
		return fail(fmt.Errorf("open /dev/null: %w", err))
	}
	workload, err := spawn(cfg.Command, cfg.Env, [3]*os.File{devnull, os.Stdout, os.Stderr})
	devnull.Close()
	if err != nil {
		return fail(fmt.Errorf("start workload: %w", err))
	}
	workloadDone := r.register(workload)
	send(ctlMsg{Op: "ready", Pid: workload, AllThreads: allThreads})

	spawns := make(chan spawnReq)
	procs := map[int]int{} // exec id -> pid
	var pmu sync.Mutex
	go func() {
		for {
			m, files, err := readMsg(ctl)
			if err != nil {
				// The driver is gone: nothing can control this EE any
				// more, so end it.
				unix.Kill(workload, unix.SIGKILL)
				os.Exit(137)
			}
			switch m.Op {
			case "term":
				unix.Kill(workload, unix.SIGTERM)
			case "kill":
				pmu.Lock()
				if pid, ok := procs[m.ID]; ok {
					unix.Kill(pid, unix.SIGKILL)
				}
				pmu.Unlock()
			case "exec":
				if len(files) != 3 || len(m.Argv) == 0 {
					for _, f := range files {
						f.Close()
					}
					send(ctlMsg{Op: "exit", ID: m.ID, Code: -1, Error: "exec request: want argv and 3 file descriptors"})
					continue
				}
				req := spawnReq{argv: m.Argv, env: m.Env, files: [3]*os.File{files[0], files[1], files[2]}, reply: make(chan spawnResult, 1)}
				spawns <- req
				res := <-req.reply
				for _, f := range files {
					f.Close()
				}
				if res.err != nil {
					send(ctlMsg{Op: "exit", ID: m.ID, Code: -1, Error: res.err.Error()})
					continue
				}
				pmu.Lock()
				procs[m.ID] = res.pid
				pmu.Unlock()
				done := r.register(res.pid)
				go func(id, pid int) {
					code := <-done
					pmu.Lock()
					delete(procs, id)
					pmu.Unlock()
					send(ctlMsg{Op: "exit", ID: id, Pid: pid, Code: code})
				}(m.ID, res.pid)
			default:
				for _, f := range files {
					f.Close()
				}
			}
		}
	}()
	// The main goroutine owns the capability-free thread: every fork
	// happens here.
	for {
		select {
		case req := <-spawns:
			pid, err := spawn(req.argv, req.env, req.files)
			req.reply <- spawnResult{pid: pid, err: err}
		case code := <-workloadDone:
			return code
		}
	}
}

// spawn starts argv on the calling (locked, capability-free) thread.
func spawn(argv, env []string, files [3]*os.File) (int, error) {
	path, err := lookPath(argv[0], env)
	if err != nil {
		return 0, err
	}
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Dir:   "/",
		Env:   env,
		Files: files[:],
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	p.Release()
	return pid, nil
}

func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathVar := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH %q", name, pathVar)
}

// reaper waits for every child, including orphans the EE re-parents to
// pid 1, and reports the exit status of registered ones.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan int
	early   map[int]int
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]chan int{}, early: map[int]int{}}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		for {
			for {
				var ws unix.WaitStatus
				pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if err == unix.EINTR {
					continue
				}
				if err != nil || pid <= 0 {
					break
				}
				code := ws.ExitStatus()
				if ws.Signaled() {
					code = 128 + int(ws.Signal())
				}
				r.mu.Lock()
				if ch, ok := r.waiters[pid]; ok {
					delete(r.waiters, pid)
					ch <- code
				} else {
					r.early[pid] = code
				}
				r.mu.Unlock()
			}
			<-sig
		}
	}()
	return r
}

// register returns a channel that receives pid's exit status.
func (r *reaper) register(pid int) <-chan int {
	ch := make(chan int, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if code, ok := r.early[pid]; ok {
		delete(r.early, pid)
		ch <- code
		return ch
	}
	r.waiters[pid] = ch
	// Orphans never registered would pile up in early; statuses of pids
	// nobody waits for are dropped once a register call comes by.
	if len(r.early) > 1024 {
		clear(r.early)
	}
	return ch
}

// Paths of /proc made read-only or hidden inside an EE (as container
// runtimes do): uid 0 without capabilities could otherwise still write
// many sysctls.
var (
	readonlyProc = []string{"sys", "sysrq-trigger", "irq", "bus", "fs"}
	maskedProc   = []string{"kcore", "keys", "timer_list", "sched_debug", "kallsyms", "kpageflags", "kpagecount"}
	devNodes     = []string{"null", "zero", "full", "random", "urandom", "tty"}
)

// bindInto mounts b.Source at b.Target under root (nosuid, nodev, noexec),
// creating the target directory. No component of the target may be a
// symbolic link: the image must not redirect the mount out of the root.
func bindInto(root string, b ee.Bind) error {
	p := root
	for _, part := range strings.Split(strings.TrimPrefix(b.Target, "/"), "/") {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("bind %s: %w", b.Target, err)
			}
		case err != nil:
			return fmt.Errorf("bind %s: %w", b.Target, err)
		case st.Mode()&os.ModeSymlink != 0 || !st.IsDir():
			return fmt.Errorf("bind %s: %s in the image is not a directory", b.Target, strings.TrimPrefix(p, root))
		}
	}
	if err := unix.Mount(b.Source, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", b.Source, b.Target, err)
	}
	if err := unix.Mount(b.Source, p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("bind %s: remount nosuid,nodev,noexec: %w", b.Target, err)
	}
	return nil
}

func setupRoot(c *initConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	opts := "lowerdir=" + c.Lower + ",upperdir=" + c.Upper + ",workdir=" + c.Work
	if c.UserNS {
		// trusted.* xattrs belong to the host's user namespace.
		opts = "userxattr," + opts
	}
	if err := unix.Mount("overlay", c.Root, "overlay", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount overlay root (%s): %w", opts, err)
	}
	in := func(p string) string { return filepath.Join(c.Root, p) }
	for _, d := range []string{"proc", "dev"} {
		if err := os.MkdirAll(in(d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("proc", in("proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := unix.Mount("tmpfs", in("dev"), "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=1024k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, n := range devNodes {
		p := in("dev/" + n)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+n, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
	}
	for link, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, in("dev/"+link)); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(in("dev/"+d), 0o755); err != nil {
			return err
		}
	}
	for _, b := range c.Binds {
		if err := bindInto(c.Root, b); err != nil {
			return err
		}
	}
	// Unprivileged ICMP echo sockets, so ping works without CAP_NET_RAW.
	// The sysctl belongs to the EE's own network namespace.
	_ = os.WriteFile(in("proc/sys/net/ipv4/ping_group_range"), []byte("0 2147483647"), 0)
	for _, p := range readonlyProc {
		p = in("proc/" + p)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("make %s read-only: %w", p, err)
		}
	}
	for _, p := range maskedProc {
		p = in("proc/" + p)
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			continue
		}
		if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	if c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if err := loopbackUp(); err != nil {
		return err
	}
	if err := unix.Chdir(c.Root); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root under the new one; the
	// detach then drops it, so no host path is left reachable.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	return unix.Chdir("/")
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// Securebits (linux/securebits.h): uid 0 gets no capabilities from exec,
// uid changes do not touch capabilities, ambient capabilities cannot be
// raised, and all of it is locked.
const secureBits = 1<<0 | 1<<1 | // NOROOT, locked
	1<<2 | 1<<3 | // NO_SETUID_FIXUP, locked
	1<<5 | // KEEP_CAPS off, locked
	1<<6 | 1<<7 // NO_CAP_AMBIENT_RAISE, locked

// dropPrivileges removes every capability from the supervisor and
// everything it will start. In a program without cgo it does so on every
// OS thread at once and reports allThreads; with cgo (where the runtime
// cannot run a system call on all threads) it does so on the calling,
// locked thread only, from which all processes are then forked.
func dropPrivileges() (allThreads bool, err error) {
	last, err := lastCap()
	if err != nil {
		return false, err
	}
	_, _, e := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_SET_SECUREBITS, secureBits, 0, 0, 0, 0)
	switch e {
	case syscall.ENOTSUP:
		return false, dropThreadPrivileges(last)
	case 0:
	default:
		return false, fmt.Errorf("set securebits: %w", e)
	}
	for c := 0; c <= last; c++ {
		if _, _, e := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0, 0); e != 0 {
			return false, fmt.Errorf("drop capability %d from the bounding set: %w", c, e)
		}
	}
	if _, _, e := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0); e != 0 {
		return false, fmt.Errorf("clear ambient capabilities: %w", e)
	}
	if _, _, e := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0); e != 0 {
		return false, fmt.Errorf("set no_new_privs: %w", e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	_, _, e = syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	runtime.KeepAlive(&hdr)
	runtime.KeepAlive(&data)
	if e != 0 {
		return false, fmt.Errorf("clear capabilities: %w", e)
	}
	return true, nil
}

// dropThreadPrivileges does what dropPrivileges does, for the calling
// thread only. The caller must hold the thread locked.
func dropThreadPrivileges(last int) error {
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, secureBits, 0, 0, 0); err != nil {
		return fmt.Errorf("set securebits: %w", err)
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear capabilities: %w", err)
	}
	return nil
}

func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 63, nil
		}
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	return n, nil
}
