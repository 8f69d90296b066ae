package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	gosync "sync"
	"syscall"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/proxy"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/sync"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	logFormat := fs.String("log-format", "", "json or text (default: the config's [log] format)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pecgate serve [-config FILE] [-log-format json|text]\n\n"+
			"Runs the gateway: IMAP on [server] imaps/imap, submission on smtps/submission,\n"+
			"the admin API and status page on [server] admin, and the back-fill of every\n"+
			"domain or member in state migrating. The configuration is checked whole first:\n"+
			"every problem is listed with its line, and nothing starts.\n\n"+
			"SIGTERM or SIGINT: stop accepting, BYE to idle sessions, wait up to shutdown_grace, exit.\n"+
			"SIGHUP: reload the TLS certificates (systemctl reload pecgate).\n\n"+
			"examples:\n"+
			"  pecgate serve -config /etc/pecgate/pecgate.toml\n"+
			"  pecgate serve -config ./pecgate.toml -log-format text   # readable logs on a terminal\n"+
			"  systemctl start pecgate                                 # the same, from dist/pecgate.service\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() != 0 {
		return errUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\n(fix the configuration file %s and try again)", err, *cfgPath)
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	log := newLogger(cfg.Log, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	gw, err := startGateway(ctx, cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			if err := gw.certs.Reload(); err != nil {
				log.Error("certificate reload failed, keeping the old ones", "err", err)
			} else {
				log.Info("certificates reloaded")
			}
		case err := <-gw.failed:
			gw.shutdown(time.Duration(cfg.Server.ShutdownGrace))
			return err
		case <-ctx.Done():
			log.Info("shutting down", "grace", time.Duration(cfg.Server.ShutdownGrace).String())
			gw.shutdown(time.Duration(cfg.Server.ShutdownGrace))
			log.Info("stopped")
			return nil
		}
	}
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// gateway is a running set of listeners.
type gateway struct {
	log       *slog.Logger
	certs     *certs.Manager
	store     store.Store
	router    *store.Router
	imap      *proxy.IMAPServer
	smtp      *proxy.SMTPServer
	addrs     map[string]string // listener name -> bound address
	failed    chan error
	cancel    context.CancelFunc
	stopAdmin func()
	wg        gosync.WaitGroup
}

// startGateway binds every configured listener (all or none) and serves
// them until shutdown.
func startGateway(ctx context.Context, cfg *config.Config, log *slog.Logger) (*gateway, error) {
	cm, err := certs.New(cfg.TLS, cfg.Server.Hostname, log)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	backends, err := backend.New(cfg, log)
	if err != nil {
		return nil, err
	}
	reg, mets := newMetrics()
	backends.SetMetrics(mets)
	st, err := openStore(ctx, cfg)
	if err != nil {
		if cfg.Store.URL == "" {
			err = fmt.Errorf("store.path: %w", err)
		}
		return nil, err
	}
	router, err := store.NewRouter(ctx, cfg, st)
	if err != nil {
		st.Close()
		return nil, err
	}
	var secrets backend.Secrets
	var vault *store.Vault
	if cfg.Vault.KeyFile != "" {
		v, err := store.OpenVault(cfg.Vault.KeyFile)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("vault.key_file: %w", err)
		}
		vault, secrets = v, vaultSecrets{v: v, st: st}
	}
	maps := store.NewMapCache(st, 0)
	engine := sync.NewEngine(sync.Options{Config: cfg, Store: st, Maps: maps, Router: router, Backends: backends, Secrets: secrets, Log: log, Metrics: mets})
	// migrating -> new is refused while the engine counts messages left.
	router.Uncopied = engine.Uncopied
	// One limiter: a password guessed over SMTP counts against IMAP too.
	opts := proxy.Options{
		Config: cfg, Backends: backends, TLS: cm.TLSConfig(), Log: log, Limiter: proxy.NewAuthLimiter(),
		Router: router, Maps: maps, Copier: sync.Copier{Metrics: mets}, Secrets: secrets, Backfill: engine,
		Metrics: mets,
	}
	ctx, cancel := context.WithCancel(ctx)
	gw := &gateway{
		log: log, certs: cm, cancel: cancel, store: st, router: router,
		imap: proxy.NewIMAP(opts), smtp: proxy.NewSMTP(opts),
		addrs: map[string]string{}, failed: make(chan error, 4),
	}
	type listener struct {
		name, addr string
		serve      func(net.Listener) error
	}
	all := []listener{
		{"imaps", config.Addr(cfg.Server.IMAPS), gw.imap.ServeTLS},
		{"imap", config.Addr(cfg.Server.IMAP), gw.imap.Serve},
		{"smtps", config.Addr(cfg.Server.SMTPS), gw.smtp.ServeTLS},
		{"submission", config.Addr(cfg.Server.Submission), gw.smtp.Serve},
	}
	var lns []net.Listener
	for _, l := range all {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			cancel()
			st.Close()
			return nil, fmt.Errorf("server.%s: %w", l.name, err)
		}
		lns = append(lns, ln)
		gw.addrs[l.name] = ln.Addr().String()
		gw.wg.Add(1)
		go func(l listener, ln net.Listener) {
			defer gw.wg.Done()
			log.Info("listening", "listener", l.name, "addr", ln.Addr().String())
			if err := l.serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				gw.failed <- fmt.Errorf("server.%s: %w", l.name, err)
			}
		}(l, ln)
	}
	gw.wg.Add(2)
	go func() {
		defer gw.wg.Done()
		cm.Watch(ctx, 5*time.Second)
	}()
	go func() {
		defer gw.wg.Done()
		if err := engine.Run(ctx); err != nil {
			log.Error("back-fill engine stopped", "err", err)
		}
	}()
	// The member page checks logins with the IMAP servers' limiter (opts).
	memberAuth, creds := memberDeps(opts, router, st, vault)
	adminAddr, stopAdmin, err := startAdminFor(ctx, cfg, adminDeps{Router: router, Store: st, Backends: backends,
		Metrics: metricsHandler(reg, log), Preflight: gatewayPreflight(cfg, backends, st, secrets, engine.KnownPassword, log),
		MemberAuth: memberAuth, Credentials: creds}, log)
	if err != nil {
		gw.shutdown(time.Second)
		return nil, fmt.Errorf("server.admin: %w", err)
	}
	if adminAddr != "" {
		gw.addrs["admin"] = adminAddr
	}
	gw.stopAdmin = stopAdmin
	memberAddr, stopMember, err := startMember(ctx, cfg, admin.Options{Router: router, Store: st, Log: log, MemberAuth: memberAuth, Credentials: creds}, cm.TLSConfig(), log)
	if err != nil {
		gw.shutdown(time.Second)
		return nil, err
	}
	if memberAddr != "" {
		gw.addrs["member"] = memberAddr
	}
	gw.stopAdmin = func() { stopMember(); stopAdmin() }
	return gw, nil
}

// newMetrics returns a registry of its own for one gateway, holding the Go
// runtime and process collectors and pecgate's metrics.
func newMetrics() (*prometheus.Registry, *metrics.Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, metrics.New(reg)
}

// metricsHandler serves reg in the Prometheus text format (GET /metrics);
// a collector's error is logged and the rest still served.
func metricsHandler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// vaultSecrets reads vault credentials from the store.
type vaultSecrets struct {
	v  *store.Vault
	st store.Store
}

func (s vaultSecrets) Credential(ctx context.Context, provider, user string) (username, password string, err error) {
	err = s.st.View(ctx, func(tx store.Tx) error {
		username, password, err = s.v.Get(tx, provider, user)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		// Nothing imported for this member: a permanent "no credentials",
		// not a passing fault.
		err = fmt.Errorf("%w: %s at %s", backend.ErrNoCredential, user, provider)
	}
	return username, password, err
}

// shutdown stops accepting, says BYE to idle sessions, waits up to grace
// for the others, then closes everything.
func (gw *gateway) shutdown(grace time.Duration) {
	if grace <= 0 {
		grace = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg gosync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); gw.imap.Shutdown(ctx) }()
	go func() { defer wg.Done(); gw.smtp.Shutdown(ctx) }()
	wg.Wait()
	if gw.stopAdmin != nil {
		gw.stopAdmin()
	}
	gw.cancel()
	gw.wg.Wait()
	gw.store.Close()
}
