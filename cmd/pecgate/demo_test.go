package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgate/pecgate/internal/demo"
)

// demoOutput is what `pecgate demo` printed, parsed.
type demoOutput struct {
	text      string
	certFile  string
	tempDir   string
	addrs     map[string]string // listener -> localhost:PORT
	passwords map[string]string // address -> password
}

var (
	demoCertRE     = regexp.MustCompile(`clients must trust its certificate (\S+)\):`)
	demoTempDirRE  = regexp.MustCompile(`and deletes (\S+)\.$`)
	demoListenerRE = regexp.MustCompile(`^  (imaps|imap|smtps|submission) +(\S+) `)
	demoUserRE     = regexp.MustCompile(`^  (\S+@` + regexp.QuoteMeta(demo.Domain) + `) +(\S+)$`)
)

// readDemoOutput reads the demo's report up to its last line ("normal
// password; ..."), or fails when the output ends first.
func readDemoOutput(t *testing.T, r io.Reader) *demoOutput {
	t.Helper()
	out := &demoOutput{addrs: map[string]string{}, passwords: map[string]string{}}
	sc := bufio.NewScanner(r)
	var text strings.Builder
	for sc.Scan() {
		line := sc.Text()
		text.WriteString(line + "\n")
		if m := demoCertRE.FindStringSubmatch(line); m != nil {
			out.certFile = m[1]
		}
		if m := demoTempDirRE.FindStringSubmatch(line); m != nil {
			out.tempDir = m[1]
		}
		if m := demoListenerRE.FindStringSubmatch(line); m != nil {
			out.addrs[m[1]] = m[2]
		}
		if m := demoUserRE.FindStringSubmatch(line); m != nil {
			out.passwords[m[1]] = m[2]
		}
		if strings.HasPrefix(line, "normal password;") {
			out.text = text.String()
			return out
		}
	}
	t.Fatalf("demo output ended early (%v):\n%s", sc.Err(), text.String())
	return nil
}

// demoStderr collects the demo's logs for failure messages.
type demoStderr struct {
	mu gosync.Mutex
	b  bytes.Buffer
}

func (w *demoStderr) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *demoStderr) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestDemoThroughGateway runs `pecgate demo -random-ports`, reads the
// printed addresses, certificate and passwords, and reads every seeded
// message of every user through the gateway: same UIDs as the old provider,
// same SHA-256 as the fixture manifest. Then a message submitted through the
// gateway arrives byte-identical, and the demo stops and cleans up when its
// context ends.
func TestDemoThroughGateway(t *testing.T) {
	fixtures, err := demo.Fixtures()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	stderr := &demoStderr{}
	done := make(chan error, 1)
	go func() {
		err := runDemoContext(ctx, []string{"-random-ports"}, pw, stderr)
		pw.Close()
		done <- err
	}()
	out := readDemoOutput(t, pr)
	go io.Copy(io.Discard, pr)
	defer func() {
		if t.Failed() {
			t.Logf("demo output:\n%s\ndemo logs:\n%s", out.text, stderr.String())
		}
	}()

	for _, name := range []string{"imaps", "imap", "smtps", "submission"} {
		if !strings.HasPrefix(out.addrs[name], "localhost:") {
			t.Fatalf("listener %s: %q", name, out.addrs[name])
		}
	}
	if len(out.passwords) != len(demo.Users) {
		t.Fatalf("passwords printed: %v", out.passwords)
	}
	for _, u := range demo.Users {
		if out.passwords[u.Address] != u.OldPassword {
			t.Fatalf("printed password of %s: %q, want the old provider's", u.Address, out.passwords[u.Address])
		}
	}
	certPEM, err := os.ReadFile(out.certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatalf("no certificate in %s", out.certFile)
	}
	tlsConfig := &tls.Config{RootCAs: pool, ServerName: "localhost"}

	byFolder := map[string][]demo.Fixture{}
	var folders []string
	for _, f := range fixtures {
		if byFolder[f.Folder] == nil {
			folders = append(folders, f.Folder)
		}
		byFolder[f.Folder] = append(byFolder[f.Folder], f)
	}

	login := func(t *testing.T, user string) *imapclient.Client {
		t.Helper()
		c, err := imapclient.DialTLS(out.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConfig})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Login(user, out.passwords[user]).Wait(); err != nil {
			t.Fatalf("login %s: %v", user, err)
		}
		return c
	}

	t.Run("every fixture through the gateway", func(t *testing.T) {
		for _, u := range demo.Users {
			c := login(t, u.Address)
			for _, folder := range folders {
				bodies := demoFetchBodies(t, c, folder)
				want := byFolder[folder]
				if len(bodies) != len(want) {
					t.Errorf("%s %q: %d messages, want %d", u.Address, folder, len(bodies), len(want))
					continue
				}
				for i, f := range want {
					uid := imap.UID(i + 1)
					if sum := demoSHA256(bodies[uid]); sum != f.SHA256 {
						t.Errorf("%s %q UID %d: SHA-256 %s (%d bytes), want %s (%s)", u.Address, folder, uid, sum, len(bodies[uid]), f.SHA256, f.File)
					}
				}
			}
			if err := c.Logout().Wait(); err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		c, err := imapclient.DialTLS(out.addrs["imaps"], &imapclient.Options{TLSConfig: tlsConfig})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		u := demo.Users[0]
		if err := c.Login(u.Address, u.NewPassword).Wait(); err == nil {
			t.Error("the gateway accepted the new provider's password in state old")
		}
	})

	t.Run("STARTTLS listeners", func(t *testing.T) {
		u := demo.Users[2]
		c, err := imapclient.DialStartTLS(out.addrs["imap"], &imapclient.Options{TLSConfig: tlsConfig})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(u.Address, out.passwords[u.Address]).Wait(); err != nil {
			t.Fatal(err)
		}
		sc, err := smtp.DialStartTLS(out.addrs["submission"], tlsConfig)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if err := sc.Auth(sasl.NewPlainClient("", u.Address, out.passwords[u.Address])); err != nil {
			t.Fatalf("submission AUTH: %v", err)
		}
	})

	// The commands the demo prints, run as printed (but for openssl, which
	// is interactive).
	t.Run("printed curl commands", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("curl not installed (make deps installs it)")
			}
			t.Skip("curl not installed: apt-get install curl")
		}
		if _, err := exec.LookPath("sha256sum"); err != nil {
			t.Skip("sha256sum not installed")
		}
		var cmds []string
		for _, line := range strings.Split(out.text, "\n") {
			if strings.HasPrefix(line, "  curl ") {
				cmds = append(cmds, strings.TrimSpace(line))
			}
		}
		// What each printed command must print, in order.
		f01 := byFolder["INBOX"][0]
		big := byFolder["Pratiche/Città"][len(byFolder["Pratiche/Città"])-1]
		sample, err := os.ReadFile(filepath.Join(filepath.Dir(out.certFile), demo.SampleMessageFile))
		if err != nil {
			t.Fatal(err)
		}
		checks := []func([]byte) bool{
			func(b []byte) bool { return bytes.Contains(b, []byte(`"Pratiche/Citt&AOA-"`)) }, // LIST
			func(b []byte) bool { return bytes.Contains(b, []byte("* 10 FETCH (UID 10 FLAGS (")) },
			func(b []byte) bool { return demoSHA256(b) == f01.SHA256 },
			func(b []byte) bool { return strings.HasPrefix(string(b), big.SHA256+" ") }, // | sha256sum
			func(b []byte) bool { return len(b) == 0 },                                  // submission
			func(b []byte) bool { return bytes.Equal(b, sample) },                       // read as mario
		}
		if len(cmds) != len(checks) {
			t.Fatalf("%d curl commands printed, want %d:\n%s", len(cmds), len(checks), strings.Join(cmds, "\n"))
		}
		for i, cmd := range cmds {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd = "curl --silent --show-error " + strings.TrimPrefix(cmd, "curl ")
			b, err := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", cmd).Output()
			cancel()
			if err != nil || !checks[i](b) {
				var stderr []byte
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					stderr = ee.Stderr
				}
				t.Errorf("%s\n  err %v, stderr %s\n  output (%d bytes): %.300q", cmd, err, stderr, len(b), b)
			}
		}
	})

	t.Run("submission arrives byte for byte", func(t *testing.T) {
		from, to := demo.Users[0], demo.Users[1]
		msg := demo.SampleMessage(time.Now())
		st, err := login(t, to.Address).Status("INBOX", &imap.StatusOptions{UIDNext: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		uidNext := st.UIDNext
		sc, err := smtp.DialTLS(out.addrs["smtps"], tlsConfig)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		if err := sc.Auth(sasl.NewPlainClient("", from.Address, out.passwords[from.Address])); err != nil {
			t.Fatal(err)
		}
		if err := sc.SendMail(from.Address, []string{to.Address}, bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		if err := sc.Quit(); err != nil {
			t.Fatal(err)
		}
		// Delivery is complete when the provider answers DATA, before the
		// gateway relays that answer: no waiting needed.
		bodies := demoFetchBodies(t, login(t, to.Address), "INBOX")
		if !bytes.Equal(bodies[uidNext], msg) {
			t.Errorf("INBOX UID %d of %s: %q, want the %d bytes sent", uidNext, to.Address, bodies[uidNext], len(msg))
		}
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo: %v", err)
		}
	case <-time.After(30 * time.Second): // a failure bound, not synchronisation
		t.Fatal("demo did not stop within 30s of its context ending")
	}
	if _, err := os.Stat(out.tempDir); out.tempDir == "" || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %q: %v, want it removed", out.tempDir, err)
	}
}

// demoFetchBodies selects mailbox and returns BODY.PEEK[] of every message
// by UID.
func demoFetchBodies(t *testing.T, c *imapclient.Client, mailbox string) map[imap.UID][]byte {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatalf("select %q: %v", mailbox, err)
	}
	bodies := map[imap.UID][]byte{}
	if sel.NumMessages == 0 {
		return bodies
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{section},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch %q: %v", mailbox, err)
	}
	for _, m := range msgs {
		bodies[m.UID] = m.FindBodySection(section)
	}
	return bodies
}

func demoSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
