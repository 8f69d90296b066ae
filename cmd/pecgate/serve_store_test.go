package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/config"
)

// A configuration naming a PostgreSQL store is refused, not served from
// the embedded store behind the operator's back.
func TestServeRefusesPostgresStore(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[server]
hostname = "gw.example"
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""
[tls]
self_signed = true
[store]
path = "`+t.TempDir()+`"
url = "postgres://pecgate@localhost/pecgate"
[providers.old]
imap = "imaps://127.0.0.1:1"
smtp = "smtps://127.0.0.1:1"
[domains."example.org"]
old = "old"
`), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	gw, err := startGateway(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		gw.shutdown(0)
		t.Fatal("the gateway started with [store] url set")
	}
	if !strings.Contains(err.Error(), "store.url") || !strings.Contains(err.Error(), "not available") {
		t.Errorf("error %q, want it to name store.url and say it is not available", err)
	}
}
