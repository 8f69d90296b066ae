package bolt

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/storetest"
)

// crashEnv names the store directory when the test binary runs as the
// crash test's child (TestMain then runs crashChild instead of the tests).
const crashEnv = "PECGATE_BOLT_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestConformance(t *testing.T) {
	storetest.Run(t,
		func(t *testing.T) store.Store {
			db, err := Open(filepath.Join(t.TempDir(), "store"))
			if err != nil {
				t.Fatal(err)
			}
			return db
		},
		func(t *testing.T, closed store.Store) store.Store {
			db, err := Open(filepath.Dir(closed.(*DB).Path()))
			if err != nil {
				t.Fatal(err)
			}
			return db
		})
}

func TestOpenCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "pecgate")
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("store directory mode %v, want 0700", perm)
	}
	fi, err = os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("store file mode %v, readable by others", perm)
	}
	if db.db.NoSync {
		t.Error("NoSync is set: commits would not be durable (invariant 6)")
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(""); err == nil {
		t.Error("Open(\"\") succeeded")
	}
	// A file where the directory should be.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f); err == nil {
		t.Error("Open on a regular file succeeded")
	}
	// Not a bbolt file.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(strings.Repeat("not a database\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if db, err := Open(dir); err == nil {
		db.Close()
		t.Error("Open on garbage succeeded")
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	start := time.Now()
	db2, err := Open(dir) // flock is per open file: it conflicts within one process too
	took := time.Since(start)
	if err == nil {
		db2.Close()
		t.Fatal("second Open on the same directory succeeded")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "store locked by another pecgate process?") {
		t.Errorf("second Open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, FileName)) {
		t.Errorf("second Open's error %q does not name the file", err)
	}
	if took > OpenTimeout+2*time.Second {
		t.Errorf("second Open took %v, want about %v", took, OpenTimeout)
	}

	// Once the first is closed, the directory opens again.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db3, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	db3.Close()
}

// TestSecondOpenOtherProcess is TestSecondOpenFailsFast across processes,
// as two gateways would be: the child holds the store open.
func TestSecondOpenOtherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	child, lines := startCrashChild(t, dir)
	defer func() {
		_ = child.Process.Kill()
		time.Sleep(10 * time.Millisecond) // let the reader see EOF
		_ = child.Wait()
	}()
	if _, ok := <-lines; !ok {
		t.Fatal("child exited before its first commit")
	}
	go func() {
		for range lines {
		}
	}()
	_, err := Open(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Open while another process has the store: %v, want ErrLocked", err)
	}
}

// Crash test layout: bucket "c" holds "a" and "b", both the counter, and
// bucket "log" one entry per counter value, so a commit touches several
// pages. Bucket "log" entries are 0..2 KiB of bytes derived from the
// value, with their SHA-256 in bucket "sum".

func logValue(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 0x9ec))
	b := make([]byte, r.IntN(2048))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func logKey(n int) string { return fmt.Sprintf("%08d", n) }

// crashChild commits counter increments forever, printing each committed
// value on stdout, until it is killed.
func crashChild(dir string) {
	db, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	for {
		var n int
		err := db.Update(ctx, func(tx store.Tx) error {
			a, err := tx.Get("c", "a")
			if err != nil {
				return err
			}
			if a != nil {
				if n, err = strconv.Atoi(string(a)); err != nil {
					return err
				}
			}
			n++
			v := []byte(strconv.Itoa(n))
			if err := tx.Put("c", "a", v); err != nil {
				return err
			}
			lv := logValue(n)
			if err := tx.Put("log", logKey(n), lv); err != nil {
				return err
			}
			sum := sha256.Sum256(lv)
			if err := tx.Put("sum", logKey(n), []byte(hex.EncodeToString(sum[:]))); err != nil {
				return err
			}
			// Every 7th commit also drops an old entry, so pages are freed
			// and reused under the crash too.
			if n%7 == 0 && n > 50 {
				if err := tx.Delete("log", logKey(n-50)); err != nil {
					return err
				}
				if err := tx.Delete("sum", logKey(n-50)); err != nil {
					return err
				}
			}
			return tx.Put("c", "b", v)
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		fmt.Printf("committed %d\n", n) // os.Stdout is unbuffered
	}
}

// startCrashChild re-executes the test binary as a crash child on dir and
// returns it with a channel of the values it reports committed, closed
// when its stdout ends.
func startCrashChild(t *testing.T, dir string) (*exec.Cmd, <-chan int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan int, 1<<16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "committed "); ok {
				if n, err := strconv.Atoi(s); err == nil {
					lines <- n
				}
			}
		}
	}()
	return cmd, lines
}

// TestCrash kills a committing child with SIGKILL at random moments and
// checks after every reopen that each commit is whole (the two keys of one
// transaction agree, every log entry up to the counter is there with its
// checksum) and that nothing reported committed was lost.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	const rounds = 5
	dir := t.TempDir()
	lastReported := 0
	for round := range rounds {
		child, lines := startCrashChild(t, dir)
		// Let it commit for a while (at least one commit), then kill it.
		first := true
		deadline := time.After(time.Duration(20+rand.IntN(300)) * time.Millisecond)
	wait:
		for {
			select {
			case n, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: child exited early: %v", round, child.Wait())
				}
				lastReported = max(lastReported, n)
				first = false
			case <-deadline:
				if !first {
					break wait
				}
				deadline = time.After(10 * time.Millisecond)
			}
		}
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for n := range lines { // lines printed before the kill; ends at EOF
			lastReported = max(lastReported, n)
		}
		_ = child.Wait() // only after stdout is drained

		n := checkCrashState(t, dir, round)
		if n < lastReported {
			t.Fatalf("round %d: counter %d after reopen, but the child reported %d committed", round, n, lastReported)
		}
		// At most the one commit that was fsynced but not yet printed.
		if n > lastReported+1 {
			t.Fatalf("round %d: counter %d after reopen, child reported only %d", round, n, lastReported)
		}
		t.Logf("round %d: killed after %d commits", round, n)
		lastReported = n
	}
}

// checkCrashState opens dir and checks it; it returns the counter.
func checkCrashState(t *testing.T, dir string, round int) int {
	t.Helper()
	db, err := Open(dir)
	if err != nil {
		t.Fatalf("round %d: reopen: %v", round, err)
	}
	defer db.Close()
	n := 0
	err = db.View(context.Background(), func(tx store.Tx) error {
		a, err := tx.Get("c", "a")
		if err != nil {
			return err
		}
		b, err := tx.Get("c", "b")
		if err != nil {
			return err
		}
		if string(a) != string(b) {
			return fmt.Errorf("torn commit: a=%q b=%q", a, b)
		}
		if a == nil {
			return nil
		}
		if n, err = strconv.Atoi(string(a)); err != nil {
			return err
		}
		count := 0
		err = tx.ForEach("log", "", func(k string, v []byte) error {
			i, err := strconv.Atoi(k)
			if err != nil || i < 1 || i > n {
				return fmt.Errorf("log entry %q beyond counter %d", k, n)
			}
			sum, err := tx.Get("sum", k)
			if err != nil {
				return err
			}
			got := sha256.Sum256(v)
			if string(sum) != hex.EncodeToString(got[:]) {
				return fmt.Errorf("log entry %q: checksum mismatch", k)
			}
			if want := logValue(i); string(v) != string(want) {
				return fmt.Errorf("log entry %q: %d bytes, not the ones written", k, len(v))
			}
			count++
			return nil
		})
		if err != nil {
			return err
		}
		// Entries 1..n exist except the ones dropped: n-50 at every n
		// that is a multiple of 7 above 50.
		want := n
		for i := 51; i <= n; i++ {
			if i%7 == 0 {
				want--
			}
		}
		if count != want {
			return fmt.Errorf("%d log entries for counter %d, want %d", count, n, want)
		}
		sums := 0
		if err := tx.ForEach("sum", "", func(string, []byte) error { sums++; return nil }); err != nil {
			return err
		}
		if sums != count {
			return fmt.Errorf("%d checksums for %d log entries", sums, count)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	return n
}
