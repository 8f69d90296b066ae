package store

import (
	"context"
	"errors"
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
	// Old is the old provider's UID list of the mailbox as a session
	// found it right after EXAMINE, or nil: another session whose own
	// EXAMINE reports the same UIDVALIDITY, UIDNEXT and EXISTS may use it
	// instead of searching (see OldList). In memory only.
	Old *OldList
}

// OldList is the old provider's UID list of one mailbox under the
// UIDVALIDITY, UIDNEXT and EXISTS that EXAMINE reported with it, and the
// name of that provider (Source: the map outlives a migration, and the
// next one has another old provider). Equal values at a later EXAMINE of
// the same provider mean an equal list: a message added gets a UID
// at or above UIDNEXT, which then grows, and with nothing added an equal
// count means nothing was expunged. It holds the UIDs as ranges, so a
// mailbox whose messages were seldom expunged costs a few bytes.
type OldList struct {
	Source                       string
	UIDValidity, UIDNext, Exists uint32
	ranges                       []Range
}

// oldListMaxRanges bounds an OldList's memory (8 bytes a range): a list
// more fragmented than that is not kept.
const oldListMaxRanges = 4096

// NewOldList returns the list of uids (ascending, distinct) of provider
// source under the status EXAMINE reported, or nil when it cannot serve: no UIDNEXT, a
// count that disagrees with EXISTS, unsorted UIDs, UIDs at or above
// UIDNEXT, or more than oldListMaxRanges ranges.
func NewOldList(source string, uidValidity, uidNext, exists uint32, uids []UID) *OldList {
	if uidNext == 0 || len(uids) != int(exists) {
		return nil
	}
	l := &OldList{Source: source, UIDValidity: uidValidity, UIDNext: uidNext, Exists: exists}
	for i, u := range uids {
		if u == 0 || u >= uidNext || (i > 0 && u <= uids[i-1]) {
			return nil
		}
		if n := len(l.ranges); n > 0 && l.ranges[n-1].Hi+1 == u {
			l.ranges[n-1].Hi = u
			continue
		}
		if len(l.ranges) == oldListMaxRanges {
			return nil
		}
		l.ranges = append(l.ranges, Range{Lo: u, Hi: u})
	}
	return l
}

// Matches reports whether l was taken at provider source under the given
// EXAMINE status.
func (l *OldList) Matches(source string, uidValidity, uidNext, exists uint32) bool {
	return l != nil && uidNext != 0 && l.Source == source && l.UIDValidity == uidValidity && l.UIDNext == uidNext && l.Exists == exists
}

// UIDs returns the list, ascending, in a new slice.
func (l *OldList) UIDs() []UID {
	out := make([]UID, 0, l.Exists)
	for _, r := range l.ranges {
		for u := r.Lo; ; u++ {
			out = append(out, u)
			if u == r.Hi {
				break
			}
		}
	}
	return out
}

// NewMapCache caches up to size maps (one per user and mailbox in use).
func NewMapCache(st Store, size int) *MapCache {
	if size <= 0 {
		size = 10000
	}
	c, _ := lru.New[string, *MapEntry](size)
	return &MapCache{st: st, cache: c}
}

// mapKey is the cache's key of (user, mailbox): the store's spelling, as
// userMailboxKey makes it, unchecked.
func mapKey(user, mailbox string) string {
	return CanonicalUser(user) + "\x00" + CanonicalMailbox(mailbox)
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
