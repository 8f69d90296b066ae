package main

// The status page in a real browser: Debian's chromium, headless, driven
// over the Chrome DevTools Protocol (chromedp), against `pecgate serve`
// fronting real Dovecot old and new in the middle of a migration.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
)

// e2eBrowserTimeout bounds everything the browser does in one test; it
// only keeps a wedged browser from hanging the test.
const e2eBrowserTimeout = 3 * time.Minute

// requireChromium returns the chromium binary: it fails the test when
// CI=true and there is none, and skips it otherwise.
func requireChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found and CI=true: the status page test needs it (apt-get install chromium)")
	}
	t.Skip("chromium not found: apt-get install chromium")
	return ""
}

// artifactDir is where the test's screenshots go: $PECGATE_ARTIFACTS when
// set, else a temporary directory that is kept.
func artifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("PECGATE_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	d, err := os.MkdirTemp("", "pecgate-artifacts-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// newBrowser starts a headless chromium with a fresh profile; it is
// stopped when the test ends.
func newBrowser(t *testing.T, bin string) context.Context {
	t.Helper()
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// Without these Chromium floods the closed network with requests
		// for updates, sync, field trials and QUIC probes.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1366, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, e2eBrowserTimeout)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc() // kills the browser and waits for it
	})
	return ctx
}

// pageDomainNumbers is what the status page shows of a domain, read from
// the data attributes it renders next to the visible text.
type pageDomainNumbers struct {
	State         string         `json:"state"`
	MessagesDone  int64          `json:"messages_done"`
	MessagesTotal int64          `json:"messages_total"`
	BytesDone     int64          `json:"bytes_done"`
	BytesTotal    int64          `json:"bytes_total"`
	MembersTotal  int            `json:"members_total"`
	Members       map[string]int `json:"members"`
	ProblemUsers  []string       `json:"problem_users"`
	ProblemTitles []string       `json:"problem_titles"`
	MessagesText  string         `json:"messages_text"`
	ChartBars     int            `json:"chart_bars"`
}

const readDomainJS = `(() => {
  const s = document.querySelector('section.domain[data-domain=%q]');
  if (!s) return null;
  const attr = (sel, a) => { const e = s.querySelector(sel); return e ? e.getAttribute(a) : null; };
  const members = {};
  s.querySelectorAll('[data-phase]').forEach(li => { members[li.dataset.phase] = parseInt(li.dataset.count, 10); });
  return {
    state: s.dataset.state,
    messages_done: parseInt(attr('[data-field=messages]', 'data-done'), 10),
    messages_total: parseInt(attr('[data-field=messages]', 'data-total'), 10),
    bytes_done: parseInt(attr('[data-field=bytes]', 'data-done'), 10),
    bytes_total: parseInt(attr('[data-field=bytes]', 'data-total'), 10),
    members_total: parseInt(attr('[data-field=members]', 'data-total'), 10),
    members: members,
    problem_users: Array.from(s.querySelectorAll('tr[data-user]')).map(r => r.dataset.user),
    problem_titles: Array.from(s.querySelectorAll('tr[data-user] .pill')).map(p => p.textContent.trim()),
    messages_text: (s.querySelector('[data-field=messages] .value') || {}).innerText || '',
    chart_bars: s.querySelectorAll('svg.chart rect.bar').length,
  };
})()`

// adminGet does an authorised GET on the admin API and decodes the answer.
func (s *bfSetup) adminGet(t *testing.T, path string, out any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+s.adminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func (s *bfSetup) apiDomain(t *testing.T, name string) admin.Domain {
	t.Helper()
	var list admin.DomainList
	s.adminGet(t, "/api/v1/domains", &list)
	i := slices.IndexFunc(list.Domains, func(d admin.Domain) bool { return d.Name == name })
	if i < 0 {
		t.Fatalf("GET /api/v1/domains has no %s: %+v", name, list)
	}
	return list.Domains[i]
}

// TestStatusPageBrowser runs the status page in headless chromium against
// a gateway in the middle of a migration: one member copied, one stopped
// by new's quota. It logs in with the token, compares the page's numbers
// with GET /api/v1/domains, opens the flip control, checks the number of
// messages it says would be left behind, confirms, and checks the API
// shows the new state. Screenshots are saved as artifacts.
func TestStatusPageBrowser(t *testing.T) {
	dovetest.Require(t)
	chromium := requireChromium(t)
	bin := buildPecgate(t)
	small, large := bfFixtures(t)
	const (
		domain = "example.org"
		copied = "mario.rossi@example.org" // fits in new's quota
		quota  = 1 << 20
	)
	stopped := e2eUser // does not fit

	users := []dovetest.User{{Address: stopped}, {Address: copied}}
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: users})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: users, QuotaBytes: quota})
	seed := func(user string, n int, withLarge bool) {
		var seeds []dovetest.SeedMessage
		for i := range n {
			f := small[i%len(small)]
			m := f.SeedMessage(old, f.Variant(i))
			m.Mailbox = bfInbox
			m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
			seeds = append(seeds, m)
		}
		if withLarge {
			big := large[0].SeedMessage(old, large[0].Variant(n))
			big.Mailbox = bfInbox
			seeds = append(seeds, big)
		}
		old.SeedMaildir(t, user, seeds)
	}
	seed(stopped, 40, true) // a 3 MB PEC envelope: over the 1 MiB quota
	seed(copied, 12, false)

	s := newBFSetup(t, old, nw, "")
	startServe(t, bin, s.e2eSetup)
	for _, u := range users {
		c := s.login(t, u.Address, old.Password(u.Address)) // the gateway learns the password (passthrough)
		c.Logout().Wait()
	}
	bfWaitProgress(t, s, copied, bfQuotaTimeout, "its copy done", func(p *store.Progress) bool { return p.State == "done" })
	bfWaitProgress(t, s, stopped, bfQuotaTimeout, "a quota stop", func(p *store.Progress) bool { return p.State == "quota" })

	api := s.apiDomain(t, domain)
	if api.State != "migrating" || api.Progress == nil {
		t.Fatalf("API before the test: %+v", api)
	}
	ap := api.Progress
	left := ap.MessagesTotal - ap.MessagesDone
	if left <= 0 || ap.MessagesDone == 0 {
		t.Fatalf("API progress %+v: want a migration half-way (some copied, some left)", ap)
	}
	t.Logf("API: %s %s, members %v, %d/%d messages, %d/%d bytes", domain, api.State, ap.Members, ap.MessagesDone, ap.MessagesTotal, ap.BytesDone, ap.BytesTotal)

	artifacts := artifactDir(t)
	ctx := newBrowser(t, chromium)
	screenshot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		path := filepath.Join(artifacts, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", path)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, html)
		}
	}
	base := "http://" + s.adminAddr

	// Without a session the page asks for the token and shows nothing else.
	do("open the page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(body, stopped) || strings.Contains(body, domain) {
		t.Errorf("the login form shows members or domains:\n%s", body)
	}
	do("log in",
		chromedp.SendKeys(chromedp.CSS("#token"), s.token),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS(`section.domain[data-domain="`+domain+`"]`)),
	)

	got, err := chromedp.Run(ctx, chromedp.Evaluate[*pageDomainNumbers](fmt.Sprintf(readDomainJS, domain)))
	if err != nil || got == nil {
		t.Fatalf("read the page's numbers: %v (%v)", err, got)
	}
	t.Logf("page: %+v", *got)
	if got.State != api.State || got.MessagesDone != ap.MessagesDone || got.MessagesTotal != ap.MessagesTotal ||
		got.BytesDone != ap.BytesDone || got.BytesTotal != ap.BytesTotal || got.MembersTotal != ap.MembersTotal {
		t.Errorf("the page shows %+v; the API says state %s, %d/%d messages, %d/%d bytes, %d members",
			*got, api.State, ap.MessagesDone, ap.MessagesTotal, ap.BytesDone, ap.BytesTotal, ap.MembersTotal)
	}
	for ph, n := range ap.Members {
		if got.Members[ph] != n {
			t.Errorf("members %s: page %d, API %d", ph, got.Members[ph], n)
		}
	}
	if want := fmt.Sprintf("%d", ap.MessagesDone); !strings.Contains(strings.ReplaceAll(got.MessagesText, ",", ""), want) {
		t.Errorf("the visible messages figure %q does not read %s", got.MessagesText, want)
	}
	if !slices.Contains(got.ProblemUsers, stopped) || !slices.Contains(got.ProblemTitles, "New mailbox full") {
		t.Errorf("problems %v %v: want %s with \"New mailbox full\"", got.ProblemUsers, got.ProblemTitles, stopped)
	}
	if slices.Contains(got.ProblemUsers, copied) {
		t.Errorf("problems list %s, whose copy is done", copied)
	}
	if got.ChartBars == 0 {
		t.Error("the chart has no bar: the history sampler is not wired, or the page does not draw it")
	}
	screenshot("status-page.png")

	// The flip control: first the preview, with what would be left behind.
	var preview admin.FlipPreview
	s.adminGet(t, "/api/v1/domains/"+domain+"/preview?state=new", &preview)
	if preview.Allowed || !preview.Forceable || int64(preview.Uncopied) != left {
		t.Fatalf("API preview %+v: want refused but forceable, %d uncopied (messages_total - messages_done)", preview, left)
	}
	do("open the flip preview",
		chromedp.Click(chromedp.CSS(`section.domain[data-domain="`+domain+`"] button[data-flip="new"]`)),
		chromedp.WaitVisible(chromedp.CSS("#preview")),
	)
	attrs, err := chromedp.Run(ctx, chromedp.Attributes(chromedp.CSS("#preview")))
	if err != nil {
		t.Fatal(err)
	}
	if attrs["data-uncopied"] != fmt.Sprint(left) || attrs["data-to"] != "new" || attrs["data-from"] != "migrating" {
		t.Errorf("preview %v: want migrating -> new with %d uncopied", attrs, left)
	}
	leftText, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#left-behind")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(leftText, fmt.Sprintf("%d messages not yet copied", left)) {
		t.Errorf("the preview says %q; want the %d messages left behind", leftText, left)
	}
	disabled, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("confirm-button").disabled`))
	if err != nil || !disabled {
		t.Errorf("the forced flip's button is enabled before the domain is typed (%v)", err)
	}
	do("type the domain", chromedp.SendKeys(chromedp.CSS("#confirm"), domain))
	screenshot("flip-preview.png")
	if d := s.apiDomain(t, domain); d.State != "migrating" {
		t.Fatalf("state %s after the preview alone; want migrating", d.State)
	}

	do("confirm the flip",
		chromedp.Click(chromedp.CSS("#confirm-button")),
		chromedp.WaitVisible(chromedp.CSS("#changed")),
	)
	if d := s.apiDomain(t, domain); d.State != "new" {
		t.Fatalf("API state %s after the confirmed flip; want new", d.State)
	}
	state, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(`section.domain[data-domain="`+domain+`"]`), "data-state"))
	if err != nil {
		t.Fatal(err)
	}
	if state.Value != "new" {
		t.Errorf("the page shows state %q after the flip; want new", state.Value)
	}
	screenshot("status-page-flipped.png")

	// The page follows a change made elsewhere (pecgate route, the API)
	// without a reload: its script refreshes it in place.
	req, err := http.NewRequest(http.MethodPut, base+"/api/v1/domains/"+domain, strings.NewReader(`{"state":"migrating"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s migrating: %s", domain, resp.Status)
	}
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](
		`document.querySelector('section.domain[data-domain="`+domain+`"]').dataset.state === "migrating"`,
		chromedp.WithPollingTimeout(time.Minute)))
	if err != nil {
		t.Errorf("the page did not refresh itself to state migrating within a minute: %v", err)
	}
	u, _ := url.Parse(base)
	t.Logf("admin at %s; screenshots in %s", u.Host, artifacts)
}

// TestStatusPageTwoFactor checks, against real Dovecot, that a member whose
// new provider refuses pecgate's master login, on a provider known to want
// app passwords with two-factor login (app_passwords, as the aruba preset
// sets), is listed on the status page as "two-factor / app password
// suspected", with what to do. The member logs in while the domain is in
// state old (old is passthrough: the gateway learns the password), the
// domain then goes to migrating, and new, which has no such account,
// refuses the master login of the back-fill.
func TestStatusPageTwoFactor(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	const domain = "example.org"
	member := e2eUser
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: member}}})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: "someone.else@example.org"}}})
	s := newBFSetup(t, old, nw, "app_passwords = true\n")
	data, err := os.ReadFile(s.configPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(data), "state = \"migrating\"\n") != 1 {
		t.Fatalf("the configuration's domain state is not where this test expects it:\n%s", data)
	}
	if err := os.WriteFile(s.configPath, []byte(strings.Replace(string(data), "state = \"migrating\"\n", "state = \"old\"\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	startServe(t, bin, s.e2eSetup)
	c := s.login(t, member, old.Password(member))
	c.Logout().Wait()

	req, err := http.NewRequest(http.MethodPut, "http://"+s.adminAddr+"/api/v1/domains/"+domain, strings.NewReader(`{"state":"migrating"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s migrating: %s", domain, resp.Status)
	}
	p := bfWaitProgress(t, s, member, bfQuotaTimeout, "a refused login", func(p *store.Progress) bool {
		return slices.ContainsFunc(p.Errors, func(e store.ProgressError) bool { return e.Kind == "auth" })
	})
	t.Logf("progress: %s, errors %+v", p.State, p.Errors)

	// The page, read with the bearer token as a script would.
	req, err = http.NewRequest(http.MethodGet, "http://"+s.adminAddr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %s %v", resp.Status, err)
	}
	i := strings.Index(string(page), `data-user="`+member+`"`)
	if i < 0 {
		t.Fatalf("the page does not list %s among the problems:\n%s", member, page)
	}
	row := string(page[i:])
	row = row[:strings.Index(row, "</tr>")]
	for _, want := range []string{"Two-factor / app password suspected", "create one in the provider&#39;s webmail", "rule out the master login", "new master login: "} {
		if !strings.Contains(row, want) {
			t.Errorf("the row of %s lacks %q:\n%s", member, want, row)
		}
	}
}
