package main

// End-to-end test of GET /metrics and of the JSON log (issue 5 items 1
// and 7): the real binary in state migrating in front of two real
// Dovecots, driven as members and Order IT would; /metrics scraped through
// the admin listener with the token and parsed with the Prometheus text
// parser; every counter checked to move by what the test did, and the log
// lines of sessions, the flip and a copy problem checked for their keys.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/internal/dovetest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsTimeout bounds each wait for a counter to reach what the test
// did (the back-fill, a session's end): a stuck gateway, not a speed test.
const metricsTimeout = 2 * time.Minute

// scrape is one parsed GET /metrics.
type scrape map[string]*dto.MetricFamily

// value returns the value of name's series with exactly labels (counter,
// gauge, or a histogram's sample count), and whether it exists.
func (s scrape) value(name string, labels map[string]string) (float64, bool) {
	mf := s[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// sum adds the values of name's series whose labels include match.
func (s scrape) sum(name string, match map[string]string) float64 {
	var total float64
	mf := s[name]
	if mf == nil {
		return 0
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range match {
			if have[k] != v {
				continue next
			}
		}
		total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return total
}

// scrapeMetrics GETs /metrics from the admin listener with the token and
// parses it with the Prometheus text parser.
func (s *bfSetup) scrapeMetrics() (scrape, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+s.adminAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	ctx, cancel := context.WithTimeout(context.Background(), e2eIOTimeout)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s: %s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: not the Prometheus text format: %w", err)
	}
	return scrape(mfs), nil
}

// waitMetrics scrapes until ok holds, failing the test after
// metricsTimeout with what the last scrape said.
func (s *bfSetup) waitMetrics(t *testing.T, what string, ok func(scrape) (bool, string)) scrape {
	t.Helper()
	deadline := time.Now().Add(metricsTimeout)
	for {
		m, err := s.scrapeMetrics()
		var last string
		if err == nil {
			var done bool
			if done, last = ok(m); done {
				return m
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v; last: %s", what, metricsTimeout, last)
		}
		time.Sleep(bfPollEvery)
	}
}

// metricsMessage is a small RFC 5322 message of about size bytes.
func metricsMessage(i, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Ufficio <ufficio@example.org>\r\nTo: %s\r\nSubject: Pratica %d\r\nMessage-ID: <metrics-%d@example.org>\r\nDate: Mon, 2 Nov 2026 10:%02d:00 +0100\r\n\r\n", e2eUser, i, i, i)
	for b.Len() < size {
		fmt.Fprintf(&b, "Riga %d della pratica %d, testo di prova per la copia.\r\n", b.Len(), i)
	}
	return b.Bytes()
}

// TestServeMetricsAndLogs: every metric family of issue 5 item 1 moves by
// what the test does through the gateway's sockets; the JSON log has one
// line per session start and end, per flip and per copy problem, with
// cid, user, domain and provider where they apply.
func TestServeMetricsAndLogs(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: e2eUser}}})
	oldPass := old.Password(e2eUser)

	// Four messages that fit the new provider and one that does not: the
	// back-fill copies four and reports one copy problem.
	const maxSize = 64 << 10
	var seeds []dovetest.SeedMessage
	for i := range 4 {
		seeds = append(seeds, dovetest.SeedMessage{Body: metricsMessage(i, 1500+i*700), Flags: []string{`\Seen`}})
	}
	seeds = append(seeds, dovetest.SeedMessage{Body: metricsMessage(9, 2*maxSize)})
	old.SeedMaildir(t, e2eUser, seeds)
	var wantBytes int64
	for _, m := range seeds[:4] {
		wantBytes += int64(len(m.Body))
	}

	s := newBFSetup(t, old, nw, fmt.Sprintf("max_message_size = %d\n", maxSize))
	// A provider nobody listens on, for an upstream failure.
	down := freeAddrs(t, 2)
	f, err := os.OpenFile(s.configPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n[providers.down]\nimap = \"imaps://%s\"\nsmtp = \"smtps://%s\"\nauth = \"passthrough\"\nconnect_timeout = \"5s\"\n\n[domains.\"down.example\"]\nold = \"down\"\nstate = \"old\"\n", down[0], down[1])
	f.Close()
	p := startServe(t, bin, s.e2eSetup)

	labels := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	var failures []string
	expect := func(m scrape, name string, l map[string]string, want float64, atLeast bool) {
		t.Helper()
		got, ok := m.value(name, l)
		switch {
		case !ok:
			failures = append(failures, fmt.Sprintf("%s%v: no such series", name, l))
		case atLeast && got < want:
			failures = append(failures, fmt.Sprintf("%s%v = %v, want at least %v", name, l, got, want))
		case !atLeast && got != want:
			failures = append(failures, fmt.Sprintf("%s%v = %v, want %v", name, l, got, want))
		}
	}
	report := func(step string) {
		t.Helper()
		for _, f := range failures {
			t.Errorf("%s: %s", step, f)
		}
		failures = nil
	}

	// Before anything: the series known in advance are there, at zero;
	// the Go and process collectors too.
	// startServe's readiness probes opened (and closed) a connection to
	// each listener, at least one per listener: wait until their sessions
	// have started and ended, and count from there. (A probe repeated by
	// startServe may still come late: the counts of sessions started are
	// checked as "at least".)
	m0 := s.waitMetrics(t, "the probes' sessions ended", func(m scrape) (bool, string) {
		open := m.sum("pecgate_sessions", nil)
		imapN, _ := m.value("pecgate_sessions_started_total", labels("protocol", "imap"))
		smtpN, _ := m.value("pecgate_sessions_started_total", labels("protocol", "smtp"))
		return open == 0 && imapN >= 2 && smtpN >= 2, fmt.Sprintf("%v sessions open, %v IMAP and %v SMTP started", open, imapN, smtpN)
	})
	started := func(proto string) float64 {
		v, _ := m0.value("pecgate_sessions_started_total", labels("protocol", proto))
		return v
	}
	for _, st := range []string{"none", "old", "migrating", "new"} {
		expect(m0, "pecgate_sessions", labels("protocol", "imap", "state", st), 0, false)
		expect(m0, "pecgate_sessions", labels("protocol", "smtp", "state", st), 0, false)
	}
	expect(m0, "pecgate_smtp_submissions_total", labels("result", "delivered"), 0, false)
	expect(m0, "pecgate_auth_failures_total", labels("protocol", "imap", "reason", "bad_password"), 0, false)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if m0[name] == nil {
			t.Errorf("/metrics lacks %s (Go and process collectors)", name)
		}
	}
	report("at start")

	// A member logs in, selects INBOX and reads a message without setting
	// \Seen (BODY.PEEK: a read, not a write, so nothing is copied on demand).
	c := s.login(t, e2eUser, oldPass)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH 1 BODY.PEEK[]: %v (%d messages)", err, len(msgs))
	}
	m1, _ := s.scrapeMetrics()
	if m1 == nil {
		t.Fatal("GET /metrics failed after the login")
	}
	expect(m1, "pecgate_sessions", labels("protocol", "imap", "state", "migrating"), 1, false)
	expect(m1, "pecgate_sessions_started_total", labels("protocol", "imap"), started("imap")+1, true)
	expect(m1, "pecgate_imap_commands_total", labels("command", "login"), 1, false)
	expect(m1, "pecgate_imap_commands_total", labels("command", "select"), 1, false)
	expect(m1, "pecgate_imap_commands_total", labels("command", "fetch"), 1, false)
	expect(m1, "pecgate_imap_command_duration_seconds", labels("command", "fetch"), 1, false)
	expect(m1, "pecgate_imap_command_duration_seconds", labels("command", "login"), 1, false)
	// The session's logins; the engine logs in too once it has the password.
	expect(m1, "pecgate_upstream_logins_total", labels("provider", "old", "protocol", "imap", "result", "ok"), 1, true)
	expect(m1, "pecgate_upstream_logins_total", labels("provider", "new", "protocol", "imap", "result", "ok"), 1, true)
	expect(m1, "pecgate_upstream_dials_total", labels("provider", "old", "protocol", "imap"), 1, true)
	expect(m1, "pecgate_upstream_dials_total", labels("provider", "new", "protocol", "imap"), 1, true)
	report("after a login and a FETCH")

	// A wrong password, an unknown domain five times, then throttled; a
	// domain whose provider is down.
	bad, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Login(e2eUser, "Wr0ng-"+oldPass).Wait(); err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	for i := range 6 {
		if err := bad.Login("nessuno@sconosciuto.example", "x").Wait(); err == nil {
			t.Fatalf("login %d to an unknown domain succeeded", i)
		}
	}
	if err := bad.Login("qualcuno@down.example", "x").Wait(); err == nil {
		t.Fatal("login to a provider that is down succeeded")
	}
	bad.Logout().Wait()
	bad.Close()
	m2, _ := s.scrapeMetrics()
	if m2 == nil {
		t.Fatal("GET /metrics failed after the refused logins")
	}
	expect(m2, "pecgate_auth_failures_total", labels("protocol", "imap", "reason", "bad_password"), 1, false)
	expect(m2, "pecgate_auth_failures_total", labels("protocol", "imap", "reason", "unknown_domain"), 5, false)
	expect(m2, "pecgate_auth_failures_total", labels("protocol", "imap", "reason", "throttled"), 1, false)
	expect(m2, "pecgate_auth_failures_total", labels("protocol", "imap", "reason", "upstream_unavailable"), 1, false)
	expect(m2, "pecgate_upstream_logins_total", labels("provider", "old", "protocol", "imap", "result", "refused"), 1, false)
	expect(m2, "pecgate_upstream_dials_total", labels("provider", "down", "protocol", "imap"), 1, false)
	expect(m2, "pecgate_upstream_errors_total", labels("provider", "down", "kind", "connect"), 1, false)
	expect(m2, "pecgate_imap_commands_total", labels("command", "login"), 9, false)
	report("after the refused logins")

	// An SMTP submission: in migrating it goes to new, with new's master
	// user acting for the member.
	sc, err := smtp.DialTLS(s.addrs["smtps"], s.tlsConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Auth(sasl.NewPlainClient("", e2eUser, oldPass)); err != nil {
		t.Fatalf("SMTP AUTH: %v", err)
	}
	msg := "From: " + e2eUser + "\r\nTo: " + e2eUser + "\r\nSubject: invio\r\n\r\nprova\r\n"
	if err := sc.SendMail(e2eUser, []string{e2eUser}, strings.NewReader(msg)); err != nil {
		t.Fatalf("SMTP submission: %v", err)
	}
	m3, _ := s.scrapeMetrics()
	if m3 == nil {
		t.Fatal("GET /metrics failed after the submission")
	}
	expect(m3, "pecgate_smtp_submissions_total", labels("result", "delivered"), 1, false)
	expect(m3, "pecgate_sessions", labels("protocol", "smtp", "state", "migrating"), 1, false)
	expect(m3, "pecgate_sessions_started_total", labels("protocol", "smtp"), started("smtp")+1, true)
	expect(m3, "pecgate_upstream_logins_total", labels("provider", "new", "protocol", "smtp", "result", "ok"), 1, false)
	expect(m3, "pecgate_upstream_dials_total", labels("provider", "new", "protocol", "smtp"), 1, false)
	report("after an SMTP submission")
	if n := len(nw.Submissions()); n != 1 {
		t.Errorf("new's submission endpoint got %d messages, want 1", n)
	}
	sc.Quit()

	// The back-fill: four messages and their exact bytes, one problem.
	domain := labels("domain", "example.org")
	m4 := s.waitMetrics(t, "back-fill of 4 messages counted", func(m scrape) (bool, string) {
		n, b := m.sum("pecgate_backfill_messages_total", domain), m.sum("pecgate_backfill_bytes_total", domain)
		e, _ := m.value("pecgate_backfill_errors_total", labels("domain", "example.org", "kind", "oversize"))
		return n == 4 && b == float64(wantBytes) && e >= 1, fmt.Sprintf("%v messages, %v bytes, %v oversize errors", n, b, e)
	})
	// The member's whole-message FETCH may have copied message 1 on the
	// spot (copy on read) before the engine came to it: the split between
	// the two sources depends on who came first, their sum does not.
	bf, _ := m4.value("pecgate_backfill_messages_total", labels("domain", "example.org", "source", "backfill"))
	od, _ := m4.value("pecgate_backfill_messages_total", labels("domain", "example.org", "source", "on_demand"))
	t.Logf("copied: %v by the back-fill, %v on demand; %d bytes", bf, od, wantBytes)
	if bf < 3 {
		t.Errorf("the engine copied %v messages, want at least the 3 nobody read", bf)
	}
	report("after the back-fill")

	// Order IT flips the member to new (forced: one message is too big
	// for new); the live session follows at its next command.
	req, _ := http.NewRequest(http.MethodPut, "http://"+s.adminAddr+"/api/v1/users/"+url.PathEscape(e2eUser), strings.NewReader(`{"state":"new","force":true}`))
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /api/v1/users/%s new: %s: %s", e2eUser, resp.Status, body)
	}
	if _, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
		t.Fatalf("STATUS after the flip: %v", err)
	}
	m5, _ := s.scrapeMetrics()
	if m5 == nil {
		t.Fatal("GET /metrics failed after the flip")
	}
	expect(m5, "pecgate_sessions", labels("protocol", "imap", "state", "new"), 1, false)
	expect(m5, "pecgate_sessions", labels("protocol", "imap", "state", "migrating"), 0, false)
	expect(m5, "pecgate_imap_commands_total", labels("command", "status"), 1, false)
	report("after the flip")

	// Everyone leaves: the gauges go back to zero.
	c.Logout().Wait()
	c.Close()
	s.waitMetrics(t, "every session ended", func(m scrape) (bool, string) {
		open := m.sum("pecgate_sessions", nil)
		return open == 0, fmt.Sprintf("%v sessions open", open)
	})

	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, e2eExitTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	checkJSONLog(t, p.stderr.Bytes())
}

// checkJSONLog checks the gateway's JSON log: every line is one JSON
// object, and sessions, the flip and the copy problem each have their
// line with the keys an operator filters on.
func checkJSONLog(t *testing.T, log []byte) {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("log line is not JSON: %v: %s", err, sc.Bytes())
			continue
		}
		if k := duplicateKey(sc.Bytes()); k != "" {
			t.Errorf("log line has %q twice (a log processor keeps one or the other): %s", k, sc.Bytes())
		}
		lines = append(lines, m)
	}
	find := func(what string, match map[string]string, keys ...string) {
		t.Helper()
		i := slices.IndexFunc(lines, func(l map[string]any) bool {
			for k, v := range match {
				if fmt.Sprint(l[k]) != v {
					return false
				}
			}
			return true
		})
		if i < 0 {
			t.Errorf("no log line for %s (%v)", what, match)
			return
		}
		for _, k := range keys {
			if v, ok := lines[i][k]; !ok || fmt.Sprint(v) == "" {
				t.Errorf("log line for %s lacks %q: %v", what, k, lines[i])
			}
		}
	}
	user := map[string]string{"user": e2eUser, "domain": "example.org"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	find("an IMAP session start", map[string]string{"msg": "session start", "proto": "imap"}, "cid", "remote")
	find("the member's IMAP session end, after the flip", with(user, "msg", "session end", "proto", "imap", "provider", "new", "state", "new"), "cid")
	find("an SMTP session start", map[string]string{"msg": "session start", "proto": "smtp"}, "cid", "remote")
	find("the member's SMTP session end", with(user, "msg", "session end", "proto", "smtp"), "cid", "provider")
	find("the flip by the admin API", map[string]string{"msg": "route changed by force", "kind": "user", "user": e2eUser, "domain": "example.org", "to": "new"})
	find("the flip in the live session", with(user, "msg", "flip applied to live session", "from", "migrating", "to", "new"), "cid", "provider")
	find("the copy problem", with(user, "msg", "back-fill problem", "kind", "oversize", "provider", "new"), "old_provider", "mailbox")
}

// duplicateKey returns a top-level key that the JSON object line holds
// more than once, or "".
func duplicateKey(line []byte) string {
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := tok.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}
