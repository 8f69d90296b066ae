package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"strings"
	gosync "sync"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/store"
)

// authn checks clients' passwords when the provider serving them does not
// see those passwords (states migrating and new with a master or vault
// new provider), and pins verifiers of passwords the old provider
// accepted, so members never re-type a password at a flip.
type authn struct {
	st      store.Store // nil: no store, nothing pinned
	secrets backend.Secrets
	log     *slog.Logger
	key     [32]byte   // random per process: keys the pinned cache
	pinned  gosync.Map // lower-cased user -> HMAC of the password last pinned
}

func newAuthn(o *Options) *authn {
	a := &authn{secrets: o.Secrets, log: o.logger()}
	if o.Maps != nil {
		a.st = o.Maps.Store()
	}
	rand.Read(a.key[:])
	return a
}

// pin stores an argon2id verifier of a password the old provider just
// accepted. Each process remembers an HMAC of the last password pinned per
// user, so repeated logins cost no argon2id computation.
func (a *authn) pin(ctx context.Context, user, password string) {
	if a.st == nil {
		return
	}
	mac := hmac.New(sha256.New, a.key[:])
	mac.Write([]byte(strings.ToLower(user) + "\x00" + password))
	sum := string(mac.Sum(nil))
	key := strings.ToLower(user)
	if prev, ok := a.pinned.Load(key); ok && prev.(string) == sum {
		return
	}
	var current string
	a.st.View(ctx, func(tx store.Tx) error {
		current, _ = store.GetVerifier(tx, user)
		return nil
	})
	if current != "" {
		if ok, err := store.CheckPassword(current, password); err == nil && ok {
			a.pinned.Store(key, sum)
			return
		}
	}
	phc, err := store.HashPassword(password)
	if err == nil {
		err = a.st.Update(ctx, func(tx store.Tx) error { return store.PutVerifier(tx, user, phc) })
	}
	if err != nil {
		a.log.Warn("cannot pin verifier", "user", user, "err", err)
		return
	}
	a.pinned.Store(key, sum)
}

// errNoVerifier: no pinned verifier and old cannot check the password:
// refuse rather than let anyone in.
var errNoVerifier = fmt.Errorf("%w: no pinned verifier and the old provider cannot check the password", backend.ErrAuthFailed)

// check authenticates user with password against the pinned verifier, or,
// with none, against the old provider itself while it is there: a login
// with the client's own credentials (LoginIMAP, whatever old's auth mode:
// a provider the gateway reaches with a master user or the vault still
// takes its members' own logins), then pins. A refusal wraps
// backend.ErrAuthFailed.
func (a *authn) check(ctx context.Context, route *Route, user, password string) error {
	var phc string
	if a.st != nil {
		a.st.View(ctx, func(tx store.Tx) error {
			phc, _ = store.GetVerifier(tx, user)
			return nil
		})
	}
	if phc != "" {
		ok, err := store.CheckPassword(phc, password)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: password does not match the pinned verifier", backend.ErrAuthFailed)
		}
		return nil
	}
	if route.Old == nil {
		return errNoVerifier
	}
	up, err := route.Old.LoginIMAP(ctx, user, password, nil)
	if err != nil {
		if backend.IsAuthFailure(err) {
			return err
		}
		return errNoVerifier
	}
	up.Logout()
	a.pin(ctx, user, password)
	return nil
}
