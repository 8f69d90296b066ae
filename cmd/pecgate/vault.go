package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"unicode"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// vaultColumns are the columns of a vault import file, in the order a file
// without a header line must have them.
var vaultColumns = []string{"address", "provider", "username", "password"}

func runVault(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vault", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	check := fs.Bool("check", false, "only validate FILE.csv against the configuration; open no store, write nothing")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pecgate vault [-config FILE] import [-check] FILE.csv\n\n"+
			"Imports each member's credentials for providers with auth = \"vault\" into the\n"+
			"store, encrypted with [vault] key_file. FILE.csv has the columns\n"+
			"  address,provider,username,password\n"+
			"with that header line (columns in any order) or without one (then in that\n"+
			"order); ',' or ';' separated, UTF-8. The provider must be the old or new\n"+
			"provider of the address's domain and use auth = \"vault\". Every row is\n"+
			"checked first: if any is wrong, all problems are listed with their line\n"+
			"numbers and nothing is written. An address imported again is replaced.\n"+
			"The embedded store allows one process: stop the gateway while importing.\n"+
			"A PostgreSQL store ([store] url) is shared: import while the gateway runs.\n\n"+
			"examples:\n"+
			"  pecgate vault import -check infocert.csv   # check every row; write nothing\n"+
			"  pecgate vault -config /etc/pecgate/pecgate.toml import infocert.csv\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	// Flags may also follow the subcommand: vault import -check FILE.csv.
	if fs.NArg() == 0 || fs.Arg(0) != "import" {
		return errUsage
	}
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 1 {
		return errUsage
	}
	file := fs.Arg(0)
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\n(fix the configuration file %s and try again)", err, *cfgPath)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	rows, err := parseVaultCSV(data, file, cfg, *cfgPath)
	clear(data)
	if err != nil {
		return err
	}
	members := map[string]bool{}
	for _, r := range rows {
		members[strings.ToLower(r.address)] = true
	}
	if *check {
		fmt.Fprintf(stdout, "%s: %d credentials for %d members are valid; nothing written (-check)\n", file, len(rows), len(members))
		return nil
	}
	if cfg.Vault.KeyFile == "" {
		return fmt.Errorf("vault.key_file is not set in %s", *cfgPath)
	}
	v, err := store.OpenVault(cfg.Vault.KeyFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w\n(create the key once with: head -c 32 /dev/urandom > %s && chmod 600 %s; keep a copy: without it the vault cannot be read)", err, cfg.Vault.KeyFile, cfg.Vault.KeyFile)
		}
		return err
	}
	// PostgreSQL takes several processes: the running gateway reads the
	// credentials as soon as the import commits.
	st, err := openStore(context.Background(), cfg)
	switch {
	case errors.Is(err, bolt.ErrLocked):
		return fmt.Errorf("the store in %s is in use, probably by the running gateway: stop the gateway (pecgate serve), run the import again, then start the gateway; nothing imported (%w)", cfg.Store.Path, err)
	case err != nil && cfg.Store.URL != "":
		return fmt.Errorf("%w; nothing imported", err)
	case err != nil:
		return err
	}
	defer st.Close()
	err = st.Update(context.Background(), func(tx store.Tx) error {
		for _, r := range rows {
			if err := v.Put(tx, r.provider, r.address, r.username, r.password); err != nil {
				return fmt.Errorf("%s:%d: %w", file, r.line, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w; nothing imported", err)
	}
	if err := st.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %d credentials for %d members\n", len(rows), len(members))
	return nil
}

// vaultRow is one credential of an import file.
type vaultRow struct {
	line                                  int
	address, provider, username, password string
}

// parseVaultCSV reads and checks a whole import file. It returns every
// problem, each as "FILE:LINE: ...", or the rows when there is none. No
// message quotes a password or a username.
func parseVaultCSV(data []byte, file string, cfg *config.Config, cfgPath string) ([]vaultRow, error) {
	data = bytes.TrimPrefix(data, []byte("\uFEFF")) // spreadsheets' UTF-8 byte order mark
	r := csv.NewReader(bytes.NewReader(data))
	r.Comma = vaultDelimiter(data)
	r.FieldsPerRecord = -1
	var (
		rows  []vaultRow
		errs  []error
		cols  []int // index of each vaultColumns entry in a record
		seen  = map[string]int{}
		total int
	)
	bad := func(line int, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s", file, line, fmt.Sprintf(format, args...)))
	}
	for first := true; ; first = false {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		var pe *csv.ParseError
		if errors.As(err, &pe) {
			// After a quoting error the reader's idea of rows is unsure.
			bad(pe.Line, "%v; the rows after it were not checked", pe.Err)
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		if first {
			if strings.Contains(rec[0], "@") {
				cols = []int{0, 1, 2, 3}
			} else {
				if cols = vaultHeader(rec); cols == nil {
					bad(line, "want the header %s, or a first row whose first field is an address", strings.Join(vaultColumns, ","))
					break
				}
				continue
			}
		}
		total++
		if len(rec) != len(vaultColumns) {
			bad(line, "want %d fields (%s), got %d", len(vaultColumns), strings.Join(vaultColumns, ","), len(rec))
			continue
		}
		row := vaultRow{
			line:     line,
			address:  strings.TrimSpace(rec[cols[0]]),
			provider: strings.TrimSpace(rec[cols[1]]),
			username: strings.TrimSpace(rec[cols[2]]),
			password: rec[cols[3]], // as written: spaces may be part of it
		}
		if msg := checkVaultRow(cfg, cfgPath, row); msg != "" {
			bad(line, "%s", msg)
			continue
		}
		k := row.provider + "\x00" + strings.ToLower(row.address)
		if prev, ok := seen[k]; ok {
			bad(line, "%s on %s already given on line %d", row.address, row.provider, prev)
			continue
		}
		seen[k] = line
		rows = append(rows, row)
	}
	if len(errs) > 0 {
		errs = append(errs, fmt.Errorf("nothing imported: %d of %d rows are wrong", len(errs), max(total, len(errs))))
		return nil, errors.Join(errs...)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no credentials in the file", file)
	}
	return rows, nil
}

// vaultDelimiter is ';' when the first line splits into the four columns
// by ';' and not by ',' (spreadsheets in Italian locales write ';'), ','
// otherwise.
func vaultDelimiter(data []byte) rune {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	count := func(comma rune) int {
		r := csv.NewReader(bytes.NewReader(first))
		r.Comma = comma
		r.FieldsPerRecord = -1
		rec, err := r.Read()
		if err != nil {
			return 0
		}
		return len(rec)
	}
	if count(',') != len(vaultColumns) && count(';') == len(vaultColumns) {
		return ';'
	}
	return ','
}

// vaultHeader maps a header record to the record index of each of
// vaultColumns, or returns nil when rec is not exactly those names.
func vaultHeader(rec []string) []int {
	if len(rec) != len(vaultColumns) {
		return nil
	}
	cols := make([]int, len(vaultColumns))
	for i := range cols {
		cols[i] = -1
	}
	for i, name := range rec {
		j := slices.Index(vaultColumns, strings.ToLower(strings.TrimSpace(name)))
		if j < 0 || cols[j] >= 0 {
			return nil
		}
		cols[j] = i
	}
	return cols
}

// checkVaultRow returns what is wrong with a row, or "".
func checkVaultRow(cfg *config.Config, cfgPath string, r vaultRow) string {
	at := strings.LastIndexByte(r.address, '@')
	switch {
	case r.address == "":
		return "empty address"
	case at <= 0 || at == len(r.address)-1 || strings.ContainsFunc(r.address, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }):
		return fmt.Sprintf("%q is not an address", r.address)
	}
	d := cfg.LookupDomain(r.address)
	if d == nil {
		return fmt.Sprintf("%s: the domain %s is not served (no [domains.%q] in %s)", r.address, strings.ToLower(r.address[at+1:]), strings.ToLower(r.address[at+1:]), cfgPath)
	}
	pc := cfg.Providers[r.provider]
	switch {
	case r.provider == "":
		return "empty provider"
	case pc == nil:
		return fmt.Sprintf("provider %q is not configured (configured: %s)", r.provider, strings.Join(slices.Sorted(maps.Keys(cfg.Providers)), ", "))
	case pc.Auth != config.AuthVault:
		return fmt.Sprintf("provider %s has auth = %q, not \"vault\": it takes no stored credentials", r.provider, pc.Auth)
	case r.provider != d.Old && r.provider != d.New:
		return fmt.Sprintf("provider %s is neither the old (%s) nor the new (%s) provider of %s", r.provider, d.Old, orNone(d.New), d.Name)
	case r.username == "":
		return fmt.Sprintf("%s: empty username", r.address)
	case strings.ContainsFunc(r.username, unicode.IsControl):
		return fmt.Sprintf("%s: the username holds a control character", r.address)
	case r.password == "":
		return fmt.Sprintf("%s: empty password", r.address)
	case strings.ContainsAny(r.password, "\x00\r\n"):
		return fmt.Sprintf("%s: the password holds a line break or a NUL byte", r.address)
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
