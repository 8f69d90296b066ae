package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// vaultSetup is a configuration with an aruba (passthrough) -> infocert
// (vault) domain, a domain that stays on aruba, and a vault key.
type vaultSetup struct {
	dir, config, storeDir, keyFile string
}

func newVaultSetup(t testing.TB) *vaultSetup {
	t.Helper()
	dir := t.TempDir()
	s := &vaultSetup{
		dir:      dir,
		config:   filepath.Join(dir, "pecgate.toml"),
		storeDir: filepath.Join(dir, "store"),
		keyFile:  filepath.Join(dir, "vault.key"),
	}
	key := make([]byte, store.VaultKeySize)
	rand.Read(key)
	if err := os.WriteFile(s.keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := `
[server]
hostname = "gw.test"
admin = ""

[tls]
self_signed = true

[store]
path = "` + s.storeDir + `"

[vault]
key_file = "` + s.keyFile + `"

[providers.aruba]
preset = "aruba"

[providers.infocert]
preset = "infocert"
auth = "vault"

[providers.namirial]
preset = "namirial"
auth = "vault"

[domains."pec.ordine.example"]
old = "aruba"
new = "infocert"

[domains."pec.altro.example"]
old = "aruba"
`
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// csv writes a CSV file and returns its path.
func (s *vaultSetup) csv(t *testing.T, name, content string) string {
	t.Helper()
	f := filepath.Join(s.dir, name)
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (s *vaultSetup) run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// entries returns every vault entry of the store, opened with the key.
func (s *vaultSetup) entries(t *testing.T) map[string][2]string {
	t.Helper()
	v, err := store.OpenVault(s.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got := map[string][2]string{}
	err = db.View(context.Background(), func(tx store.Tx) error {
		return tx.ForEach(store.BucketVault, "", func(k string, _ []byte) error {
			provider, user, _ := strings.Cut(k, "\x00")
			u, p, err := v.Get(tx, provider, user)
			if err != nil {
				return err
			}
			got[provider+" "+user] = [2]string{u, p}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestVaultImport(t *testing.T) {
	passwords := []string{"pw-anna-1", `p,"x; y `, "pw-carlo-3"}
	for _, tc := range []struct {
		name, content string
	}{
		{"header", "address,provider,username,password\n" +
			"Anna@PEC.ordine.example,infocert,U0001,pw-anna-1\n" +
			"bruno@pec.ordine.example,infocert,U0002,\"p,\"\"x; y \"\n" +
			"carlo@pec.ordine.example , infocert , U0003 ,pw-carlo-3\n"},
		{"header reordered with BOM and CRLF", "\uFEFFPassword,Username,Address,Provider\r\n" +
			"pw-anna-1,U0001,Anna@PEC.ordine.example,infocert\r\n" +
			"\"p,\"\"x; y \",U0002,bruno@pec.ordine.example,infocert\r\n" +
			"\r\n" +
			"pw-carlo-3,U0003,carlo@pec.ordine.example,infocert\r\n"},
		{"no header", "Anna@PEC.ordine.example,infocert,U0001,pw-anna-1\n" +
			"bruno@pec.ordine.example,infocert,U0002,\"p,\"\"x; y \"\n" +
			"carlo@pec.ordine.example,infocert,U0003,pw-carlo-3\n"},
		{"semicolons", "address;provider;username;password\n" +
			"Anna@PEC.ordine.example;infocert;U0001;pw-anna-1\n" +
			"bruno@pec.ordine.example;infocert;U0002;\"p,\"\"x; y \"\n" +
			"carlo@pec.ordine.example;infocert;U0003;pw-carlo-3\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newVaultSetup(t)
			file := s.csv(t, "members.csv", tc.content)
			code, stdout, stderr := s.run("vault", "-config", s.config, "import", file)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if stdout != "imported 3 credentials for 3 members\n" {
				t.Fatalf("stdout %q", stdout)
			}
			for _, pw := range passwords {
				if strings.Contains(stdout+stderr, pw) {
					t.Fatalf("output holds a password: %q %q", stdout, stderr)
				}
			}
			want := map[string][2]string{
				"infocert anna@pec.ordine.example":  {"U0001", "pw-anna-1"},
				"infocert bruno@pec.ordine.example": {"U0002", `p,"x; y `},
				"infocert carlo@pec.ordine.example": {"U0003", "pw-carlo-3"},
			}
			got := s.entries(t)
			if len(got) != len(want) {
				t.Fatalf("store holds %v", got)
			}
			for k, w := range want {
				if got[k] != w {
					t.Errorf("%s: got %q, want %q", k, got[k], w)
				}
			}
			// The store file holds no password in clear.
			db, _ := os.ReadFile(filepath.Join(s.storeDir, bolt.FileName))
			for _, pw := range passwords {
				if bytes.Contains(db, []byte(pw)) {
					t.Fatalf("store file holds %q in clear", pw)
				}
			}
		})
	}

	t.Run("again replaces, flags after import", func(t *testing.T) {
		s := newVaultSetup(t)
		file := s.csv(t, "a.csv", "address,provider,username,password\nanna@pec.ordine.example,infocert,U0001,old\n")
		if code, _, stderr := s.run("vault", "-config", s.config, "import", file); code != 0 {
			t.Fatal(stderr)
		}
		file = s.csv(t, "b.csv", "address,provider,username,password\nANNA@pec.ordine.example,infocert,U0001,new\n")
		if code, _, stderr := s.run("vault", "import", "-config", s.config, file); code != 0 {
			t.Fatal(stderr)
		}
		if got := s.entries(t); len(got) != 1 || got["infocert anna@pec.ordine.example"] != [2]string{"U0001", "new"} {
			t.Fatalf("store holds %v", got)
		}
	})
}

func TestVaultImportBadRows(t *testing.T) {
	s := newVaultSetup(t)
	content := "address,provider,username,password\n" + // 1
		"anna@pec.ordine.example,infocert,U0001,pw-secret-1\n" + // 2 good
		"bruno@pec.ordine.example,aruba,U0002,pw-secret-2\n" + // 3 passthrough provider
		"carlo@pec.unknown.example,infocert,U0003,pw-secret-3\n" + // 4 domain not served
		"dario@pec.altro.example,infocert,U0004,pw-secret-4\n" + // 5 provider not of the domain
		"elena@pec.ordine.example,namirial,U0005,pw-secret-5\n" + // 6 vault, but not of the domain
		"fabio@pec.ordine.example,poste,U0006,pw-secret-6\n" + // 7 unknown provider
		"gina@pec.ordine.example,infocert,,pw-secret-7\n" + // 8 empty username
		"hana@pec.ordine.example,infocert,U0008,\n" + // 9 empty password
		"ivo@pec.ordine.example,infocert,U0009\n" + // 10 three fields
		"not-an-address,infocert,U0010,pw-secret-10\n" + // 11
		"ANNA@pec.ordine.example,infocert,U0001,pw-secret-11\n" + // 12 duplicate of 2
		"\n" +
		"luca@pec.ordine.example,infocert,U0012,\"pw-secret\n12\"\n" + // 14 line break in password
		"marco@pec.ordine.example,infocert,U0013,pw-secret-13\n" // 16 good
	file := s.csv(t, "bad.csv", content)
	code, stdout, stderr := s.run("vault", "-config", s.config, "import", file)
	if code != 1 || stdout != "" {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
	for _, want := range []string{
		file + `:3: provider aruba has auth = "passthrough", not "vault": it takes no stored credentials`,
		file + `:4: carlo@pec.unknown.example: the domain pec.unknown.example is not served (no [domains."pec.unknown.example"] in ` + s.config + `)`,
		file + `:5: provider infocert is neither the old (aruba) nor the new (none) provider of pec.altro.example`,
		file + `:6: provider namirial is neither the old (aruba) nor the new (infocert) provider of pec.ordine.example`,
		file + `:7: provider "poste" is not configured (configured: aruba, infocert, namirial)`,
		file + `:8: gina@pec.ordine.example: empty username`,
		file + `:9: hana@pec.ordine.example: empty password`,
		file + `:10: want 4 fields (address,provider,username,password), got 3`,
		file + `:11: "not-an-address" is not an address`,
		file + `:12: ANNA@pec.ordine.example on infocert already given on line 2`,
		file + `:14: luca@pec.ordine.example: the password holds a line break or a NUL byte`,
		"nothing imported: 11 of 13 rows are wrong",
	} {
		if !strings.Contains(stderr, want+"\n") {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if n := strings.Count(stderr, file+":"); n != 11 {
		t.Errorf("%d problems reported, want 11:\n%s", n, stderr)
	}
	if strings.Contains(stderr, "pw-secret") || strings.Contains(stderr, "U00") {
		t.Errorf("stderr holds a credential:\n%s", stderr)
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", stderr)
	}
	// Nothing written: the store was not even opened.
	if _, err := os.Stat(s.storeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("store directory: %v", err)
	}
}

func TestVaultImportFileErrors(t *testing.T) {
	s := newVaultSetup(t)
	for _, tc := range []struct {
		name, content, want string
	}{
		{"bad header", "mail,provider,user,password\nanna@pec.ordine.example,infocert,U1,pw\n",
			":1: want the header address,provider,username,password, or a first row whose first field is an address\n"},
		{"empty", "", "no credentials in the file"},
		{"header only", "address,provider,username,password\n", "no credentials in the file"},
		{"bad quoting", "address,provider,username,password\nanna@pec.ordine.example,infocert,U1,pw\nb@pec.ordine.example,infocert,\"U2,pw\n",
			`:3: extraneous or missing " in quoted-field; the rows after it were not checked`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := s.csv(t, strings.ReplaceAll(tc.name, " ", "_")+".csv", tc.content)
			code, _, stderr := s.run("vault", "-config", s.config, "import", file)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %q", code, stderr, tc.want)
			}
		})
	}
	if _, err := os.Stat(s.storeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("store directory: %v", err)
	}
	for _, args := range [][]string{
		{"vault"},
		{"vault", "-config", s.config},
		{"vault", "export", "x.csv"},
		{"vault", "import"},
		{"vault", "import", "a.csv", "b.csv"},
	} {
		if code, _, stderr := s.run(args...); code != 2 || !strings.Contains(stderr, "usage: pecgate vault") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestVaultImportCheck(t *testing.T) {
	s := newVaultSetup(t)
	os.Remove(s.keyFile) // -check needs neither the key nor the store
	file := s.csv(t, "m.csv", "anna@pec.ordine.example,infocert,U1,pw1\nbruno@pec.ordine.example,infocert,U2,pw2\n")
	code, stdout, stderr := s.run("vault", "-config", s.config, "import", "-check", file)
	if code != 0 || stdout != file+": 2 credentials for 2 members are valid; nothing written (-check)\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if _, err := os.Stat(s.storeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("store directory: %v", err)
	}
	// Without -check the missing key is reported with how to make one,
	// before the store is touched.
	code, _, stderr = s.run("vault", "-config", s.config, "import", file)
	if code != 1 || !strings.Contains(stderr, "head -c 32 /dev/urandom > "+s.keyFile) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(s.storeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("store directory: %v", err)
	}
}

func TestVaultImportStoreLocked(t *testing.T) {
	s := newVaultSetup(t)
	db, err := bolt.Open(s.storeDir) // the running gateway
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	file := s.csv(t, "m.csv", "anna@pec.ordine.example,infocert,U1,pw1\n")
	code, stdout, stderr := s.run("vault", "-config", s.config, "import", file)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "stop the gateway") || !strings.Contains(stderr, "nothing imported") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// FuzzVaultCSV writes one row with encoding/csv and parses the file: a row
// that is accepted comes back exactly (address, provider and username
// trimmed, the password as written), and no error quotes the password.
func FuzzVaultCSV(f *testing.F) {
	s := newVaultSetup(f)
	cfg, err := config.Load(s.config)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("anna", "infocert", "U0001", "pw", true, ',')
	f.Add(" Anna ", "infocert ", " U 1 ", ` p,"x;y `, false, ';')
	f.Add("a", "aruba", "u", "secret-pw", true, ',')
	f.Add("a\nb", "infocert", "u\x01", "line\nbreak-pw", true, ',')
	f.Add("a@b", "infocert", "u", "pw\r", false, ',')
	f.Fuzz(func(t *testing.T, local, provider, username, password string, header bool, comma rune) {
		if comma != ',' && comma != ';' {
			comma = ','
		}
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		w.Comma = comma
		if header {
			w.Write(vaultColumns)
		}
		address := local + "@pec.ordine.example"
		w.Write([]string{address, provider, username, password})
		w.Flush()
		rows, err := parseVaultCSV(buf.Bytes(), "f.csv", cfg, "pecgate.toml")
		if err != nil {
			if len(password) >= 6 && strings.Contains(err.Error(), password) {
				t.Fatalf("error quotes the password: %v", err)
			}
			return
		}
		want := vaultRow{line: 1, address: strings.TrimSpace(address), provider: strings.TrimSpace(provider),
			username: strings.TrimSpace(username), password: password}
		if header {
			want.line = 2
		}
		if len(rows) != 1 || rows[0] != want {
			t.Fatalf("got %+v, want %+v", rows, want)
		}
	})
}
