package store

import (
	"context"
	"errors"
	"strings"
	gosync "sync"

	lru "github.com/hashicorp/golang-lru/v2"
)

// MapCache keeps the UID maps of mailboxes in use in memory, in front of
// the store, shared by every session of a user: a client's SELECT costs no
// store read when another session has the mailbox open, and every session
// sees a copy's mapping as soon as it is committed.
type MapCache struct {
	st    Store
	cache *lru.Cache[string, *MapEntry]
	mu    gosync.Mutex // serialises loads of one key
}

// MapEntry is one cached map. Lock it around every read or change of M;
// changes are persisted with Save while locked.
type MapEntry struct {
	gosync.Mutex
	User, Mailbox string
	// M is nil when the mailbox has no map yet (it has never left state
	// old): the caller creates it with NewMap and Saves.
	M *Map
}

// NewMapCache caches up to size maps (one per user and mailbox in use).
func NewMapCache(st Store, size int) *MapCache {
	if size <= 0 {
		size = 10000
	}
	c, _ := lru.New[string, *MapEntry](size)
	return &MapCache{st: st, cache: c}
}

func mapKey(user, mailbox string) string {
	if strings.EqualFold(mailbox, "INBOX") {
		mailbox = "INBOX"
	}
	return strings.ToLower(user) + "\x00" + mailbox
}

// Get returns the entry of (user, mailbox), loading it from the store once.
// An evicted entry still held by a session stays valid: the store has
// every committed change.
func (c *MapCache) Get(ctx context.Context, user, mailbox string) (*MapEntry, error) {
	k := mapKey(user, mailbox)
	if e, ok := c.cache.Get(k); ok {
		return e, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache.Get(k); ok {
		return e, nil
	}
	e := &MapEntry{User: user, Mailbox: mailbox}
	err := c.st.View(ctx, func(tx Tx) error {
		m, err := GetMap(tx, user, mailbox)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		e.M = m
		return err
	})
	if err != nil {
		return nil, err
	}
	c.cache.Add(k, e)
	return e, nil
}

// Save writes e.M to the store, together with whatever more does in the
// same transaction. The caller holds e.
func (c *MapCache) Save(ctx context.Context, e *MapEntry, more func(Tx) error) error {
	return c.st.Update(ctx, func(tx Tx) error {
		if err := PutMap(tx, e.User, e.Mailbox, e.M); err != nil {
			return err
		}
		if more != nil {
			return more(tx)
		}
		return nil
	})
}

// Forget drops a cached entry (after a folder rename or delete).
func (c *MapCache) Forget(user, mailbox string) { c.cache.Remove(mapKey(user, mailbox)) }

// Store is the store behind the cache.
func (c *MapCache) Store() Store { return c.st }

// Rename moves the map of (user, from) to (user, to), as a folder rename
// does; the virtual UIDs stay.
func (c *MapCache) Rename(ctx context.Context, user, from, to string) error {
	c.Forget(user, from)
	c.Forget(user, to)
	return c.st.Update(ctx, func(tx Tx) error {
		m, err := GetMap(tx, user, from)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := PutMap(tx, user, to, m); err != nil {
			return err
		}
		return DeleteMap(tx, user, from)
	})
}
