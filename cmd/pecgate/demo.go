package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/demo"
)

// demoShutdownGrace is how long the demo gateway waits for sessions to end.
const demoShutdownGrace = 5 * time.Second

func runDemo(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runDemoContext(ctx, args, stdout, stderr)
}

// runDemoContext is runDemo stopping when ctx ends instead of on a signal.
func runDemoContext(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for the demo's files, kept afterwards (default: a temporary one, deleted on exit)")
	randomPorts := fs.Bool("random-ports", false, "listen on random ports instead of trying 1993, 1143, 1465 and 1587 first")
	logFormat := fs.String("log-format", "text", "gateway log format: text or json")
	quiet := fs.Bool("quiet", false, "no gateway or provider logs")
	copyRate := fs.Float64("copy-rate", demo.DefaultCopyRate, "messages per second the back-fill copies from old; 0 means unlimited")
	noPhones := fs.Bool("no-phones", false, "start no simulated phones (they log some members in every minute)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pecgate demo [-dir DIR] [-random-ports] [-copy-rate N] [-no-phones] [-log-format text|json] [-quiet]\n\n"+
			"Runs two in-process mail providers, \"old\" and \"new\", and the gateway in front of\n"+
			"them on 127.0.0.1, serving %s in state old; prints the addresses, users,\n"+
			"passwords and commands to try. SIGINT or SIGTERM stops it.\n\n"+
			"examples:\n"+
			"  pecgate demo                          # ports 1993, 1143, 1465, 1587 when free\n"+
			"  pecgate demo -random-ports -quiet     # any free ports, no logs\n"+
			"  pecgate demo -dir /tmp/pecgate-demo   # keep its files (store, certificates) afterwards\n\nflags:\n", demo.Domain)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 0 || *logFormat != "text" && *logFormat != "json" {
		return errUsage
	}
	rate := *copyRate // demo.Options: 0 is the default, negative unlimited
	if rate <= 0 {
		rate = -1
	}
	log := slog.New(slog.DiscardHandler)
	if !*quiet {
		log = newLogger(config.Log{Format: *logFormat, Level: config.DefaultLogLevel}, stderr)
	}
	return demo.Run(ctx, demo.Options{
		Dir:         *dir,
		RandomPorts: *randomPorts,
		LogFormat:   *logFormat,
		Log:         log,
		CopyRate:    rate,
		NoPhones:    *noPhones,
		StartGateway: func(ctx context.Context, cfg *config.Config) (*demo.Gateway, error) {
			gw, err := startGateway(ctx, cfg, log)
			if err != nil {
				return nil, err
			}
			return &demo.Gateway{
				Addrs:   gw.addrs,
				CertPEM: gw.certs.CertificatePEM(),
				Stop:    func() { gw.shutdown(demoShutdownGrace) },
				Failed:  gw.failed,
			}, nil
		},
	}, stdout)
}
