package main

import (
	"strings"
	"testing"
)

// TestStoreURLUnreachable: pecgate verify, preflight and vault import with
// [store] url naming a PostgreSQL that does not answer exit 1 with an
// error that names store.url and does not show the password; the import
// says nothing was imported.
func TestStoreURLUnreachable(t *testing.T) {
	const secret = "s3cret-db-pw"
	dbURL := "postgres://pecgate:" + secret + "@" + freeAddrs(t, 1)[0] + "/pecgate?sslmode=disable&connect_timeout=5"
	vs := writeVerifyConfig(t, nil, nil)
	usePG(t, vs.config, dbURL)
	vault := newVaultSetup(t)
	usePG(t, vault.config, dbURL)
	csvFile := vault.csv(t, "m.csv", "anna@pec.ordine.example,infocert,U1,pw1\n")
	for _, c := range []struct {
		name string
		run  func() (int, string, string)
		want string
	}{
		{"verify", func() (int, string, string) { return vs.run("pec.ordine.example") }, "store.url"},
		{"preflight", func() (int, string, string) { return vs.preflight("pec.ordine.example") }, "store.url"},
		{"vault import", func() (int, string, string) { return vault.run("vault", "-config", vault.config, "import", csvFile) }, "nothing imported"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := c.run()
			if code != 1 || !strings.Contains(stderr, "store.url") || !strings.Contains(stderr, c.want) ||
				!strings.Contains(stderr, "connect") || strings.Contains(stdout+stderr, secret) {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
		})
	}
}
