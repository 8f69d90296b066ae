package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// startAdmin serves the admin API on [server] admin until stop is called
// or ctx ends; addr is the bound address. With the listener disabled ("")
// it returns "", a no-op stop and no error. The token comes from [admin]
// token_file, trimmed; an empty token is an error, a file that group or
// others may read only a warning.
func startAdmin(ctx context.Context, cfg *config.Config, router *store.Router, log *slog.Logger) (addr string, stop func(), err error) {
	listen := config.Addr(cfg.Server.Admin)
	if listen == "" {
		return "", func() {}, nil
	}
	token, err := readToken(cfg.Admin.TokenFile, log)
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("server.admin: %w", err)
	}
	srv := &http.Server{
		Handler:           admin.New(admin.Options{Router: router, Token: token, Log: log}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("listening", "listener", "admin", "addr", ln.Addr().String())
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-ctx.Done()
		// Admin calls are short: wait a little for them, then cut.
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	return ln.Addr().String(), func() { cancel(); <-shut; <-done }, nil
}

// readToken reads the admin bearer token from path.
func readToken(path string, log *slog.Logger) (string, error) {
	if path == "" {
		return "", errors.New("admin.token_file: required while server.admin is enabled")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("admin.token_file: %s is empty; put a long random token in it (e.g. openssl rand -hex 32 > %s)", path, path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("admin token file is readable by group or others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	return token, nil
}
