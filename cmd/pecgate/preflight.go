package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync/preflight"
	"github.com/pecgate/pecgate/sync/verify"
)

const preflightUsage = `usage: pecgate preflight [-config FILE] [-users FILE.csv] [-out FILE.csv] [-concurrency N] [-no-create] [-v] DOMAIN

Checks every member of DOMAIN before a flip: logs in to the old and to the
new provider on each member's behalf (once per provider: a refusal is never
retried, so nobody is locked out), and then
  - tells a wrong password from two-factor login wanting an app password,
    IMAP not enabled for the account, missing vault credentials or an
    unreachable provider, and says what to do;
  - compares the mailbox size on old with the member's quota on new
    (GETQUOTAROOT, else providers.NEW.quota_bytes);
  - lists the messages over new's size limit (providers.NEW.max_message_size,
    or the APPENDLIMIT new advertises): the migration cannot copy them;
  - finds folder names new refuses, by creating on new the folders the
    migration would create anyway (empty; nothing is deleted; -no-create
    skips this check).
Old is only read. The store is only read.

Members are those in -users FILE, else every member the store knows (vault
credentials, past logins through the gateway, copy progress, overrides).
FILE is CSV, ',' or ';' separated, a header line optional, columns:
  user[,password]
The password is the member's own, needed for a provider with auth =
"passthrough"; a member without one is "not checked" there (a warning, not
a block). Providers with auth = "master" or "vault" need no password. When
the running gateway runs the check (below), a member who logged in through
it since it started is checked with that password, which never leaves it.

It prints a table and each member's problems with what to do; -out writes
the same as CSV, one row per member. Exit status: 0 when no member blocks
the flip (warnings allowed), 1 when one does (listed, with why) or on an
error, 2 on a usage error.

The embedded store allows one process: while the gateway (pecgate serve)
runs, preflight asks it to run the check, through the admin API ([server]
admin and [admin] token_file of the configuration), with the gateway's
store, vault and providers; the members, passwords and flags given here go
with the request. Without the admin API, preflight runs here without the
store when the members are given with -users and no provider of the domain
uses vault credentials (in state migrating or new it then leaves folder
names unchecked); otherwise stop the gateway for the check. A PostgreSQL
store ([store] url) is shared: preflight asks the running gateway when the
admin API is configured (for the passwords it knows), and otherwise, or
when the gateway does not answer, runs the check here on that store.

examples:
  pecgate preflight pec.ordine.example
  pecgate preflight -users members.csv -out preflight.csv pec.ordine.example
  pecgate preflight -config /etc/pecgate/pecgate.toml -concurrency 4 -no-create pec.ordine.example

flags:
`

func runPreflight(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("preflight", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	usersFile := fs.String("users", "", "CSV file of the members to check: user[,password]")
	outFile := fs.String("out", "", "write the report as CSV to this file")
	concurrency := fs.Int("concurrency", 0, "members checked at once per provider (default: the provider's copy_connections)")
	noCreate := fs.Bool("no-create", false, "do not create folders on new: folder names are not checked")
	verbose := fs.Bool("v", false, "log each member as it is checked (to stderr)")
	pos, err := parseInterleaved(fs, args, preflightUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || strings.Contains(pos[0], "@") {
		fmt.Fprintf(stderr, "pecgate preflight: want one DOMAIN (give members with -users FILE), got %q\n", pos)
		return errUsage
	}
	if *concurrency < 0 {
		fmt.Fprintf(stderr, "pecgate preflight: -concurrency %d: want a positive number of members per provider, or 0 for each provider's copy_connections\n", *concurrency)
		return errUsage
	}
	domain := strings.ToLower(strings.TrimSpace(pos[0]))
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\n(fix the configuration file %s, or name another with -config)", err, *cfgPath)
	}
	d := cfg.Domains[domain]
	switch {
	case d == nil:
		return fmt.Errorf("%s is not a domain served by %s", domain, *cfgPath)
	case d.New == "":
		return fmt.Errorf("the domain %s has no new provider in %s: set domains.%q.new to the provider it moves to, then run preflight", domain, *cfgPath, domain)
	}
	var (
		users     []string
		passwords map[string]string
	)
	if *usersFile != "" {
		if users, passwords, err = readMembers(*usersFile); err != nil {
			return err
		}
	}
	// Problems are in the report; the log repeats them only with -v.
	level := slog.LevelError
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	backends, err := backend.New(cfg, log)
	if err != nil {
		return err
	}
	usesVault := cfg.Providers[d.Old].Auth == config.AuthVault || cfg.Providers[d.New].Auth == config.AuthVault

	o := preflight.Options{Config: cfg, Backends: backends, Log: log, Concurrency: *concurrency, NoCreate: *noCreate}
	if passwords != nil {
		o.Password = func(user string) (string, bool) {
			pw, ok := passwords[user]
			return pw, ok && pw != ""
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var r *preflight.Report
	req := admin.PreflightRequest{NoCreate: *noCreate, Concurrency: *concurrency}
	for _, u := range users {
		req.Users = append(req.Users, admin.PreflightUser{User: u, Password: passwords[u]})
	}
	st, err := openPreflightStore(ctx, cfg)
	switch {
	case err == nil && cfg.Store.URL != "" && config.Addr(cfg.Server.Admin) != "":
		// PostgreSQL is shared, so the check can run here; but a running
		// gateway also knows the passwords members logged in with since it
		// started: ask it first, and run here when it does not answer.
		defer st.Close()
		r, err = preflightViaGateway(ctx, *cfgPath, domain, req)
		switch {
		case err == nil:
			fmt.Fprintln(stderr, "pecgate preflight: the running gateway ran the check")
		case gatewayAnswered(err):
		default:
			fmt.Fprintf(stderr, "pecgate preflight: the gateway did not run the check (%v): running it here on the PostgreSQL store\n", err)
			r, err = preflightDirect(ctx, o, st, domain, users)
		}
	case err == nil:
		defer st.Close()
		r, err = preflightDirect(ctx, o, st, domain, users)
	case errors.Is(err, errStoreBusy):
		// The gateway holds the store: it runs the check, with its store.
		r, err = preflightViaGateway(ctx, *cfgPath, domain, req)
		switch {
		case err == nil:
			fmt.Fprintln(stderr, "pecgate preflight: the store is in use: the running gateway ran the check")
		case gatewayAnswered(err):
		case users != nil && !usesVault:
			fmt.Fprintf(stderr, "pecgate preflight: %v, and the gateway did not run the check (%v): going on without the store; members come from -users\n", storeBusyNote(cfg), err)
			r, err = preflightDirect(ctx, o, nil, domain, users)
		default:
			how := "enable the admin API ([server] admin, [admin] token_file) and restart the gateway, or give the members with -users FILE"
			if usesVault {
				how = "enable the admin API ([server] admin, [admin] token_file) and restart the gateway; or stop the gateway, run pecgate preflight, then start it (a provider of the domain uses vault credentials, which are in the store)"
			}
			return fmt.Errorf("%s (probably by the running gateway), and the gateway did not run the check: %v; %s", storeBusyNote(cfg), err, how)
		}
	default:
		return err
	}
	if err != nil {
		switch {
		case errors.Is(err, preflight.ErrNotMember):
			return fmt.Errorf("%w (fix %s)", err, *usersFile)
		case ctx.Err() != nil:
			return fmt.Errorf("interrupted: no report (the members checked so far got one login attempt each; run pecgate preflight again to check them all): %w", err)
		}
		return err
	}
	printPreflight(stdout, r)
	if *outFile != "" {
		if err := writePreflightCSV(r, *outFile); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "report: %s\n", *outFile)
	}
	if r.OK() {
		fmt.Fprintf(stdout, "OK: no member blocks the flip of %s\n", domain)
		return nil
	}
	return errors.New(preflightAdvice(r))
}

// errStoreBusy: the store cannot be read here (another process, the
// gateway, holds the embedded store).
var errStoreBusy = errors.New("the store is in use")

// openPreflightStore opens the store: PostgreSQL ([store] url), which the
// running gateway shares, or the embedded store, with an error wrapping
// errStoreBusy when the gateway holds it.
func openPreflightStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	st, err := openStore(ctx, cfg)
	if errors.Is(err, bolt.ErrLocked) {
		return nil, fmt.Errorf("%w: %w", errStoreBusy, err)
	}
	return st, err
}

// storeBusyNote says why the store could not be read, for a note.
func storeBusyNote(cfg *config.Config) string {
	return "the store in " + cfg.Store.Path + " is in use"
}

// preflightDirect runs the check in this process; st may be nil (then
// users must be given).
func preflightDirect(ctx context.Context, o preflight.Options, st store.Store, domain string, users []string) (*preflight.Report, error) {
	if st != nil {
		o.Store = st
		if o.Config.Vault.KeyFile != "" {
			v, err := store.OpenVault(o.Config.Vault.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("vault.key_file: %w", err)
			}
			o.Secrets = vaultSecrets{v: v, st: st}
		}
	}
	if users == nil {
		var err error
		if users, err = verify.KnownUsers(ctx, st, domain); err != nil {
			return nil, err
		}
		if len(users) == 0 {
			return nil, fmt.Errorf("the store knows no member of %s (none has logged in through the gateway, has vault credentials or copy progress): list the members in a CSV file (user[,password]) and give it with -users", domain)
		}
	}
	return preflight.Domain(ctx, o, domain, users)
}

// preflightViaGateway asks the running gateway's admin API to run the
// check.
func preflightViaGateway(ctx context.Context, cfgPath, domain string, req admin.PreflightRequest) (*preflight.Report, error) {
	c, err := adminClient(cfgPath)
	if err != nil {
		return nil, err
	}
	r := new(preflight.Report)
	if err := c.Preflight(ctx, domain, req, r); err != nil {
		return nil, err
	}
	return r, nil
}

// gatewayAnswered reports whether err is the gateway's own answer about
// the check (bad input, unknown domain), not a failure to reach it or a
// gateway without preflight support.
func gatewayAnswered(err error) bool {
	var ae *admin.Error
	return errors.As(err, &ae) && ae.Status != http.StatusNotImplemented && ae.Status != http.StatusUnauthorized
}

// gatewayPreflight is the admin API's preflight runner in a running
// gateway: it checks with the gateway's store, vault and providers.
func gatewayPreflight(cfg *config.Config, backends *backend.Set, st store.Store, secrets backend.Secrets, known func(user string) (string, bool), log *slog.Logger) admin.PreflightFunc {
	return func(ctx context.Context, domain string, req admin.PreflightRequest) (any, error) {
		d := cfg.Domains[strings.ToLower(domain)]
		switch {
		case d == nil:
			return nil, fmt.Errorf("%w: %s", store.ErrUnknownDomain, domain)
		case d.New == "":
			return nil, fmt.Errorf("%w: %s", store.ErrNoNewProvider, domain)
		}
		o := preflight.Options{Config: cfg, Backends: backends, Store: st, Secrets: secrets, Log: log,
			Concurrency: req.Concurrency, NoCreate: req.NoCreate}
		var users []string
		// A password given with the request wins; else the one the
		// back-fill learnt at the member's last login (known), which
		// never leaves the gateway.
		passwords := map[string]string{}
		o.Password = func(user string) (string, bool) {
			if pw := passwords[user]; pw != "" {
				return pw, true
			}
			if known != nil {
				return known(user)
			}
			return "", false
		}
		if len(req.Users) > 0 {
			for _, u := range req.Users {
				name := store.CanonicalUser(strings.TrimSpace(u.User))
				users = append(users, name)
				passwords[name] = u.Password
			}
		} else {
			var err error
			if users, err = verify.KnownUsers(ctx, st, d.Name); err != nil {
				return nil, err
			}
			if len(users) == 0 {
				return nil, &admin.Error{Status: http.StatusConflict, Message: fmt.Sprintf("the store knows no member of %s: give the members (users, or pecgate preflight -users FILE)", d.Name)}
			}
		}
		r, err := preflight.Domain(ctx, o, d.Name, users)
		if errors.Is(err, preflight.ErrNotMember) {
			return nil, &admin.Error{Status: http.StatusBadRequest, Message: err.Error()}
		}
		if err != nil {
			return nil, err
		}
		return r, nil
	}
}

// readMembers reads a CSV file of user[,password] lines (a header line
// optional; ',' or ';' separated). Errors name the line, never a password.
func readMembers(file string) (users []string, passwords map[string]string, err error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("-users: %w", err)
	}
	defer clear(data)
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	r := csv.NewReader(bytes.NewReader(data))
	first, _, _ := bytes.Cut(data, []byte("\n"))
	if bytes.Contains(first, []byte(";")) && !bytes.Contains(first, []byte(",")) {
		r.Comma = ';'
	}
	r.FieldsPerRecord = -1
	// No TrimLeadingSpace: a password may start with a space.
	passwords = map[string]string{}
	for n := 0; ; n++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", file, err)
		}
		line, _ := r.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		if n == 0 && !strings.Contains(rec[0], "@") {
			continue // header
		}
		u := store.CanonicalUser(strings.TrimSpace(rec[0]))
		if len(rec) > 2 || !strings.Contains(u, "@") {
			return nil, nil, fmt.Errorf("%s:%d: want user[,password] (an address, then optionally the member's password)", file, line)
		}
		if _, dup := passwords[u]; dup {
			return nil, nil, fmt.Errorf("%s:%d: %s listed twice", file, line, u)
		}
		users = append(users, u)
		passwords[u] = ""
		if len(rec) == 2 {
			passwords[u] = rec[1]
		}
	}
	if len(users) == 0 {
		return nil, nil, fmt.Errorf("%s: no members in the file", file)
	}
	return users, passwords, nil
}

func writePreflightCSV(r *preflight.Report, file string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("-out: %w", err)
	}
	err = r.WriteCSV(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("-out %s: %w", file, err)
	}
	return nil
}

// printPreflight prints one table line per member, then each member's
// problems with what to do.
func printPreflight(w io.Writer, r *preflight.Report) {
	fmt.Fprintf(w, "preflight %s (%s, %s -> %s): %d members, in %s\n", r.Domain, r.State, r.Old, r.New,
		len(r.Members), r.Finished.Sub(r.Started).Round(1e6))
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tVERDICT\tOLD LOGIN\tNEW LOGIN\tMESSAGES\tSIZE\tNEW QUOTA FREE\tTOO BIG\tFOLDERS REFUSED")
	for _, m := range r.Members {
		size, quota := "-", "unknown"
		if m.OldLogin == preflight.LoginOK {
			size = humanBytes(m.Bytes)
		}
		if m.QuotaSource != "" {
			quota = fmt.Sprintf("%s of %s", humanBytes(max(m.QuotaLimit-m.QuotaUsed, 0)), humanBytes(m.QuotaLimit))
		} else if m.NewLogin != preflight.LoginOK {
			quota = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\n", m.User, strings.ToUpper(m.Verdict()), m.OldLogin, m.NewLogin,
			m.Messages, size, quota, len(m.Oversize), len(m.FolderRefusals))
	}
	tw.Flush()
	if r.FoldersNotChecked != "" {
		fmt.Fprintf(w, "note: %s\n", r.FoldersNotChecked)
	}
	for _, m := range r.Members {
		if len(m.Problems) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s):\n", m.User, m.Verdict())
		for _, p := range m.Problems {
			tag := "BLOCKS"
			if !p.Blocks {
				tag = "warning"
			}
			fmt.Fprintf(w, "  [%s] %s\n    what to do: %s\n", tag, p.Message, p.Advice)
			switch p.Kind {
			case preflight.KindOversize:
				for _, o := range m.Oversize {
					fmt.Fprintf(w, "    %s UID %d, %s, %s, %q\n", o.Folder, o.UID, humanBytes(o.Size), o.Date.Format("2006-01-02"), o.Subject)
				}
			}
		}
	}
}

// preflightAdvice says which members block the flip and why.
func preflightAdvice(r *preflight.Report) string {
	var b strings.Builder
	blocking := r.Blocking()
	fmt.Fprintf(&b, "the flip of %s is not safe: %d of %d members block it", r.Domain, len(blocking), len(r.Members))
	for _, m := range blocking {
		var why []string
		for _, p := range m.Problems {
			if !p.Blocks {
				continue
			}
			k := p.Kind
			if p.Refusal != "" {
				k = fmt.Sprintf("%s %s on %s", p.Kind, p.Refusal, p.Provider)
			}
			why = append(why, k)
		}
		fmt.Fprintf(&b, "\n- %s: %s", m.User, strings.Join(why, ", "))
	}
	b.WriteString("\nfix what the report says for each of them, then run pecgate preflight again; do not flip before it passes")
	return b.String()
}
