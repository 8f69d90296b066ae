package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/pecgate/pecgate/admin"
)

const statusUsage = `usage: pecgate status [-config FILE] [DOMAIN|USER]

Shows the routing of the running gateway, through its admin API: every
domain (or one domain and its users with their own state), or one user's
route.

examples:
  pecgate status
  pecgate status pec.ordine.example
  pecgate status mario.rossi@pec.ordine.example

flags:
`

func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	pos, err := parseInterleaved(fs, args, statusUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "pecgate status: want at most one DOMAIN or USER, got %d arguments\n", len(pos))
		return errUsage
	}
	c, err := adminClient(*cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	switch {
	case len(pos) == 0:
		list, err := c.Domains(ctx)
		if err != nil {
			return err
		}
		printDomains(stdout, list)
	case strings.Contains(pos[0], "@"):
		u, err := c.User(ctx, pos[0])
		if err != nil {
			return err
		}
		printUser(stdout, u)
	default:
		d, err := c.Domain(ctx, pos[0])
		if err != nil {
			return err
		}
		printDomains(stdout, []admin.Domain{*d})
		if len(d.Users) > 0 {
			fmt.Fprintln(stdout)
			tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "USER\tSTATE")
			for _, u := range d.Users {
				fmt.Fprintf(tw, "%s\t%s\n", u.User, u.State)
			}
			tw.Flush()
		}
	}
	return nil
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

func printUser(w io.Writer, u *admin.User) {
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
	if len(u.Progress) > 0 {
		// The progress bars come with a later issue; until then, the raw document.
		var b bytes.Buffer
		if json.Compact(&b, u.Progress) == nil {
			fmt.Fprintf(tw, "progress:\t%s\n", b.Bytes())
		}
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
