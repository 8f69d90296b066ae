// Package pgtest starts a throw-away PostgreSQL server for tests (STYLE
// rules 11 and 12): store/pg's conformance run and the gateway tests that
// keep their state in PostgreSQL.
//
// Invariants and implementation notes:
//   - The binaries are Debian's (package postgresql: initdb and postgres
//     under /usr/lib/postgresql/VERSION/bin, the highest version wins), or
//     initdb and postgres on PATH elsewhere. Require skips a test with an
//     install hint when they are missing, or fails it when CI=true.
//   - Every server lives in one os.MkdirTemp directory (never t.TempDir,
//     which is always deleted): data/ (the cluster), postgres.log (the
//     server's stdout and stderr). It is removed when the test passes and
//     kept, its path and log tail printed, when it fails.
//   - The server listens on 127.0.0.1 and a free port only (no unix
//     socket), password authentication (scram-sha-256) for the superuser
//     Server.User with a random password, so tests can check that a wrong
//     password is refused and that errors do not echo it.
//   - fsync, synchronous_commit and full_page_writes are off: fast, and
//     not crash safe. Nothing here is for production.
//   - PostgreSQL refuses to run as root: when the test runs as root, initdb
//     and postgres run as the user "postgres" (created by Debian's
//     package), the directory chowned to it (and made in /tmp when TMPDIR
//     is not reachable by other users); otherwise as the current user.
//   - postgres runs as our child in a process group of its own; Cleanup
//     asks it to stop (SIGINT, "fast shutdown") and kills the group if it
//     takes longer than stopTimeout. If the test binary dies, the server
//     lives on; its directory is in TMPDIR, named pecgate-pg-*.
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallHint says how to get the binaries on Debian and Ubuntu.
const InstallHint = "apt-get install postgresql"

// Timeouts: readyTimeout bounds a start (initdb excluded), stopTimeout a
// graceful stop before the process group is killed.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	startTries   = 5
)

// Server is one running PostgreSQL. Its fields are set by Start and must
// not be changed.
type Server struct {
	// Dir holds everything of this server (see the package doc).
	Dir string
	// Addr is 127.0.0.1:port.
	Addr string
	// User and Password are the superuser's credentials.
	User, Password string
	// LogPath is the server's log.
	LogPath string

	bins    bins
	cred    *syscall.Credential // nil: run as ourselves
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	dbs     atomic.Int32
}

type bins struct{ initdb, postgres string }

// Require skips the test when PostgreSQL is not installed, saying how to
// install it, or fails it when the environment variable CI is "true": CI
// must not silently skip the integration tests.
func Require(t testing.TB) {
	t.Helper()
	if _, err := findBinaries(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: %v; CI=true, so PostgreSQL must be installed (%s)", err, InstallHint)
		}
		t.Skipf("pgtest: PostgreSQL not installed: %s", InstallHint)
	}
}

// findBinaries finds initdb and postgres: Debian's newest version first,
// then PATH.
var findBinaries = sync.OnceValues(func() (bins, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		b := bins{filepath.Join(d, "initdb"), filepath.Join(d, "postgres")}
		if executable(b.initdb) && executable(b.postgres) {
			return b, nil
		}
	}
	i, err1 := exec.LookPath("initdb")
	p, err2 := exec.LookPath("postgres")
	if err1 == nil && err2 == nil {
		return bins{i, p}, nil
	}
	return bins{}, errors.New("initdb and postgres not found in /usr/lib/postgresql/*/bin or PATH")
})

func executable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Start starts a PostgreSQL server for t (calling Require first) and stops
// it when t's cleanup runs.
func Start(t testing.TB) *Server {
	t.Helper()
	Require(t)
	b, _ := findBinaries()
	base := ""
	if os.Geteuid() == 0 && !othersCanEnter(os.TempDir()) {
		// The server runs as the user postgres, which must reach its
		// directory.
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "pecgate-pg-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s := &Server{Dir: dir, bins: b, User: "pecgate", Password: randomHex(12), LogPath: filepath.Join(dir, "postgres.log")}
	t.Cleanup(func() { s.cleanup(t) })
	if err := s.initdb(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	var lastErr error
	for range startTries {
		if lastErr = s.start(); lastErr == nil {
			return s
		}
		if !strings.Contains(lastErr.Error(), "port taken") {
			break
		}
	}
	t.Fatalf("pgtest: %v", lastErr)
	return nil
}

// URL returns the connection URL of database db as the superuser.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(s.User, s.Password),
		Host:     s.Addr,
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// NewDatabase creates an empty database and returns its URL. The
// database goes with the server.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test%d", s.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	return s.URL(name)
}

// initdb creates the cluster in Dir/data.
func (s *Server) initdb() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root, and PostgreSQL refuses to: no user postgres to run it as (%s creates it): %w", InstallHint, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.Dir, uid, gid); err != nil {
			return err
		}
	}
	pwfile := filepath.Join(s.Dir, "pwfile")
	if err := s.writeFile(pwfile, s.Password+"\n"); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	cmd := exec.Command(s.bins.initdb, "-D", filepath.Join(s.Dir, "data"),
		"-U", s.User, "--pwfile", pwfile, "--auth", "scram-sha-256",
		"--encoding", "UTF8", "--locale", "C", "--no-sync")
	cmd.Dir = s.Dir
	cmd.Env = s.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

// writeFile writes a file owned by whoever runs the server.
func (s *Server) writeFile(name, content string) error {
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		return err
	}
	if s.cred != nil {
		return os.Chown(name, int(s.cred.Uid), int(s.cred.Gid))
	}
	return nil
}

func (s *Server) env() []string {
	env := []string{"LC_ALL=C", "LANG=C", "PATH=" + os.Getenv("PATH"), "TZ=UTC"}
	if s.cred != nil {
		env = append(env, "HOME="+s.Dir)
	} else {
		env = append(env, "HOME="+os.Getenv("HOME"))
	}
	return env
}

// start runs postgres on a free port and waits until it accepts a login.
// Its error contains "port taken" when another process took the port.
func (s *Server) start() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	st, _ := logf.Stat()
	logStart := st.Size()
	cmd := exec.Command(s.bins.postgres, "-D", filepath.Join(s.Dir, "data"),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories=",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "shared_buffers=16MB",
		"-c", "log_min_messages=warning",
	)
	cmd.Dir = s.Dir
	cmd.Env = s.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bins.postgres, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-s.exited:
			out := readFrom(s.LogPath, logStart)
			if strings.Contains(out, "could not bind") || strings.Contains(out, "could not create any TCP/IP sockets") {
				return fmt.Errorf("postgres on %s: port taken: %s", s.Addr, out)
			}
			return fmt.Errorf("postgres exited (%v) before accepting connections:\n%s", s.waitErr, out)
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("postgres on %s not ready after %v: %v\n%s", s.Addr, readyTimeout, err, readFrom(s.LogPath, logStart))
		}
		time.Sleep(20 * time.Millisecond) // polling the port, not synchronising
	}
}

// stop shuts the server down: SIGINT, then SIGKILL to the group after
// stopTimeout.
func (s *Server) stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.exited:
	case <-timer.C:
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
}

func (s *Server) cleanup(t testing.TB) {
	s.stop()
	if t.Failed() {
		t.Logf("pgtest: test failed, kept %s", s.Dir)
		if tail := readFrom(s.LogPath, 0); tail != "" {
			lines := strings.Split(strings.TrimRight(tail, "\n"), "\n")
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("pgtest: tail of %s:\n%s", s.LogPath, strings.Join(lines, "\n"))
		}
		return
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		t.Logf("pgtest: remove %s: %v", s.Dir, err)
	}
}

// readFrom returns the content of file from offset on, at most 8 KiB
// (the end).
func readFrom(name string, offset int64) string {
	b, err := os.ReadFile(name)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	b = b[offset:]
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(bytes.TrimSpace(b))
}

// othersCanEnter reports whether every directory from / down to dir is
// searchable by other users.
func othersCanEnter(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		st, err := os.Stat(dir)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
