// Command pecgate is the pecgate gateway and its operator tools.
//
//	pecgate serve   [-config FILE]     run the gateway
//	pecgate demo                       run a self-contained demo on localhost
//	pecgate route   DOMAIN|USER STATE  change a migration state (admin API)
//	pecgate status  [DOMAIN|USER]      show migration progress (admin API)
//	pecgate preflight DOMAIN           check every member before a flip
//	pecgate verify  DOMAIN|USER        audit old against new
//	pecgate vault   import FILE.csv    import provider credentials
//	pecgate backup  OUT.db             copy the store (admin API, or the file)
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const defaultConfig = "/etc/pecgate/pecgate.toml"

type command struct {
	name, usage, summary string
	run                  func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "serve [-config FILE] [-log-format json|text]", "run the gateway", runServe},
		{"demo", "demo [-dir DIR] [-random-ports] [-copy-rate N] [-no-phones] [-log-format text|json] [-quiet]", "run old and new demo providers with PEC mail and the gateway on localhost", runDemo},
		{"route", "route [-config FILE] [-force] [-y] DOMAIN|USER old|migrating|new", "change a migration state", runRoute},
		{"status", "status [-config FILE] [-watch] [DOMAIN|USER]", "show migration progress", runStatus},
		{"preflight", "preflight [-config FILE] [-users FILE.csv] [-out FILE.csv] [-concurrency N] [-no-create] [-v] DOMAIN", "check every member before a flip: logins, quota, size limit, folder names", runPreflight},
		{"verify", "verify [-config FILE] [-out DIR] [-passwords FILE] [-v] DOMAIN|USER", "audit old against new: CSV, JSON and SHA-256 reports", runVerify},
		{"vault", "vault [-config FILE] import [-check] FILE.csv", "import provider credentials", runVault},
		{"backup", "backup [-config FILE] [-force] OUT.db", "copy the store, while the gateway runs", runBackup},
	}
}

// errUsage makes main print the usage and exit 2.
var errUsage = errors.New("usage")

// flagError turns a flag.FlagSet.Parse error (already reported by the
// flag set) into errUsage, so that a bad flag exits 2 like other usage
// errors; -h stays flag.ErrHelp (exit 0).
func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return errUsage
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "usage: pecgate COMMAND [flags]\n\ncommands:")
		for _, c := range commands() {
			fmt.Fprintf(stderr, "  %-10s %s\n", c.name, c.summary)
		}
		fmt.Fprintln(stderr, "\nexamples:\n"+
			"  pecgate demo                                   # try it all on localhost\n"+
			"  pecgate serve -config /etc/pecgate/pecgate.toml\n"+
			"  pecgate route pec.ordine.example migrating\n"+
			"  pecgate status -watch pec.ordine.example\n"+
			"\nRun 'pecgate COMMAND -h' for a command's flags and examples.")
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "usage: pecgate %s\n(run 'pecgate %s -h' for the flags and examples)\n", c.usage, c.name)
			return 2
		default:
			fmt.Fprintf(stderr, "pecgate %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "pecgate: unknown command %q\n\n", args[0])
	usage()
	return 2
}
