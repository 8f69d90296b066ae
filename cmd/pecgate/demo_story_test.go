package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/demo"
)

var (
	demoRouteRE = regexp.MustCompile(`pecgate route -config (\S+) -y `)
	demoTokenRE = regexp.MustCompile(`^ {7}([0-9a-f]{64})$`)
)

// TestDemoStory walks the story `pecgate demo` prints, with the commands it
// prints: the phones log their members in, `pecgate route DOMAIN
// migrating` starts the copy, the members with a phone and vault
// credentials end done, the one without credentials shows that problem with
// its hint, the one who never logged in waits, `pecgate route DOMAIN new`
// is refused saying why; a member flipped alone to new reads the same
// UIDs and bytes as before the move.
// demoRun is a `pecgate demo` running for a test, with what its story
// printed: the configuration file and the admin token.
type demoRun struct {
	ctx     context.Context
	cfgFile string
	token   string
	cfg     *config.Config
	client  *admin.Client
}

// startDemoRun runs `pecgate demo -random-ports -log-format json` with
// more flags, reads its report up to the last line and stops it when the
// test ends (printing the report and the logs if the test failed).
func startDemoRun(t *testing.T, flags ...string) *demoRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	stderr := &demoStderr{}
	done := make(chan error, 1)
	go func() {
		err := runDemoContext(ctx, append([]string{"-random-ports", "-log-format", "json"}, flags...), pw, stderr)
		pw.Close()
		done <- err
	}()
	var text strings.Builder
	d := &demoRun{ctx: ctx}
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		text.WriteString(line + "\n")
		if m := demoRouteRE.FindStringSubmatch(line); m != nil {
			d.cfgFile = m[1]
		}
		if m := demoTokenRE.FindStringSubmatch(line); m != nil {
			d.token = m[1]
		}
		if strings.HasPrefix(line, "normal password;") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
		if t.Failed() {
			t.Logf("demo output:\n%s\ndemo logs:\n%s", text.String(), stderr.String())
		}
	})
	if d.cfgFile == "" || d.token == "" {
		t.Fatalf("the story lacks the config file or the token:\n%s", text.String())
	}
	var err error
	if d.cfg, err = config.Load(d.cfgFile); err != nil {
		t.Fatalf("the printed config: %v", err)
	}
	if d.client, err = admin.NewClient(config.Addr(d.cfg.Server.Admin), d.token); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDemoStory(t *testing.T) {
	d0 := startDemoRun(t, "-copy-rate", "0")
	ctx, cfgFile, cfg, client := d0.ctx, d0.cfgFile, d0.cfg, d0.client

	// What giulia reads through the gateway in state old.
	certPEM, err := os.ReadFile(filepath.Join(filepath.Dir(cfgFile), demo.GatewayCertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	giulia := demo.Users[0]
	read := func() map[string]string {
		c, err := imapclient.DialTLS(config.Addr(cfg.Server.IMAPS), &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(giulia.Address, giulia.OldPassword).Wait(); err != nil {
			t.Fatal(err)
		}
		sums := map[string]string{}
		for _, folder := range []string{"INBOX", demo.ArchiveFolder} {
			for uid, body := range demoFetchBodies(t, c, folder) {
				sums[fmt.Sprintf("%s/%d", folder, uid)] = demoSHA256(body)
			}
		}
		return sums
	}
	before := read()
	if len(before) < demo.ArchiveSize {
		t.Fatalf("giulia reads %d messages before the move", len(before))
	}

	// Step 2: start the move with the printed command.
	runCLI := func(args ...string) (int, string) {
		var out, errOut strings.Builder
		code := run(args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	if code, out := runCLI("route", "-config", cfgFile, "-y", demo.Domain, "migrating"); code != 0 {
		t.Fatalf("route migrating: exit %d: %s", code, out)
	}

	// The members with a phone and credentials end done; anna (no vault
	// credentials) shows that problem; sara (no login) waits.
	want := map[string]string{}
	for _, u := range demo.Users {
		switch {
		case u.NoVault:
			want[u.Address] = admin.PhaseFailed
		case u.Phone:
			want[u.Address] = admin.PhaseDone
		}
	}
	var d *admin.Domain
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if d, err = client.Domain(ctx, demo.Domain); err != nil {
			t.Fatal(err)
		}
		phases := map[string]string{}
		if d.Progress != nil {
			for _, p := range d.Progress.Problems {
				phases[p.User] = p.Phase
			}
		}
		ok := true
		for user, phase := range want {
			if phase == admin.PhaseDone {
				u, err := client.User(ctx, user)
				if err != nil {
					t.Fatal(err)
				}
				p, _ := u.ProgressDoc()
				if p == nil || p.State != admin.PhaseDone {
					ok = false
				}
			} else if phases[user] != phase {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the copy did not settle as the story says: %+v", d.Progress)
		}
		time.Sleep(200 * time.Millisecond) // polling the API, not synchronising
	}
	var anna *admin.MemberProblem
	for i, p := range d.Progress.Problems {
		if p.User == demo.Users[2].Address {
			anna = &d.Progress.Problems[i]
		}
	}
	if anna == nil || len(anna.Kinds) == 0 || anna.Kinds[0].Kind != "no-credential" || !strings.Contains(anna.Kinds[0].Hint, "/me") {
		t.Errorf("anna's problem: %+v, want no-credential with a hint to the member page", anna)
	}

	// Step 5: the flip to new is refused while mail is left behind.
	code, out := runCLI("route", "-config", cfgFile, "-y", demo.Domain, "new")
	t.Logf("route new: exit %d: %s", code, out)
	if code == 0 || !strings.Contains(out, "counted") || !strings.Contains(out, "sara.russo@") {
		t.Errorf("route new: exit %d: %s; want a refusal naming the uncounted member", code, out)
	}
	if d, err = client.Domain(ctx, demo.Domain); err != nil || d.State != config.StateMigrating {
		t.Fatalf("after the refusal: %+v %v", d, err)
	}

	// giulia, copied, flipped alone to new: the same UIDs and bytes.
	if code, out := runCLI("route", "-config", cfgFile, "-y", giulia.Address, "new"); code != 0 {
		t.Fatalf("route %s new: exit %d: %s", giulia.Address, code, out)
	}
	after := read()
	if len(after) != len(before) {
		t.Errorf("giulia reads %d messages in new, %d before", len(after), len(before))
	}
	for k, sum := range before {
		if after[k] != sum {
			t.Errorf("%s: SHA-256 %s in new, %s before", k, after[k], sum)
		}
	}
}
