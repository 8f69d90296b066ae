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
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync/verify"
)

const verifyUsage = `usage: pecgate verify [-config FILE] [-out DIR] [-passwords FILE] [-v] DOMAIN|USER

Audits a migration: re-reads every folder of a member (USER) or of every
member of a domain known to the store (DOMAIN) on the old and on the new
provider, and checks that every old message is in new exactly once,
byte-identical (SHA-256) and with the same INTERNALDATE. The old provider is
only read (EXAMINE, BODY.PEEK); so is the new one.

It writes three files to DIR, named verify-TARGET-TIMESTAMP:
  .csv     one row per message: folder on each side, old, new and virtual
           UID, INTERNALDATE, flags, size and SHA-256 on each side, PEC kind
           (busta, anomalia, accettazione, avvenuta-consegna, ...), status
           (ok, missing, duplicate, mismatch, new-only, expunged) and a note
  .json    the same, with per-folder UIDVALIDITY, counts and bytes
  .sha256  the sorted SHA-256 of every message in new, one per line, no
           names: a list that can be kept or handed over as evidence

Flags changed by the member during the migration are reported, not counted
as mismatches. Messages that reached new after the switch are new-only, not
errors.

Exit status: 0 when the migration is proven complete; 1 when a message is
missing, duplicated or different, or a member or folder could not be read
(the report says which, and what to do); 2 on a usage error.

The embedded store allows one process: stop the gateway (pecgate serve)
while verifying, or verify a copy of the store directory. A PostgreSQL
store ([store] url) is shared: verify while the gateway runs.

Providers with auth = "passthrough" log in with each member's own password:
give them with -passwords FILE, a CSV file of address,password lines (the
header line optional, ',' or ';' separated), as for pecgate vault import.

examples:
  pecgate verify mario.rossi@pec.ordine.example
  pecgate verify -out /var/lib/pecgate/audit pec.ordine.example
  pecgate verify -config /etc/pecgate/pecgate.toml -passwords members.csv pec.ordine.example

flags:
`

func runVerify(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	outDir := fs.String("out", ".", "directory for the report files (created if missing)")
	pwFile := fs.String("passwords", "", "CSV file of address,password for providers with auth = \"passthrough\"")
	verbose := fs.Bool("v", false, "log each folder as it is verified (to stderr)")
	pos, err := parseInterleaved(fs, args, verifyUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "pecgate verify: want one DOMAIN or USER, got %d arguments\n", len(pos))
		return errUsage
	}
	target := strings.ToLower(strings.TrimSpace(pos[0]))
	if target == "" {
		return errUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\n(fix the configuration file %s, or name another with -config)", err, *cfgPath)
	}
	isUser := strings.Contains(target, "@")
	if isUser {
		if d := cfg.LookupDomain(target); d == nil {
			return fmt.Errorf("%s: its domain is not served by %s", target, *cfgPath)
		} else if d.New == "" {
			return fmt.Errorf("%s: the domain %s has no new provider in %s: there is no migration to verify", target, d.Name, *cfgPath)
		}
	} else if d := cfg.Domains[target]; d == nil {
		return fmt.Errorf("%s is not a domain served by %s (give a domain, or a member's address)", target, *cfgPath)
	} else if d.New == "" {
		return fmt.Errorf("the domain %s has no new provider in %s: there is no migration to verify", target, *cfgPath)
	}
	var passwords map[string]string
	if *pwFile != "" {
		if passwords, err = readPasswords(*pwFile); err != nil {
			return err
		}
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	backends, err := backend.New(cfg, log)
	if err != nil {
		return err
	}
	// PostgreSQL takes several processes: verify while the gateway runs.
	st, err := openStore(context.Background(), cfg)
	if errors.Is(err, bolt.ErrLocked) {
		return fmt.Errorf("the store in %s is in use, probably by the running gateway: stop the gateway (pecgate serve), run pecgate verify again, then start the gateway; or verify a copy of %s (%w)", cfg.Store.Path, cfg.Store.Path, err)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	o := verify.Options{Config: cfg, Store: st, Backends: backends, Log: log}
	if cfg.Vault.KeyFile != "" {
		v, err := store.OpenVault(cfg.Vault.KeyFile)
		if err != nil {
			return fmt.Errorf("vault.key_file: %w", err)
		}
		o.Secrets = vaultSecrets{v: v, st: st}
	}
	if passwords != nil {
		o.Password = func(user string) (string, bool) {
			pw, ok := passwords[strings.ToLower(user)]
			return pw, ok
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var r *verify.Report
	if isUser {
		r, err = verify.User(ctx, o, target)
	} else {
		users, kerr := verify.KnownUsers(ctx, st, target)
		if kerr != nil {
			return kerr
		}
		if len(users) == 0 {
			return fmt.Errorf("the store knows no member of %s (none has logged in through the gateway, has vault credentials or a UID map): verify members one by one by address", target)
		}
		r, err = verify.Domain(ctx, o, target, users)
	}
	if err != nil {
		return err
	}
	files, err := writeVerifyReport(r, *outDir, target)
	if err != nil {
		return err
	}
	printVerifySummary(stdout, target, r, files)
	if r.OK() {
		return nil
	}
	return errors.New(verifyAdvice(r, files[0]))
}

type reportOut struct {
	ext   string
	write func(io.Writer) error
}

// writeVerifyReport writes DIR/verify-TARGET-TIMESTAMP.{csv,json,sha256}
// and returns their paths.
func writeVerifyReport(r *verify.Report, dir, target string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("report directory: %w", err)
	}
	outs := []reportOut{{".csv", r.WriteCSV}, {".json", r.WriteJSON}, {".sha256", r.WriteHashList}}
	// An earlier report is never overwritten: a second run within the same
	// second gets "-2", then "-3"...
	stem := filepath.Join(dir, "verify-"+fileSafe(target)+"-"+r.Started.UTC().Format("20060102T150405Z"))
	base := stem
	for n := 2; slices.ContainsFunc(outs, func(o reportOut) bool { _, err := os.Lstat(base + o.ext); return err == nil }); n++ {
		base = fmt.Sprintf("%s-%d", stem, n)
	}
	var files []string
	for _, out := range outs {
		name := base + out.ext
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if err != nil {
			return nil, fmt.Errorf("report: %w", err)
		}
		err = out.write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
			return nil, fmt.Errorf("report %s: %w", name, err)
		}
		files = append(files, name)
	}
	return files, nil
}

// fileSafe keeps letters, digits and .@_- of s; anything else becomes _.
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(".@_-", r):
			return r
		}
		return '_'
	}, s)
}

func printVerifySummary(w io.Writer, target string, r *verify.Report, files []string) {
	fmt.Fprintf(w, "verify %s: %d users, %d folders, in %s\n", target, len(r.Users), r.FolderCount, r.Finished.Sub(r.Started).Round(time.Second))
	fmt.Fprintf(w, "  old: %d messages, %s\n", r.MessagesOld, humanBytes(r.BytesOld))
	fmt.Fprintf(w, "  new: %d messages, %s (%d new-only: arrived after the switch)\n", r.MessagesNew, humanBytes(r.BytesNew), r.NewOnly)
	fmt.Fprintf(w, "  ok %d, missing %d, duplicates %d, mismatches %d, errors %d\n", r.Matching, r.Missing, r.Duplicates, r.Mismatches, r.Errors)
	if r.FlagDiffs > 0 || r.Expunged > 0 {
		fmt.Fprintf(w, "  information: %d copies with other flags (changed by the member?), %d messages expunged by members\n", r.FlagDiffs, r.Expunged)
	}
	for _, u := range r.Users {
		switch {
		case u.Error != "":
			fmt.Fprintf(w, "  %s: NOT VERIFIED: %s\n", u.User, u.Error)
		case u.Missing+u.Duplicates+u.Mismatches+u.Errors > 0:
			fmt.Fprintf(w, "  %s: missing %d, duplicates %d, mismatches %d, errors %d\n", u.User, u.Missing, u.Duplicates, u.Mismatches, u.Errors)
			for _, f := range u.Folders {
				for _, p := range f.Problems {
					fmt.Fprintf(w, "    %s: %s\n", f.Folder, p)
				}
			}
		}
	}
	fmt.Fprintf(w, "report: %s\n", strings.Join(files, ", "))
	if r.OK() {
		fmt.Fprintln(w, "OK: every old message is in new exactly once, byte-identical, with its INTERNALDATE")
	}
}

// verifyAdvice says what is wrong and what to do about it.
func verifyAdvice(r *verify.Report, csvFile string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "the migration is not proven complete: %d missing, %d duplicates, %d mismatches, %d errors (rows in %s)", r.Missing, r.Duplicates, r.Mismatches, r.Errors, csvFile)
	if r.Missing > 0 {
		b.WriteString("\n- missing: old messages that are not in new. Rows noted \"not copied yet\": keep the domain or member in migrating, let the back-fill finish (pecgate status), then verify again. " +
			"Rows noted \"which new does not hold\": the copy was removed from new outside the gateway; the original is untouched on the old provider. Do not flip to new before verify passes")
	}
	if r.Duplicates > 0 {
		b.WriteString("\n- duplicates: new holds extra copies (status duplicate, new_uid). Check the note: a copy the member made on purpose is not an error; otherwise remove the extra copy from new, then verify again")
	}
	if r.Mismatches > 0 {
		b.WriteString("\n- mismatches: a copy in new differs from the original in its bytes or INTERNALDATE (a PEC message must be byte-identical). The original is untouched on the old provider: report it, do not flip to new until the copy is replaced")
	}
	if r.Errors > 0 {
		var noPw, auth bool
		for _, u := range r.Users {
			noPw = noPw || u.Reason == verify.ReasonNoPassword
			auth = auth || u.Reason == verify.ReasonAuthRefused || u.Reason == verify.ReasonNoCredential
		}
		b.WriteString("\n- errors: some members or folders could not be read (listed above); fix the cause and verify again")
		if noPw {
			b.WriteString("\n  a provider with auth = \"passthrough\" needs each member's password: give them with -passwords FILE")
		}
		if auth {
			b.WriteString("\n  refused or missing credentials: check the master user, or import current ones with pecgate vault import")
		}
	}
	return b.String()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// readPasswords reads a CSV file of address,password (a header line
// optional; ',' or ';' separated). Errors name the line, never a password.
func readPasswords(file string) (map[string]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	r := csv.NewReader(bytes.NewReader(data))
	first, _, _ := bytes.Cut(data, []byte("\n"))
	if bytes.Count(first, []byte(";")) > 0 && bytes.Count(first, []byte(",")) == 0 {
		r.Comma = ';'
	}
	r.FieldsPerRecord = -1
	out := map[string]string{}
	for n := 0; ; n++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		line, _ := r.FieldPos(0)
		if n == 0 && len(rec) > 0 && !strings.Contains(rec[0], "@") {
			continue // header
		}
		if len(rec) != 2 || !strings.Contains(rec[0], "@") || rec[1] == "" {
			return nil, fmt.Errorf("%s:%d: want address,password", file, line)
		}
		out[strings.ToLower(strings.TrimSpace(rec[0]))] = rec[1]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no passwords in the file", file)
	}
	return out, nil
}
