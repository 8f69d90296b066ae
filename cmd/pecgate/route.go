package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
)

// callTimeout bounds one CLI conversation with the admin API.
const callTimeout = time.Minute

const routeUsage = `usage: pecgate route [-config FILE] [-force] [-y] DOMAIN|USER STATE

Changes where a domain's or a user's mail lives, on the running gateway,
through its admin API ([server] admin, with the token in [admin] token_file).
Connected clients follow the change without reconnecting.

DOMAIN|USER  a domain served by the gateway, or a user's address (has '@')
STATE        old, migrating or new; for a user also "domain": drop the
             user's own state, follow its domain again

A domain goes old -> migrating -> new; migrating -> old is the rollback.
Refused unless -force: old -> new and new -> old (go through migrating), and
migrating -> new while messages are not yet in new.

examples:
  pecgate route pec.ordine.example migrating
  pecgate route pec.ordine.example new
  pecgate route -y pec.ordine.example new -force
  pecgate route mario.rossi@pec.ordine.example old
  pecgate route mario.rossi@pec.ordine.example domain

flags:
`

// stdinIsTerminal says whether f looks like a terminal (a character
// device): route asks for confirmation only there.
func stdinIsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func runRoute(args []string, stdout, stderr io.Writer) error {
	return route(args, os.Stdin, stdinIsTerminal(os.Stdin), stdout, stderr)
}

// parseInterleaved parses fs from args, letting positional arguments come
// before, between or after the flags, and returns them. A bad flag is
// reported on stderr and returned as errUsage; -h prints usage and returns
// flag.ErrHelp.
func parseInterleaved(fs *flag.FlagSet, args []string, usage string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stderr, usage)
				fs.SetOutput(stderr)
				fs.PrintDefaults()
				return nil, err
			}
			fmt.Fprintf(stderr, "pecgate %s: %v\n", fs.Name(), err)
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// adminClient reads the config at path for the admin address and token.
func adminClient(path string) (*admin.Client, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w\n(fix the configuration file %s, or name another with -config)", err, path)
	}
	addr := config.Addr(cfg.Server.Admin)
	if addr == "" {
		return nil, fmt.Errorf("the admin API is disabled in %s ([server] admin = \"\"): enable it to reach the running gateway", path)
	}
	data, err := os.ReadFile(cfg.Admin.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin.token_file: %w (run as a user who can read it)", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return nil, fmt.Errorf("admin.token_file: %s is empty", cfg.Admin.TokenFile)
	}
	return admin.NewClient(addr, token)
}

// route is `pecgate route`, reading the confirmation from in when tty.
func route(args []string, in io.Reader, tty bool, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("route", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	force := fs.Bool("force", false, "do it even if a rule refuses it (old -> new, new -> old, migrating -> new with messages not yet in new)")
	yes := fs.Bool("y", false, "do not ask for confirmation (needed when stdin is not a terminal)")
	pos, err := parseInterleaved(fs, args, routeUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		fmt.Fprintf(stderr, "pecgate route: want DOMAIN|USER and STATE, got %d arguments\n", len(pos))
		return errUsage
	}
	target, state := pos[0], strings.ToLower(pos[1])
	isUser := strings.Contains(target, "@")
	switch {
	case state == config.StateOld || state == config.StateMigrating || state == config.StateNew:
	case state == "domain" && isUser:
		state = ""
	case isUser:
		fmt.Fprintf(stderr, "pecgate route: unknown state %q: want old, migrating, new or domain\n", pos[1])
		return errUsage
	default:
		fmt.Fprintf(stderr, "pecgate route: unknown state %q: want old, migrating or new\n", pos[1])
		return errUsage
	}
	c, err := adminClient(*cfgPath)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()

	// Say what is about to happen.
	var plan string
	if isUser {
		u, err := c.User(ctx, target)
		if err != nil {
			return err
		}
		target = u.User
		switch {
		case state == "" && u.Overridden != "user":
			fmt.Fprintf(stdout, "%s: already follows %s (%s); nothing to do\n", u.User, u.Domain, u.State)
			return nil
		case state == "":
			plan = fmt.Sprintf("%s: %s -> %s (follows %s again)", u.User, u.State, u.DomainState, u.Domain)
		case u.Overridden == "user" && u.State == state:
			fmt.Fprintf(stdout, "%s: already %s; nothing to do\n", u.User, state)
			return nil
		case u.State == state:
			plan = fmt.Sprintf("%s: %s -> %s (its own state from now on: it stays %s when %s moves)", u.User, u.State, state, state, u.Domain)
		default:
			plan = fmt.Sprintf("%s: %s -> %s (its own state; %s is %s)", u.User, u.State, state, u.Domain, u.DomainState)
		}
	} else {
		d, err := c.Domain(ctx, target)
		if err != nil {
			return err
		}
		target = d.Name
		if d.State == state {
			fmt.Fprintf(stdout, "%s: already %s; nothing to do\n", d.Name, state)
			return nil
		}
		plan = fmt.Sprintf("%s: %s -> %s", d.Name, d.State, state)
		switch d.UserOverrides {
		case 0:
		case 1:
			plan += " (1 user with its own state keeps it)"
		default:
			plan += fmt.Sprintf(" (%d users with their own state keep it)", d.UserOverrides)
		}
	}
	if *force {
		plan += ", forced"
	}
	fmt.Fprintln(stdout, plan)
	if !isUser {
		// What the flip would do, before anyone confirms it: the same
		// rules and count the change itself uses.
		p, err := c.PreviewDomain(ctx, target, state)
		if err != nil {
			return err
		}
		switch {
		case !p.Allowed && !*force:
			return refusal(&admin.Error{Status: 409, Message: p.Reason, Uncopied: max(p.Uncopied, 0), Forceable: p.Forceable}, target)
		case !p.Allowed:
			fmt.Fprintf(stdout, "  refused without -force: %s\n", p.Reason)
		}
		switch {
		case state != config.StateNew:
		case p.Uncopied > 0:
			fmt.Fprintf(stdout, "  %d messages are not yet in new and would be left behind (clients see only what is in new)\n", p.Uncopied)
		case p.Uncopied < 0:
			fmt.Fprintln(stdout, "  nobody can tell how many messages would be left behind")
		default:
			fmt.Fprintln(stdout, "  every message is in new: nothing is left behind")
		}
	}

	if !*yes {
		if !tty {
			return errors.New("stdin is not a terminal, so nobody can confirm: run again with -y to proceed without asking")
		}
		fmt.Fprint(stdout, "Proceed? [y/N] ")
		line, _ := bufio.NewReader(in).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return errors.New("cancelled; nothing changed")
		}
	}

	var res *admin.ChangeResult
	if isUser {
		res, err = c.SetUser(ctx, target, state, *force)
	} else {
		res, err = c.SetDomain(ctx, target, state, *force)
	}
	var ae *admin.Error
	if errors.As(err, &ae) && ae.Status == 409 {
		return refusal(ae, target)
	}
	if err != nil {
		return err
	}
	done := fmt.Sprintf("%s: now %s", res.Name, res.To)
	if res.Cleared {
		done += " (follows its domain)"
	}
	fmt.Fprintln(stdout, done)
	if res.Forced {
		switch {
		case res.Uncopied > 0:
			fmt.Fprintf(stdout, "forced: %d messages were not yet in new\n", res.Uncopied)
		case res.Uncopied < 0:
			fmt.Fprintln(stdout, "forced: how many messages were not yet in new is unknown")
		default:
			fmt.Fprintln(stdout, "forced")
		}
	}
	return nil
}

// refusal is the error `pecgate route` ends with when the gateway refuses
// (or would refuse) a change: why, and what to do next.
func refusal(ae *admin.Error, target string) error {
	msg := "refused: " + ae.Message
	if ae.Uncopied > 0 {
		msg += fmt.Sprintf("\n%d messages are not yet in new; the back-fill is still copying (see pecgate status %s)", ae.Uncopied, target)
	}
	if ae.Forceable {
		msg += "\nrun again with -force to do it anyway"
		if ae.Uncopied > 0 {
			msg += " (clients then see only what is already in new)"
		}
	}
	return errors.New(msg)
}
