package store

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// A verifier is what pecgate keeps of a client password to authenticate the
// client itself when the domain's primary provider cannot see the password
// (DESIGN.md, Credentials): a PHC string, pinned at the user's last
// successful login there. New verifiers are argon2id (RFC 9106); bcrypt
// hashes ($2a$, $2b$, $2y$) imported from elsewhere are accepted as they are.

// Argon2id parameters of new verifiers: the OWASP Password Storage Cheat
// Sheet's first configuration (m=19 MiB, t=2, p=1), not RFC 9106's 64 MiB
// or 2 GiB ones. pecgate checks a verifier at every client login it cannot
// hand to the provider, and mail clients log in often and all together
// (several connections each, a storm after every restart). One check costs
// 19 MiB and about 33 ms of one core (measured on a 2-core CI machine,
// BenchmarkCheckPassword); 40 concurrent checks would need 760 MiB rather
// than 2.5 GiB at 64 MiB, and argonSlots caps them at one per CPU anyway.
// Someone who steals the store still pays 19 MiB and two passes per guess.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// Limits on the parameters CheckPassword accepts from a stored string, so a
// corrupt or hostile entry cannot make one login allocate gigabytes or spin
// for minutes.
const (
	maxArgonMemory  = 256 * 1024 // KiB
	maxArgonTime    = 16
	maxArgonThreads = 16
)

// argonSlots bounds concurrent argon2id computations to the number of
// CPUs: more would not finish sooner, and each holds its memory parameter
// until it does.
var argonSlots = make(chan struct{}, max(runtime.GOMAXPROCS(0), 1))

// ErrBadVerifier is returned for a verifier string that is neither a
// well-formed argon2id PHC string nor a bcrypt hash.
var ErrBadVerifier = errors.New("store: malformed password verifier")

var phcB64 = base64.RawStdEncoding

// HashPassword returns a new argon2id verifier of pw as a PHC string:
// $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH (unpadded standard base64, a
// fresh 16-byte random salt, a 32-byte hash).
func HashPassword(pw string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("store: hash password: %w", err)
	}
	key := argonKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		phcB64.EncodeToString(salt), phcB64.EncodeToString(key)), nil
}

func argonKey(pw, salt []byte, t, m uint32, p uint8, n uint32) []byte {
	argonSlots <- struct{}{}
	defer func() { <-argonSlots }()
	return argon2.IDKey(pw, salt, t, m, p, n)
}

// CheckPassword reports whether pw matches the verifier phc: an argon2id
// PHC string (any version-19 parameters within sane limits) or a bcrypt
// hash. The comparison is constant-time. A malformed verifier is an error
// wrapping ErrBadVerifier, never a match.
func CheckPassword(phc, pw string) (bool, error) {
	switch {
	case strings.HasPrefix(phc, "$argon2id$"):
		a, err := parseArgon2id(phc)
		if err != nil {
			return false, err
		}
		key := argonKey([]byte(pw), a.salt, a.t, a.m, a.p, uint32(len(a.key)))
		return subtle.ConstantTimeCompare(key, a.key) == 1, nil
	case isBcrypt(phc):
		if err := checkBcrypt(phc); err != nil {
			return false, err
		}
		// bcrypt looks at the first 72 bytes of pw only.
		err := bcrypt.CompareHashAndPassword([]byte(phc), []byte(pw))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		default:
			return false, fmt.Errorf("%w: bcrypt: %v", ErrBadVerifier, err)
		}
	}
	return false, fmt.Errorf("%w: neither $argon2id$ nor bcrypt", ErrBadVerifier)
}

func isBcrypt(s string) bool {
	return strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$")
}

type argon2Params struct {
	m, t      uint32
	p         uint8
	salt, key []byte
}

// parseArgon2id parses $argon2id$v=19$m=M,t=T,p=P$SALT$HASH. Its errors
// never quote the string (it is a secret's verifier).
func parseArgon2id(s string) (argon2Params, error) {
	var a argon2Params
	bad := func(what string) (argon2Params, error) {
		return argon2Params{}, fmt.Errorf("%w: argon2id: %s", ErrBadVerifier, what)
	}
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return bad("want $argon2id$v=19$m=M,t=T,p=P$SALT$HASH")
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return bad("unsupported version")
	}
	params := strings.Split(f[3], ",")
	if len(params) != 3 {
		return bad("want parameters m=M,t=T,p=P")
	}
	for i, name := range []string{"m", "t", "p"} {
		v, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return bad("want parameters m=M,t=T,p=P")
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return bad("parameter " + name + " is not a positive integer")
		}
		switch name {
		case "m":
			a.m = uint32(n)
		case "t":
			a.t = uint32(n)
		case "p":
			if n > maxArgonThreads {
				return bad("parallelism over the limit")
			}
			a.p = uint8(n)
		}
	}
	if a.m > maxArgonMemory || a.t > maxArgonTime {
		return bad("memory or time parameter over the limit")
	}
	if a.m < 8*uint32(a.p) {
		return bad("memory below 8 KiB per lane")
	}
	var err error
	if a.salt, err = phcB64.DecodeString(f[4]); err != nil || len(a.salt) < 8 {
		return bad("salt is not base64 of at least 8 bytes")
	}
	if a.key, err = phcB64.DecodeString(f[5]); err != nil || len(a.key) < 16 || len(a.key) > 64 {
		return bad("hash is not base64 of 16 to 64 bytes")
	}
	return a, nil
}

// checkVerifier returns an error unless phc is a verifier CheckPassword
// can use.
func checkVerifier(phc string) error {
	switch {
	case strings.HasPrefix(phc, "$argon2id$"):
		_, err := parseArgon2id(phc)
		return err
	case isBcrypt(phc):
		return checkBcrypt(phc)
	}
	return fmt.Errorf("%w: neither $argon2id$ nor bcrypt", ErrBadVerifier)
}

// maxBcryptCost bounds the cost CheckPassword accepts: each step doubles
// the time, and cost 16 already takes seconds.
const maxBcryptCost = 16

func checkBcrypt(phc string) error {
	cost, err := bcrypt.Cost([]byte(phc))
	if err != nil {
		return fmt.Errorf("%w: bcrypt: %v", ErrBadVerifier, err)
	}
	if cost > maxBcryptCost {
		return fmt.Errorf("%w: bcrypt cost %d over the limit %d", ErrBadVerifier, cost, maxBcryptCost)
	}
	return nil
}

// verifierKey is the BucketVerifiers key of a user: the lower-cased
// address.
func verifierKey(user string) string { return strings.ToLower(user) }

// PutVerifier pins phc (from HashPassword, or a bcrypt hash) as user's
// verifier, replacing any earlier one. A string CheckPassword could not use
// is refused with ErrBadVerifier and nothing is written.
func PutVerifier(tx Tx, user, phc string) error {
	if user == "" {
		return errors.New("store: put verifier: empty user")
	}
	if err := checkVerifier(phc); err != nil {
		return fmt.Errorf("put verifier of %s: %w", user, err)
	}
	return tx.Put(BucketVerifiers, verifierKey(user), []byte(phc))
}

// GetVerifier returns user's pinned verifier, or ErrNotFound.
func GetVerifier(tx Tx, user string) (string, error) {
	v, err := tx.Get(BucketVerifiers, verifierKey(user))
	if err != nil {
		return "", fmt.Errorf("get verifier of %s: %w", user, err)
	}
	if v == nil {
		return "", ErrNotFound
	}
	return string(v), nil
}

// DeleteVerifier removes user's verifier; removing an absent one is not an
// error.
func DeleteVerifier(tx Tx, user string) error {
	return tx.Delete(BucketVerifiers, verifierKey(user))
}
