package store

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vaultMemTx is an in-memory Tx for the vault and verifier tests.
type vaultMemTx map[string][]byte

func (m vaultMemTx) Get(bucket, key string) ([]byte, error) {
	v, ok := m[bucket+"/"+key]
	if !ok {
		return nil, nil
	}
	return bytes.Clone(v), nil
}

func (m vaultMemTx) Put(bucket, key string, value []byte) error {
	m[bucket+"/"+key] = bytes.Clone(value)
	return nil
}

func (m vaultMemTx) Delete(bucket, key string) error {
	delete(m, bucket+"/"+key)
	return nil
}

func (m vaultMemTx) ForEach(bucket, prefix string, fn func(string, []byte) error) error {
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, bucket+"/"); ok && strings.HasPrefix(rest, prefix) {
			if err := fn(rest, v); err != nil {
				return err
			}
		}
	}
	return nil
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, VaultKeySize)
	rand.Read(k)
	return k
}

func newVault(t *testing.T, key []byte) *Vault {
	t.Helper()
	v, err := NewVault(key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVaultRoundTrip(t *testing.T) {
	v := newVault(t, randomKey(t))
	tx := vaultMemTx{}
	for _, tc := range []struct {
		name, provider, user, username, password string
	}{
		{"ascii", "infocert", "mario.rossi@pec.ordine.example", "U1234567", "s3cret!"},
		{"unicode and spaces", "infocert", "anna@pec.ordine.example", "ànna bianchi", " pass word €\t"},
		{"username with separator-like bytes", "aruba", "x@pec.ordine.example", "a\x01b", "\x00\x00"},
		{"long", "aruba", "long@pec.ordine.example", strings.Repeat("u", 300), strings.Repeat("p", 5000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := v.Put(tx, tc.provider, tc.user, tc.username, tc.password); err != nil {
				t.Fatal(err)
			}
			// The user is case-insensitive.
			u, p, err := v.Get(tx, tc.provider, strings.ToUpper(tc.user))
			if err != nil {
				t.Fatal(err)
			}
			if u != tc.username || p != tc.password {
				t.Fatalf("got %q %q, want %q %q", u, p, tc.username, tc.password)
			}
		})
	}
	// Nothing in the store holds a password in clear.
	for k, val := range tx {
		if bytes.Contains(val, []byte("s3cret!")) || bytes.Contains(val, []byte("U1234567")) {
			t.Fatalf("%q holds a credential in clear", k)
		}
	}
	// Two seals of the same credentials differ (random nonce).
	before := bytes.Clone(tx[BucketVault+"/infocert\x00mario.rossi@pec.ordine.example"])
	if err := v.Put(tx, "infocert", "Mario.Rossi@pec.ordine.example", "U1234567", "s3cret!"); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, tx[BucketVault+"/infocert\x00mario.rossi@pec.ordine.example"]) {
		t.Fatal("same sealed value twice")
	}
	// Replace, then delete.
	if err := v.Put(tx, "infocert", "mario.rossi@pec.ordine.example", "U1234567", "new"); err != nil {
		t.Fatal(err)
	}
	if _, p, err := v.Get(tx, "infocert", "mario.rossi@pec.ordine.example"); err != nil || p != "new" {
		t.Fatalf("after replace: %q %v", p, err)
	}
	if err := v.Delete(tx, "infocert", "MARIO.rossi@pec.ordine.example"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Get(tx, "infocert", "mario.rossi@pec.ordine.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v, want ErrNotFound", err)
	}
	if err := v.Delete(tx, "infocert", "mario.rossi@pec.ordine.example"); err != nil {
		t.Fatalf("delete absent: %v", err)
	}
	// Absent under another provider.
	if _, _, err := v.Get(tx, "namirial", "anna@pec.ordine.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other provider: %v, want ErrNotFound", err)
	}
}

func TestVaultBadInput(t *testing.T) {
	v := newVault(t, randomKey(t))
	tx := vaultMemTx{}
	for _, tc := range []struct{ provider, user, username, password string }{
		{"", "a@b", "u", "p"},
		{"p", "", "u", "p"},
		{"p\x00q", "a@b", "u", "p"},
		{"p", "a@b\x00", "u", "p"},
		{"p", "a@b", "", "p"},
		{"p", "a@b", "u", ""},
	} {
		if err := v.Put(tx, tc.provider, tc.user, tc.username, tc.password); err == nil {
			t.Errorf("Put(%q, %q, %q, %q) accepted", tc.provider, tc.user, tc.username, tc.password)
		}
	}
	if len(tx) != 0 {
		t.Fatalf("wrote %d entries", len(tx))
	}
	if _, err := NewVault(make([]byte, 16)); err == nil {
		t.Fatal("NewVault took a 16-byte key")
	}
}

func TestVaultWrongKeyRejected(t *testing.T) {
	tx := vaultMemTx{}
	if err := newVault(t, randomKey(t)).Put(tx, "infocert", "a@pec.example", "U1", "pw"); err != nil {
		t.Fatal(err)
	}
	_, _, err := newVault(t, randomKey(t)).Get(tx, "infocert", "a@pec.example")
	if !errors.Is(err, ErrVaultSealed) {
		t.Fatalf("got %v, want ErrVaultSealed", err)
	}
}

func TestVaultMovedValueRejected(t *testing.T) {
	v := newVault(t, randomKey(t))
	tx := vaultMemTx{}
	if err := v.Put(tx, "infocert", "victim@pec.example", "U1", "victim-password"); err != nil {
		t.Fatal(err)
	}
	sealed := tx[BucketVault+"/infocert\x00victim@pec.example"]
	for name, key := range map[string]string{
		"other user":     "infocert\x00attacker@pec.example",
		"other provider": "namirial\x00victim@pec.example",
	} {
		t.Run(name, func(t *testing.T) {
			tx.Put(BucketVault, key, sealed)
			provider, user, _ := strings.Cut(key, "\x00")
			if _, _, err := v.Get(tx, provider, user); !errors.Is(err, ErrVaultSealed) {
				t.Fatalf("got %v, want ErrVaultSealed", err)
			}
		})
	}
	t.Run("altered", func(t *testing.T) {
		for _, i := range []int{0, 1, 13, len(sealed) - 1} {
			bad := bytes.Clone(sealed)
			bad[i] ^= 1
			tx.Put(BucketVault, "infocert\x00victim@pec.example", bad)
			if _, _, err := v.Get(tx, "infocert", "victim@pec.example"); !errors.Is(err, ErrVaultSealed) {
				t.Fatalf("byte %d flipped: got %v, want ErrVaultSealed", i, err)
			}
		}
		tx.Put(BucketVault, "infocert\x00victim@pec.example", sealed[:10])
		if _, _, err := v.Get(tx, "infocert", "victim@pec.example"); !errors.Is(err, ErrVaultSealed) {
			t.Fatalf("truncated: got %v, want ErrVaultSealed", err)
		}
	})
}

func TestOpenVaultKeyFormats(t *testing.T) {
	key := randomKey(t)
	key[0] = '\n' // a raw key may hold any byte, white space included
	dir := t.TempDir()
	tx := vaultMemTx{}
	if err := newVault(t, key).Put(tx, "p", "u@d", "user", "pw"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"raw", key, true},
		{"hex", []byte(hex.EncodeToString(key)), true},
		{"hex upper with newline", []byte(strings.ToUpper(hex.EncodeToString(key)) + "\n"), true},
		{"base64", []byte(base64.StdEncoding.EncodeToString(key) + "\n"), true},
		{"base64 unpadded", []byte(base64.RawStdEncoding.EncodeToString(key)), true},
		{"base64url", []byte(base64.URLEncoding.EncodeToString(key)), true},
		{"empty", nil, false},
		{"short raw", key[:31], false},
		{"long raw", append(bytes.Clone(key), 0), false},
		{"short hex", []byte(hex.EncodeToString(key[:31])), false},
		{"bad hex", []byte(strings.Repeat("zz", 32)), false},
		{"base64 of 16 bytes", []byte(base64.StdEncoding.EncodeToString(key[:16])), false},
		{"passphrase", []byte("correct horse battery staple\n"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			os.WriteFile(file, tc.data, 0o600)
			v, err := OpenVault(file)
			if !tc.ok {
				if err == nil {
					t.Fatal("accepted")
				}
				if !strings.Contains(err.Error(), file) {
					t.Errorf("error does not name the file: %v", err)
				}
				if len(tc.data) > 4 && strings.Contains(err.Error(), string(tc.data[:len(tc.data)-1])) {
					t.Errorf("error quotes the file: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, p, err := v.Get(tx, "p", "u@d"); err != nil || p != "pw" {
				t.Fatalf("opens %q, %v", p, err)
			}
		})
	}
	if _, err := OpenVault(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
