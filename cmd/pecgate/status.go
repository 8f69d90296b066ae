package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/mutf7"
)

const statusUsage = `usage: pecgate status [-config FILE] [-watch] [DOMAIN|USER]

Shows the routing and the copy progress of the running gateway, through its
admin API: every domain (or one domain, its users with their own state and
the members whose copy needs attention), or one user's route and progress.

On a terminal the progress is drawn as bars, and -watch redraws them in
place every 2 seconds until everything is copied or Ctrl-C. Otherwise
(a pipe, a file) the output is plain lines, one per item, without escape
codes, and -watch is refused.

examples:
  pecgate status
  pecgate status pec.ordine.example
  pecgate status -watch mario.rossi@pec.ordine.example

flags:
`

// watchEvery is how often -watch redraws.
var watchEvery = 2 * time.Second

// barWidth is the number of cells inside a progress bar's brackets.
const barWidth = 20

// isTerminal says whether w is a terminal that understands cursor
// movement: a character device (as for route's confirmation), and TERM is
// not "dumb".
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && stdinIsTerminal(f) && os.Getenv("TERM") != "dumb"
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return status(ctx, args, stdout, stderr, isTerminal(stdout))
}

// status is `pecgate status`, drawing bars and allowing -watch when tty.
// It returns nil when ctx ends during -watch (Ctrl-C).
func status(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	watch := fs.Bool("watch", false, "redraw every 2 s until everything is copied or Ctrl-C (terminal only)")
	pos, err := parseInterleaved(fs, args, statusUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "pecgate status: want at most one DOMAIN or USER, got %d arguments\n", len(pos))
		return errUsage
	}
	if *watch && !tty {
		return errors.New("-watch redraws in place and needs a terminal; stdout is not one (for a log, run pecgate status without -watch now and then)")
	}
	c, err := adminClient(*cfgPath)
	if err != nil {
		return err
	}
	target := ""
	if len(pos) == 1 {
		target = pos[0]
	}
	render := func() (string, bool, error) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		var b bytes.Buffer
		settled, err := renderStatus(cctx, c, target, &b, tty)
		return b.String(), settled, err
	}
	if !*watch {
		text, _, err := render()
		if err != nil {
			return err
		}
		_, err = io.WriteString(stdout, text)
		return err
	}
	lines := 0
	for {
		text, settled, err := render()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if lines > 0 {
			// Up to the first line drawn, then clear to the end of the screen.
			fmt.Fprintf(stdout, "\x1b[%dA\x1b[J", lines)
		}
		io.WriteString(stdout, text)
		lines = strings.Count(text, "\n")
		if settled {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(watchEvery):
		}
	}
}

// renderStatus writes the status of target ("" every domain, a DOMAIN or
// a USER) to w and reports whether its copy is settled: nothing left that
// the back-fill is expected to move.
func renderStatus(ctx context.Context, c *admin.Client, target string, w io.Writer, tty bool) (settled bool, err error) {
	switch {
	case target == "":
		list, err := c.Domains(ctx)
		if err != nil {
			return false, err
		}
		printDomains(w, list)
		settled = true
		var shown []admin.Domain
		for _, d := range list {
			if showProgress(d) {
				shown = append(shown, d)
				settled = settled && domainSettled(d)
			}
		}
		if len(shown) > 0 {
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
			for _, d := range shown {
				fmt.Fprintf(tw, "%s\t%s\n", d.Name, domainMeter(d.Progress).text(tty))
				fmt.Fprintf(tw, "%s\tmembers: %s\n", d.Name, members(d.Progress))
			}
			tw.Flush()
		}
		return settled, nil
	case strings.Contains(target, "@"):
		u, err := c.User(ctx, target)
		if err != nil {
			return false, err
		}
		p, err := u.ProgressDoc()
		if err != nil {
			return false, err
		}
		printUser(w, u, p, tty)
		switch {
		case p != nil && p.State == admin.PhaseDone:
			return true, nil
		case u.State != config.StateMigrating:
			return p == nil || p.State != admin.PhaseCopying, nil
		}
		return false, nil
	default:
		d, err := c.Domain(ctx, target)
		if err != nil {
			return false, err
		}
		printDomains(w, []admin.Domain{*d})
		if len(d.Users) > 0 {
			fmt.Fprintln(w)
			tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "USER\tSTATE")
			for _, u := range d.Users {
				fmt.Fprintf(tw, "%s\t%s\n", u.User, u.State)
			}
			tw.Flush()
		}
		if !showProgress(*d) {
			return true, nil
		}
		printDomainProgress(w, d.Progress, tty)
		return domainSettled(*d), nil
	}
}

// printDomains writes one line per domain. STATE is marked "(set at run
// time)" when it is not the config file's.
func printDomains(w io.Writer, list []admin.Domain) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tSTATE\tCONFIG\tOLD\tNEW\tUSER OVERRIDES")
	for _, d := range list {
		state := d.State
		if d.Overridden {
			state += " (set at run time)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", d.Name, state, d.ConfigState, d.Old, dash(d.New), d.UserOverrides)
	}
	tw.Flush()
}

// showProgress says whether d's copy progress is worth showing: the
// gateway keeps it, the domain has a new provider, and it has left old or
// something was copied before a rollback.
func showProgress(d admin.Domain) bool {
	return d.Progress != nil && d.New != "" && (d.State != config.StateOld || d.Progress.MessagesTotal > 0)
}

// domainSettled says whether the back-fill has nothing left to move in d.
func domainSettled(d admin.Domain) bool {
	return d.State != config.StateMigrating || d.Progress == nil || d.Progress.Settled()
}

// printDomainProgress writes a domain's bar, its members by phase and one
// line per member and kind of problem.
func printDomainProgress(w io.Writer, p *admin.DomainProgress, tty bool) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "copy:\t%s\n", domainMeter(p).text(tty))
	fmt.Fprintf(tw, "members:\t%s\n", members(p))
	tw.Flush()
	if len(p.Problems) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tPHASE\tPROBLEM\tWHAT TO DO")
	for _, m := range p.Problems {
		if len(m.Kinds) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t%s\n", m.User, m.Phase, phaseAdvice(m.Phase))
		}
		for _, k := range m.Kinds {
			kind := k.Kind
			if k.Count > 1 {
				kind += " x" + strconv.Itoa(k.Count)
			}
			todo := k.Hint
			if todo == "" {
				todo = oneLine(k.Message)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.User, m.Phase, kind, dash(todo))
		}
	}
	tw.Flush()
}

// phaseAdvice says what a phase without a recorded problem means.
func phaseAdvice(phase string) string {
	switch phase {
	case admin.PhaseFailed, admin.PhaseIncomplete:
		return "the copy retries by itself; the gateway's log says why"
	}
	return "-"
}

// members says how many members a domain has in each phase, leaving out
// empty phases: "21 (3 copying, 10 done, 1 quota, 2 needs-login, 5 not
// started)".
func members(p *admin.DomainProgress) string {
	if p.MembersTotal == 0 {
		return "none known yet"
	}
	var parts []string
	for _, ph := range admin.Phases() {
		if n := p.Members[ph]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", count(int64(n)), strings.ReplaceAll(ph, "not-started", "not started")))
		}
	}
	return fmt.Sprintf("%s (%s)", count(int64(p.MembersTotal)), strings.Join(parts, ", "))
}

func printUser(w io.Writer, u *admin.User, p *admin.UserProgress, tty bool) {
	from := map[string]string{
		"":       "the config file's state of " + u.Domain,
		"domain": "the run-time state of " + u.Domain,
		"user":   "its own state; " + u.Domain + " is " + u.DomainState,
	}[u.Overridden]
	serving := u.Old
	switch u.State {
	case "migrating":
		serving = u.Old + " and " + u.New
	case "new":
		serving = u.New
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "user:\t%s\n", u.User)
	fmt.Fprintf(tw, "state:\t%s (%s)\n", u.State, from)
	fmt.Fprintf(tw, "served by:\t%s\n", serving)
	fmt.Fprintf(tw, "old:\t%s\n", u.Old)
	fmt.Fprintf(tw, "new:\t%s\n", dash(u.New))
	if p != nil {
		state := p.State
		if state == "" {
			state = "counting"
		}
		fmt.Fprintf(tw, "copy:\t%s  %s\n", state, userMeter(p).text(tty))
		var kinds []string
		for _, e := range p.Errors {
			where := e.Kind
			if e.Mailbox != "" {
				where += " in " + e.Mailbox
			}
			if e.V != 0 {
				where += fmt.Sprintf(" (UID %d)", e.V)
			}
			fmt.Fprintf(tw, "problem:\t%s: %s\n", where, oneLine(e.Message))
			if e.Hint != "" && !slices.Contains(kinds, e.Kind) {
				kinds = append(kinds, e.Kind)
			}
		}
		for _, k := range kinds {
			fmt.Fprintf(tw, "what to do:\t%s: %s\n", k, admin.Hint(k))
		}
	}
	tw.Flush()
	if p != nil && len(p.Folders) > 0 {
		fmt.Fprintln(w)
		ftw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(ftw, "FOLDER\tCOPIED")
		for _, f := range p.Folders {
			fmt.Fprintf(ftw, "%s\t%d/%d msgs\n", mutf7.Decode(f.Name), f.MessagesDone, f.MessagesTotal)
		}
		ftw.Flush()
	}
}

// oneLine keeps a message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// meter is what a progress line shows.
type meter struct {
	// known is false while the totals are not counted.
	known                                      bool
	msgsDone, msgsTotal, bytesDone, bytesTotal int64
	msgsPerSec, bytesPerSec                    *float64 // nil: unknown
	eta                                        *int64   // seconds; nil: unknown
}

func userMeter(p *admin.UserProgress) meter {
	return meter{
		known:    p.Counted(),
		msgsDone: p.MessagesDone, msgsTotal: p.MessagesTotal, bytesDone: p.BytesDone, bytesTotal: p.BytesTotal,
		msgsPerSec: p.MessagesPerSecond, bytesPerSec: p.BytesPerSecond, eta: p.ETASeconds,
	}
}

func domainMeter(p *admin.DomainProgress) meter {
	return meter{
		known:    p.MembersTotal > p.Members[admin.PhaseNotStarted] || p.MessagesTotal > 0,
		msgsDone: p.MessagesDone, msgsTotal: p.MessagesTotal, bytesDone: p.BytesDone, bytesTotal: p.BytesTotal,
		msgsPerSec: p.MessagesPerSecond, bytesPerSec: p.BytesPerSecond, eta: p.ETASeconds,
	}
}

// text renders m: with a bar when tty, e.g.
// "[#########...........]  45%  2,250/5,000 msgs  1.2/3.4 GB  38 msg/s  4.1 MB/s  ETA 1m12s";
// unknown parts are left out, unknown totals are "?".
func (m meter) text(tty bool) string {
	total := m.msgsTotal
	if !m.known {
		total = -1
	}
	var parts []string
	if tty {
		parts = append(parts, bar(barWidth, m.msgsDone, total))
	}
	parts = append(parts, percent(m.msgsDone, total))
	if m.known {
		parts = append(parts, count(m.msgsDone)+"/"+count(m.msgsTotal)+" msgs", byteRange(m.bytesDone, m.bytesTotal))
	} else {
		parts = append(parts, count(m.msgsDone)+"/? msgs", sizeText(m.bytesDone)+"/?")
	}
	if m.msgsPerSec != nil {
		parts = append(parts, rate(*m.msgsPerSec))
	}
	if m.bytesPerSec != nil {
		parts = append(parts, sizeText(int64(*m.bytesPerSec))+"/s")
	}
	if m.eta != nil {
		parts = append(parts, "ETA "+etaText(*m.eta))
	}
	return strings.Join(parts, "  ")
}

// bar draws done of total as width cells between brackets: '#' done, '.'
// left. A total below zero is unknown: all '.'; a total of zero is
// complete. A cell is '#' only once it is entirely done, so the bar is
// full only at 100%.
func bar(width int, done, total int64) string {
	width = max(width, 1)
	filled := 0
	switch {
	case total < 0:
	case total == 0 || done >= total:
		filled = width
	case done > 0:
		filled = int(done * int64(width) / total)
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

// percent is done of total in whole percent, rounded down (so 100% means
// complete); "?%" when total is below zero (unknown).
func percent(done, total int64) string {
	switch {
	case total < 0:
		return "?%"
	case total == 0 || done >= total:
		return "100%"
	case done <= 0:
		return "0%"
	}
	return strconv.FormatInt(done*100/total, 10) + "%"
}

// count writes n with thousands separators: 2,250.
func count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// byteUnits are decimal (SI) units, as providers state quotas.
var byteUnits = []string{"B", "KB", "MB", "GB", "TB", "PB"}

// unitOf returns the index in byteUnits and the divisor for n.
func unitOf(n int64) (int, float64) {
	i, div := 0, 1.0
	for f := float64(n); f >= 1000 && i < len(byteUnits)-1; f /= 1000 {
		i++
		div *= 1000
	}
	return i, div
}

func scaled(n int64, i int, div float64) string {
	if i == 0 {
		return strconv.FormatInt(n, 10)
	}
	return strconv.FormatFloat(float64(n)/div, 'f', 1, 64)
}

// sizeText writes n in the largest decimal unit it reaches: "512 B",
// "1.2 GB" (verify.go's humanBytes writes binary units for its reports).
func sizeText(n int64) string {
	i, div := unitOf(n)
	return scaled(n, i, div) + " " + byteUnits[i]
}

// byteRange writes done/total in total's unit: "1.2/3.4 GB".
func byteRange(done, total int64) string {
	i, div := unitOf(max(total, done))
	return scaled(done, i, div) + "/" + scaled(total, i, div) + " " + byteUnits[i]
}

// rate writes messages per second: one decimal below 10.
func rate(perSec float64) string {
	if perSec < 10 {
		return strconv.FormatFloat(perSec, 'f', 1, 64) + " msg/s"
	}
	return strconv.FormatFloat(perSec, 'f', 0, 64) + " msg/s"
}

// etaText writes seconds as 45s, 1m12s, 3h05m or 2d03h.
func etaText(sec int64) string {
	switch {
	case sec < 60:
		return fmt.Sprintf("%ds", max(sec, 0))
	case sec < 3600:
		return fmt.Sprintf("%dm%02ds", sec/60, sec%60)
	case sec < 86400:
		return fmt.Sprintf("%dh%02dm", sec/3600, sec%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", sec/86400, sec%86400/3600)
}
