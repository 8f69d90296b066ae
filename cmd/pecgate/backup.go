package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store/bolt"
)

const backupUsage = `usage: pecgate backup [-config FILE] [-force] OUT.db

Copies the embedded store ([store] path, the file pecgate.db: routing
states, UID maps, folder maps, password verifiers, the vault's sealed
credentials, copy progress) to OUT.db, while the gateway keeps serving.

With the gateway running, the copy comes through its admin API
(GET /api/v1/backup): one consistent snapshot, taken while clients and the
back-fill go on. With the gateway stopped (nothing answers on
[server] admin), the store file is read directly. Either way the copy is
written next to OUT.db first, checked page by page, and only then renamed
to OUT.db, mode 0600: it holds the vault (sealed with [vault] key_file,
which is not in it; keep a copy of that file apart) and the password
verifiers. OUT.db "-" writes to stdout, unchecked.

To restore: stop the gateway, put the copy at STORE_PATH/pecgate.db,
start the gateway. A PostgreSQL store ([store] url) is backed up with
pg_dump instead.

examples:
  pecgate backup /var/backups/pecgate/pecgate-$(date +%F).db
  pecgate backup -force /var/backups/pecgate/latest.db
  pecgate backup -config /etc/pecgate/pecgate.toml - | gzip > pecgate.db.gz

flags:
`

func runBackup(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return backup(ctx, args, stdout, stderr)
}

// backup is `pecgate backup`.
func backup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	cfgPath := fs.String("config", defaultConfig, "configuration file")
	force := fs.Bool("force", false, "replace OUT.db if it exists")
	pos, err := parseInterleaved(fs, args, backupUsage, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 || pos[0] == "" {
		fmt.Fprintf(stderr, "pecgate backup: want one OUT.db, got %d arguments\n", len(pos))
		return errUsage
	}
	out := pos[0]
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return fmt.Errorf("%w\n(fix the configuration file %s, or name another with -config)", err, *cfgPath)
	}
	if cfg.Store.URL != "" {
		return errors.New("store.url is set: back up the PostgreSQL store with pg_dump; pecgate backup copies only the embedded store")
	}
	if out == "-" {
		_, how, err := copyStore(ctx, cfg, *cfgPath, stdout, stderr)
		if err == nil {
			fmt.Fprintf(stderr, "pecgate backup: store copied to stdout (%s)\n", how)
		}
		return err
	}
	if _, err := os.Lstat(out); err == nil && !*force {
		return fmt.Errorf("%s exists: name another file, or add -force to replace it", out)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*.partial")
	if err != nil {
		return fmt.Errorf("cannot write the copy next to %s: %w", out, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	n, how, err := copyStore(ctx, cfg, *cfgPath, tmp, stderr)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w; %s not written", err, out)
	}
	if _, err := bolt.CheckFile(tmp.Name()); err != nil {
		return fmt.Errorf("the copy failed its check, %s not written: %w (run pecgate backup again)", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d bytes, checked (%s)\nto restore: stop the gateway, copy it to %s, start the gateway\n",
		out, n, how, filepath.Join(cfg.Store.Path, bolt.FileName))
	return nil
}

// copyStore writes the store to w through the running gateway's admin API,
// or, when nothing listens there, from the store file itself. how says
// which.
func copyStore(ctx context.Context, cfg *config.Config, cfgPath string, w io.Writer, stderr io.Writer) (n int64, how string, err error) {
	if addr := config.Addr(cfg.Server.Admin); addr != "" {
		c, err := adminClient(cfgPath)
		if err != nil {
			return 0, "", err
		}
		n, err := c.Backup(ctx, w)
		if !errors.Is(err, syscall.ECONNREFUSED) || n != 0 {
			return n, "from the running gateway at " + addr, err
		}
		fmt.Fprintf(stderr, "pecgate backup: nothing answers at %s (the admin API); reading the store file directly\n", addr)
	}
	file := filepath.Join(cfg.Store.Path, bolt.FileName)
	if _, err := os.Stat(file); err != nil {
		return 0, "", fmt.Errorf("no store to copy: %w (is [store] path in %s right?)", err, cfgPath)
	}
	db, err := bolt.Open(cfg.Store.Path)
	if errors.Is(err, bolt.ErrLocked) {
		return 0, "", fmt.Errorf("the store %s is in use by a running gateway whose admin API does not answer: enable [server] admin in %s and restart it, or stop it and run pecgate backup again", file, cfgPath)
	}
	if err != nil {
		return 0, "", err
	}
	defer db.Close()
	cw := &countingWriter{w: w}
	err = db.Backup(cw)
	return cw.n, "from the store file; the gateway is stopped", err
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
