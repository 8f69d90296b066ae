package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/demo"
)

// updateDocsEnv, set to 1, makes TestDemoBrowser copy its screenshots into
// docs/ (the README shows docs/status.png and docs/member.png).
const updateDocsEnv = "PECGATE_UPDATE_DOCS"

// TestDemoBrowser is the demo's story in a real browser, as the README
// tells it: the operator logs in to the status page mid-migration and
// sees the numbers the API gives and the members with problems; anna,
// whose new-provider credentials are missing, logs in to the member page
// with her own password, sets them, and her copy completes. Screenshots of
// both pages are saved as test artifacts.
func TestDemoBrowser(t *testing.T) {
	chromium := requireChromium(t)
	// 20 messages a second: the page is caught mid-copy.
	d0 := startDemoRun(t, "-copy-rate", "20")
	ctx, cfgFile, token, cfg, client := d0.ctx, d0.cfgFile, d0.token, d0.cfg, d0.client
	var err error
	if code := run([]string{"route", "-config", cfgFile, "-y", demo.Domain, "migrating"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("route migrating: exit %d", code)
	}
	// Mid-copy: some messages in new, some left, a measured rate.
	var d *admin.Domain
	waitDomain := func(what string, ok func(p *admin.DomainProgress) bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if d, err = client.Domain(ctx, demo.Domain); err != nil {
				t.Fatal(err)
			}
			if d.Progress != nil && ok(d.Progress) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", what, d.Progress)
			}
			time.Sleep(200 * time.Millisecond) // polling the API, not synchronising
		}
	}
	// Until anna's turn came and her copy failed for want of credentials
	// (two members copy at a time: copy_connections).
	anna, sara := demo.Users[2], demo.Users[4]
	// While the others copy: some messages in new, some left, a measured
	// rate (the moment the README's screenshot shows).
	waitDomain("anna's and sara's problems while the others copy", func(p *admin.DomainProgress) bool {
		if p.MessagesDone == 0 || p.MessagesDone >= p.MessagesTotal || p.MessagesPerSecond == nil || *p.MessagesPerSecond == 0 {
			return false
		}
		kinds := map[string]string{}
		for _, pr := range p.Problems {
			if len(pr.Kinds) > 0 {
				kinds[pr.User] = pr.Kinds[0].Kind
			}
		}
		return kinds[anna.Address] == "no-credential" && kinds[sara.Address] == "needs-login"
	})

	artifacts := artifactDir(t)
	bctx := newBrowser(t, chromium)
	shots := map[string]string{}
	screenshot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		path := filepath.Join(artifacts, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		shots[name] = path
		t.Logf("screenshot: %s", path)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, steps...); err != nil {
			html, _ := chromedp.Run(bctx, chromedp.OuterHTML(chromedp.CSS("body")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	base := "http://localhost:" + strings.TrimPrefix(config.Addr(cfg.Server.Admin), "127.0.0.1:")
	section := `section.domain[data-domain="` + demo.Domain + `"]`
	do("log in to the status page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS(section)),
	)
	got, err := chromedp.Run(bctx, chromedp.Evaluate[*pageDomainNumbers](fmt.Sprintf(readDomainJS, demo.Domain)))
	if err != nil || got == nil {
		t.Fatalf("read the page's numbers: %v (%v)", err, got)
	}
	if got.State != config.StateMigrating || got.MessagesTotal == 0 || got.MembersTotal != len(demo.Users) {
		t.Errorf("the page shows %+v; want %s, %d members", *got, config.StateMigrating, len(demo.Users))
	}
	for _, u := range []string{anna.Address, sara.Address} {
		if !strings.Contains(strings.Join(got.ProblemUsers, " "), u) {
			t.Errorf("the page's problems %v lack %s", got.ProblemUsers, u)
		}
	}
	screenshot("demo-status.png")

	// anna on the member page: her own password, then the new provider's.
	do("log in to the member page",
		chromedp.Navigate(base+"/me"),
		chromedp.WaitVisible(chromedp.CSS("#login")),
		chromedp.SendKeys(chromedp.CSS("#address"), anna.Address),
		chromedp.SendKeys(chromedp.CSS("#password"), anna.OldPassword),
		chromedp.Submit(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#credential")),
	)
	body, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, anna.Address) || strings.Contains(body, demo.Users[0].Address) {
		t.Errorf("the member page of %s shows someone else, or not her:\n%s", anna.Address, body)
	}
	// What she reads says what to do: enter them below, not "nothing".
	if !strings.Contains(body, "Mancano le credenziali del nuovo gestore") || strings.Contains(body, "Un problema tecnico") {
		t.Errorf("anna's page does not tell her the new provider's credentials are missing:\n%s", body)
	}
	screenshot("demo-member.png")
	do("set the new provider's credentials",
		chromedp.SendKeys(chromedp.CSS("#username"), anna.Address),
		chromedp.SendKeys(chromedp.CSS("#newpassword"), anna.NewPassword),
		chromedp.Submit(chromedp.CSS("#credential")),
		chromedp.WaitVisible(chromedp.CSS("#flash.ok")),
	)
	// Her copy starts at once (Engine.Retry) and ends.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		u, err := client.User(ctx, anna.Address)
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := u.ProgressDoc(); p != nil && p.State == admin.PhaseDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("anna's copy after she set her credentials: %s", u.Progress)
		}
		time.Sleep(200 * time.Millisecond) // polling the API, not synchronising
	}
	do("reload the member page", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("body")))
	// Nothing left to do: the form is folded away.
	do("the credential form folded", chromedp.WaitVisible(chromedp.CSS("#credential-change")), chromedp.WaitNotPresent(chromedp.CSS("#credential-box")))
	screenshot("demo-member-done.png")

	if os.Getenv(updateDocsEnv) == "1" {
		for from, to := range map[string]string{"demo-status.png": "status.png", "demo-member-done.png": "member.png"} {
			b, err := os.ReadFile(shots[from])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("..", "..", "docs", to), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
