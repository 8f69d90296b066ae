package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/store/pg"
)

// pgOpenTimeout bounds connecting to PostgreSQL and checking pecgate's
// tables when a command opens the store named by [store] url.
const pgOpenTimeout = 30 * time.Second

// openPG opens the PostgreSQL store named by [store] url. Several
// processes may have it open at once: the gateway, pecgate vault import,
// pecgate verify and pecgate preflight. The error never shows the URL,
// which may hold a password.
func openPG(ctx context.Context, cfg *config.Config) (*pg.DB, error) {
	ctx, cancel := context.WithTimeout(ctx, pgOpenTimeout)
	defer cancel()
	db, err := pg.Open(ctx, cfg.Store.URL)
	if err != nil {
		return nil, fmt.Errorf("store.url: %w (check that PostgreSQL runs and that [store] url names its host, port, database, user and password)", err)
	}
	return db, nil
}

// openStore opens the store [store] names: PostgreSQL when url is set
// (openPG), else the embedded store in path, whose error is
// bolt.ErrLocked when another process (the gateway) holds it.
func openStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	if cfg.Store.URL != "" {
		db, err := openPG(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return db, nil
	}
	db, err := bolt.Open(cfg.Store.Path)
	if err != nil {
		return nil, err
	}
	return db, nil
}
