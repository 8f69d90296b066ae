package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// TestHelp runs every subcommand with -h, as an operator would, and checks
// that it exits 0 and prints a usage line, an examples section whose
// examples run that subcommand, and a description of each flag the
// examples use.
func TestHelp(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run([]string{c.name, "-h"}, &stdout, &stderr)
			out := stdout.String() + stderr.String()
			if code != 0 {
				t.Fatalf("pecgate %s -h: exit %d, want 0\n%s", c.name, code, out)
			}
			if !strings.HasPrefix(out, "usage: pecgate "+c.name) {
				t.Errorf("pecgate %s -h does not start with a usage line:\n%s", c.name, out)
			}
			_, after, ok := strings.Cut(out, "\nexamples:\n")
			if !ok {
				t.Fatalf("pecgate %s -h has no examples section:\n%s", c.name, out)
			}
			examples, flags, _ := strings.Cut(after, "\n\n")
			n := 0
			for _, line := range strings.Split(examples, "\n") {
				cmdline, _, _ := strings.Cut(strings.TrimSpace(line), "#")
				fields := strings.Fields(cmdline)
				if len(fields) < 2 || fields[0] != "pecgate" {
					continue
				}
				if fields[1] != c.name {
					t.Errorf("pecgate %s -h: example %q runs another subcommand", c.name, line)
				}
				n++
				for _, f := range fields[2:] {
					if !strings.HasPrefix(f, "-") || f == "-" {
						continue
					}
					name, _, _ := strings.Cut(f, "=")
					if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(name) + `(\s|$)`).MatchString(flags) {
						t.Errorf("pecgate %s -h: example %q uses %s, which the flags section does not describe", c.name, strings.TrimSpace(line), name)
					}
				}
			}
			if n == 0 {
				t.Errorf("pecgate %s -h: no example runs pecgate %s:\n%s", c.name, c.name, examples)
			}
		})
	}
}

// TestHelpTopLevel checks `pecgate -h`: exit 0, every subcommand listed,
// examples, and where to look next. Without arguments the same text is
// printed with exit 2.
func TestHelpTopLevel(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{{[]string{"-h"}, 0}, {[]string{"help"}, 0}, {nil, 2}} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != tc.code {
			t.Errorf("pecgate %v: exit %d, want %d", tc.args, code, tc.code)
		}
		out := stderr.String()
		for _, c := range commands() {
			if !strings.Contains(out, "\n  "+c.name+" ") {
				t.Errorf("pecgate %v does not list %s:\n%s", tc.args, c.name, out)
			}
		}
		for _, want := range []string{"usage: pecgate COMMAND", "\nexamples:\n  pecgate demo", "pecgate COMMAND -h"} {
			if !strings.Contains(out, want) {
				t.Errorf("pecgate %v lacks %q:\n%s", tc.args, want, out)
			}
		}
	}
}

// TestUsageErrorSaysWhereToLook checks that a wrongly called subcommand
// exits 2 and points at its -h.
func TestUsageErrorSaysWhereToLook(t *testing.T) {
	for _, args := range [][]string{
		{"route", "pec.ordine.example"},
		{"status", "a", "b"},
		{"verify"},
		{"vault", "export"},
		{"serve", "extra"},
		{"demo", "-log-format", "xml"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "usage: pecgate "+args[0]) || !strings.Contains(stderr.String(), "pecgate "+args[0]+" -h") {
			t.Errorf("pecgate %s: exit %d, want 2 with the usage line and a pointer to -h:\n%s", strings.Join(args, " "), code, stderr.String())
		}
	}
}
