package store

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// The vault keeps each user's credentials for providers with auth =
// "vault" (DESIGN.md, Credentials: InfoCert logs users in with a User ID,
// not the address). Entries live in BucketVault under
// PROVIDER "\x00" lower(USER), sealed with AES-256-GCM under a key that is
// read from [vault] key_file and never written to the store: a copy of the
// store alone reveals no password.
//
// A sealed value is
//
//	version (1 byte, 1) | nonce (12 random bytes) | ciphertext+tag
//
// and the plaintext is uvarint(len(username)) | username | password. The
// GCM additional data is the entry's key, so a value copied under another
// provider or user does not open.

// VaultKeySize is the size of a vault key: 32 bytes, AES-256.
const VaultKeySize = 32

const vaultVersion = 1

// ErrVaultSealed is returned by Vault.Get when an entry does not open: it
// was sealed under another key, or moved to another provider or user, or
// altered.
var ErrVaultSealed = errors.New("store: vault entry does not open with this key (another vault key, or an entry moved or altered)")

// Vault seals and opens vault entries. It is safe for concurrent use.
type Vault struct {
	aead cipher.AEAD
}

// NewVault returns a Vault using key, which must be VaultKeySize bytes. The
// key is copied.
func NewVault(key []byte) (*Vault, error) {
	if len(key) != VaultKeySize {
		return nil, fmt.Errorf("store: vault key must be %d bytes, got %d", VaultKeySize, len(key))
	}
	block, err := aes.NewCipher(bytes.Clone(key))
	if err != nil {
		return nil, fmt.Errorf("store: vault key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("store: vault key: %w", err)
	}
	return &Vault{aead: aead}, nil
}

// OpenVault reads the key file ([vault] key_file) and returns its Vault.
// The file holds the 32 key bytes raw (exactly 32 bytes), as 64 hex digits,
// or as standard or URL-safe base64 (padded or not); surrounding white
// space is ignored for the text forms. Anything else is an error, which
// names the file but never quotes it. Make one with
// `head -c 32 /dev/urandom > vault.key` or `openssl rand -hex 32`.
func OpenVault(keyFile string) (*Vault, error) {
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("store: vault key: %w", err)
	}
	key, err := parseVaultKey(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("store: vault key file %s: %w", keyFile, err)
	}
	defer clear(key)
	return NewVault(key)
}

func parseVaultKey(data []byte) ([]byte, error) {
	if len(data) == VaultKeySize {
		return bytes.Clone(data), nil
	}
	text := strings.TrimSpace(string(data))
	if len(text) == 2*VaultKeySize {
		if key, err := hex.DecodeString(text); err == nil {
			return key, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(text); err == nil && len(key) == VaultKeySize {
			return key, nil
		}
	}
	return nil, fmt.Errorf("want %d bytes: raw (a %d-byte file), 64 hex digits or base64; the file has %d bytes that are none of these", VaultKeySize, VaultKeySize, len(data))
}

// vaultKey is the BucketVault key of (provider, user), also the GCM
// additional data.
func vaultKey(provider, user string) (string, error) {
	if provider == "" || user == "" {
		return "", errors.New("store: vault: empty provider or user")
	}
	if strings.ContainsRune(provider, 0) || strings.ContainsRune(user, 0) {
		return "", errors.New("store: vault: NUL in provider or user")
	}
	return provider + "\x00" + strings.ToLower(user), nil
}

// Put seals username and password as user's credentials for provider,
// replacing any earlier ones. Neither may be empty.
func (v *Vault) Put(tx Tx, provider, user, username, password string) error {
	k, err := vaultKey(provider, user)
	if err != nil {
		return err
	}
	if username == "" || password == "" {
		return fmt.Errorf("store: vault: empty username or password for %s on %s", user, provider)
	}
	plain := binary.AppendUvarint(nil, uint64(len(username)))
	plain = append(plain, username...)
	plain = append(plain, password...)
	defer clear(plain)
	sealed := make([]byte, 1+v.aead.NonceSize(), 1+v.aead.NonceSize()+len(plain)+v.aead.Overhead())
	sealed[0] = vaultVersion
	nonce := sealed[1:]
	if _, err := rand.Read(nonce); err != nil {
		return fmt.Errorf("store: vault: %w", err)
	}
	sealed = v.aead.Seal(sealed, nonce, plain, []byte(k))
	if err := tx.Put(BucketVault, k, sealed); err != nil {
		return fmt.Errorf("put vault entry of %s on %s: %w", user, provider, err)
	}
	return nil
}

// Get returns user's credentials for provider: ErrNotFound when there are
// none, ErrVaultSealed when the entry does not open with this Vault's key
// under this (provider, user).
func (v *Vault) Get(tx Tx, provider, user string) (username, password string, err error) {
	k, err := vaultKey(provider, user)
	if err != nil {
		return "", "", err
	}
	sealed, err := tx.Get(BucketVault, k)
	if err != nil {
		return "", "", fmt.Errorf("get vault entry of %s on %s: %w", user, provider, err)
	}
	if sealed == nil {
		return "", "", ErrNotFound
	}
	ns := v.aead.NonceSize()
	if len(sealed) < 1+ns+v.aead.Overhead() || sealed[0] != vaultVersion {
		return "", "", fmt.Errorf("vault entry of %s on %s: %w", user, provider, ErrVaultSealed)
	}
	plain, err := v.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], []byte(k))
	if err != nil {
		return "", "", fmt.Errorf("vault entry of %s on %s: %w", user, provider, ErrVaultSealed)
	}
	defer clear(plain)
	n, w := binary.Uvarint(plain)
	if w <= 0 || n > uint64(len(plain)-w) {
		return "", "", fmt.Errorf("vault entry of %s on %s: %w", user, provider, ErrVaultSealed)
	}
	rest := plain[w:]
	return string(rest[:n]), string(rest[n:]), nil
}

// Delete removes user's credentials for provider; removing absent ones is
// not an error.
func (v *Vault) Delete(tx Tx, provider, user string) error {
	k, err := vaultKey(provider, user)
	if err != nil {
		return err
	}
	return tx.Delete(BucketVault, k)
}
