package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestHashPasswordFormat(t *testing.T) {
	phc, err := HashPassword("s3cret")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$", argonMemory, argonTime, argonThreads)
	if !strings.HasPrefix(phc, want) {
		t.Fatalf("%q does not start with %q", phc, want)
	}
	f := strings.Split(phc, "$")
	if len(f) != 6 || len(f[4]) != 22 || len(f[5]) != 43 { // 16 and 32 bytes, unpadded base64
		t.Fatalf("bad PHC string %q", phc)
	}
	again, _ := HashPassword("s3cret")
	if again == phc {
		t.Fatal("same salt twice")
	}
}

func TestCheckPassword(t *testing.T) {
	argon, err := HashPassword("s3cret è")
	if err != nil {
		t.Fatal(err)
	}
	bc, err := bcrypt.GenerateFromPassword([]byte("s3cret è"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	bcrypt2a := string(bc)
	bcrypt2b := "$2b$" + bcrypt2a[4:]
	bcrypt2y := "$2y$" + bcrypt2a[4:]
	// RFC 9106 / PHC reference string of the argon2 CLI:
	// echo -n password | argon2 somesalt -id -t 2 -m 16 -p 4 -l 32 -e
	ref := "$argon2id$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo"
	for _, tc := range []struct {
		name, phc, pw string
		ok            bool
		bad           bool
	}{
		{"argon2id accept", argon, "s3cret è", true, false},
		{"argon2id reject", argon, "s3cret e", false, false},
		{"argon2id empty", argon, "", false, false},
		{"argon2id reference accept", ref, "password", true, false},
		{"argon2id reference reject", ref, "Password", false, false},
		{"bcrypt 2a accept", bcrypt2a, "s3cret è", true, false},
		{"bcrypt 2a reject", bcrypt2a, "s3cret", false, false},
		{"bcrypt 2b accept", bcrypt2b, "s3cret è", true, false},
		{"bcrypt 2b reject", bcrypt2b, "x", false, false},
		{"bcrypt 2y accept", bcrypt2y, "s3cret è", true, false},
		// OpenBSD's test vector.
		{"bcrypt vector accept", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U", true, false},
		{"bcrypt vector reject", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*V", false, false},
		{"empty", "", "x", false, true},
		{"plain text", "s3cret è", "s3cret è", false, true},
		{"argon2i", strings.Replace(ref, "argon2id", "argon2i", 1), "password", false, true},
		{"argon2id v=16", strings.Replace(ref, "v=19", "v=16", 1), "password", false, true},
		{"argon2id no version", "$argon2id$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo", "password", false, true},
		{"argon2id huge memory", strings.Replace(ref, "m=65536", "m=4194304", 1), "password", false, true},
		{"argon2id huge time", strings.Replace(ref, "t=2", "t=1000", 1), "password", false, true},
		{"argon2id zero time", strings.Replace(ref, "t=2", "t=0", 1), "password", false, true},
		{"argon2id p=300", strings.Replace(ref, "p=4", "p=300", 1), "password", false, true},
		{"argon2id params order", strings.Replace(ref, "m=65536,t=2", "t=2,m=65536", 1), "password", false, true},
		{"argon2id bad salt", strings.Replace(ref, "c29tZXNhbHQ", "!!", 1), "password", false, true},
		{"argon2id short hash", ref[:len(ref)-30], "password", false, true},
		{"bcrypt truncated", bcrypt2a[:20], "s3cret è", false, true},
		{"bcrypt cost 31", "$2a$31$" + bcrypt2a[7:], "s3cret è", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, err := CheckPassword(tc.phc, tc.pw)
			if tc.bad {
				if !errors.Is(err, ErrBadVerifier) || ok {
					t.Fatalf("got %v, %v; want false, ErrBadVerifier", ok, err)
				}
				if tc.phc != "" && strings.Contains(err.Error(), tc.phc) {
					t.Fatalf("error quotes the verifier: %v", err)
				}
				return
			}
			if err != nil || ok != tc.ok {
				t.Fatalf("got %v, %v; want %v", ok, err, tc.ok)
			}
		})
	}
}

func TestVerifierStore(t *testing.T) {
	tx := vaultMemTx{}
	if _, err := GetVerifier(tx, "a@pec.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent: %v, want ErrNotFound", err)
	}
	phc, _ := HashPassword("pw")
	if err := PutVerifier(tx, "A@PEC.example", phc); err != nil {
		t.Fatal(err)
	}
	got, err := GetVerifier(tx, "a@pec.EXAMPLE")
	if err != nil || got != phc {
		t.Fatalf("got %q, %v", got, err)
	}
	if ok, err := CheckPassword(got, "pw"); !ok || err != nil {
		t.Fatalf("stored verifier does not check: %v %v", ok, err)
	}
	bc, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err := PutVerifier(tx, "a@pec.example", string(bc)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "pw", "$argon2id$v=19$m=1,t=1,p=1$x$y", "$2a$99$abc"} {
		if err := PutVerifier(tx, "a@pec.example", bad); !errors.Is(err, ErrBadVerifier) {
			t.Errorf("PutVerifier(%q): %v, want ErrBadVerifier", bad, err)
		}
	}
	if got, _ := GetVerifier(tx, "a@pec.example"); got != string(bc) {
		t.Fatalf("a refused Put changed the verifier to %q", got)
	}
	if err := DeleteVerifier(tx, "A@pec.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := GetVerifier(tx, "a@pec.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func BenchmarkCheckPassword(b *testing.B) {
	phc, _ := HashPassword("s3cret")
	for b.Loop() {
		CheckPassword(phc, "s3cret")
	}
}
