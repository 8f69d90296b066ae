package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pecgate/pecgate/config"
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
