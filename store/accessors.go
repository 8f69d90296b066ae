package store

// Typed accessors, written only against Tx so that every backend shares
// them. Structured values are JSON (field names fixed by tags, so renaming
// a Go field does not change the stored format) except the UID map, which
// is binary (Map.MarshalBinary): it is read on every SELECT and can hold
// many runs.
//
// Keys:
//
//   - user: lower-cased (CanonicalUser); the local part is matched
//     case-insensitively like the domain, as every PEC provider does.
//   - mailbox: kept as given, except that INBOX is case-insensitive
//     (RFC 3501 section 5.1: "The case-insensitive mailbox name INBOX is a
//     special name reserved to mean 'the primary mailbox for this user on
//     this server'"), so any spelling of it becomes "INBOX"
//     (CanonicalMailbox). Only the name INBOX itself: "inbox.Sent" and
//     "INBOX.Sent" stay two names.
//   - user and mailbox must be non-empty and must not contain NUL, the key
//     separator (IMAP mailbox names never do).

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// CanonicalUser returns the store's spelling of a user address: lower case.
func CanonicalUser(user string) string { return strings.ToLower(user) }

// CanonicalMailbox returns the store's spelling of a mailbox name: "INBOX"
// for any case of INBOX (RFC 3501 section 5.1), the name unchanged
// otherwise.
func CanonicalMailbox(mailbox string) string {
	if strings.EqualFold(mailbox, "INBOX") {
		return "INBOX"
	}
	return mailbox
}

// checkName rejects an empty name or one with the key separator NUL.
func checkName(what, s string) error {
	if s == "" {
		return fmt.Errorf("store: empty %s", what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("store: %s %q contains NUL", what, s)
	}
	return nil
}

// userKey returns the canonical user, checked.
func userKey(user string) (string, error) {
	if err := checkName("user", user); err != nil {
		return "", err
	}
	return CanonicalUser(user), nil
}

// userMailboxKey returns "USER\x00MAILBOX", canonical and checked.
func userMailboxKey(user, mailbox string) (string, error) {
	u, err := userKey(user)
	if err != nil {
		return "", err
	}
	if err := checkName("mailbox", mailbox); err != nil {
		return "", err
	}
	return u + "\x00" + CanonicalMailbox(mailbox), nil
}

func getJSON(tx Tx, bucket, key string, v any) error {
	b, err := tx.Get(bucket, key)
	if err != nil {
		return err
	}
	if b == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("store: decode %s/%q: %w", bucket, key, err)
	}
	return nil
}

func putJSON(tx Tx, bucket, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s/%q: %w", bucket, key, err)
	}
	return tx.Put(bucket, key, b)
}

// Override kinds.
const (
	OverrideDomain = "domain"
	OverrideUser   = "user"
)

// Override is a run-time routing override: the state a domain or a user
// was flipped to with `pecgate route` or the admin API, which wins over
// the config file.
type Override struct {
	Kind  string `json:"kind"`  // OverrideDomain or OverrideUser
	Name  string `json:"name"`  // lower-cased domain or user address
	State string `json:"state"` // "old", "migrating" or "new"
}

func overrideKey(kind, name string) (string, error) {
	if kind != OverrideDomain && kind != OverrideUser {
		return "", fmt.Errorf("store: override kind %q is neither %q nor %q", kind, OverrideDomain, OverrideUser)
	}
	if err := checkName(kind, name); err != nil {
		return "", err
	}
	return kind + ":" + strings.ToLower(name), nil
}

// GetOverride returns the state a domain or user (kind "domain" or
// "user") is overridden to, or ErrNotFound. name is matched
// case-insensitively.
func GetOverride(tx Tx, kind, name string) (state string, err error) {
	k, err := overrideKey(kind, name)
	if err != nil {
		return "", err
	}
	b, err := tx.Get(BucketOverrides, k)
	if err != nil {
		return "", err
	}
	if b == nil {
		return "", ErrNotFound
	}
	return string(b), nil
}

// SetOverride records that a domain or user (kind "domain" or "user") is
// in state, one of "old", "migrating" and "new" (DESIGN.md, Words). It
// checks nothing about the transition: that is the router's business.
func SetOverride(tx Tx, kind, name, state string) error {
	k, err := overrideKey(kind, name)
	if err != nil {
		return err
	}
	switch state {
	case "old", "migrating", "new":
	default:
		return fmt.Errorf("store: override state %q is not old, migrating or new", state)
	}
	return tx.Put(BucketOverrides, k, []byte(state))
}

// DeleteOverride removes an override; removing an absent one is not an
// error.
func DeleteOverride(tx Tx, kind, name string) error {
	k, err := overrideKey(kind, name)
	if err != nil {
		return err
	}
	return tx.Delete(BucketOverrides, k)
}

// ListOverrides returns every override: domains first, then users, each
// sorted by name.
func ListOverrides(tx Tx) ([]Override, error) {
	var out []Override
	err := tx.ForEach(BucketOverrides, "", func(k string, v []byte) error {
		kind, name, ok := strings.Cut(k, ":")
		if !ok {
			return fmt.Errorf("store: malformed override key %q", k)
		}
		out = append(out, Override{Kind: kind, Name: name, State: string(v)})
		return nil
	})
	return out, err
}

// GetMap returns the UID map of (user, mailbox), or ErrNotFound when the
// mailbox has none (it has never left state old).
func GetMap(tx Tx, user, mailbox string) (*Map, error) {
	k, err := userMailboxKey(user, mailbox)
	if err != nil {
		return nil, err
	}
	b, err := tx.Get(BucketMaps, k)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, ErrNotFound
	}
	m := new(Map)
	if err := m.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("store: decode map %q %q: %w", user, mailbox, err)
	}
	return m, nil
}

// PutMap stores the UID map of (user, mailbox), replacing any.
func PutMap(tx Tx, user, mailbox string, m *Map) error {
	k, err := userMailboxKey(user, mailbox)
	if err != nil {
		return err
	}
	if m == nil {
		return fmt.Errorf("store: nil map for %q %q", user, mailbox)
	}
	b, err := m.MarshalBinary()
	if err != nil {
		return fmt.Errorf("store: encode map %q %q: %w", user, mailbox, err)
	}
	return tx.Put(BucketMaps, k, b)
}

// ListMaps returns the names of user's mailboxes that have a UID map, in
// byte order, INBOX spelled "INBOX".
func ListMaps(tx Tx, user string) ([]string, error) {
	u, err := userKey(user)
	if err != nil {
		return nil, err
	}
	prefix := u + "\x00"
	var out []string
	err = tx.ForEach(BucketMaps, prefix, func(k string, _ []byte) error {
		out = append(out, k[len(prefix):])
		return nil
	})
	return out, err
}

// DeleteMap removes the UID map of (user, mailbox) (after the user deleted
// the mailbox); removing an absent one is not an error.
func DeleteMap(tx Tx, user, mailbox string) error {
	k, err := userMailboxKey(user, mailbox)
	if err != nil {
		return err
	}
	return tx.Delete(BucketMaps, k)
}

// FolderMap is a user's durable folder map: how the old provider's folder
// names (what the client sees, before and after the flip) translate to the
// new provider's (DESIGN.md, Folders).
type FolderMap struct {
	OldDelim string   `json:"old_delim"` // old's hierarchy delimiter; "" for a flat namespace
	NewDelim string   `json:"new_delim"` // new's hierarchy delimiter; "" for a flat namespace
	Folders  []Folder `json:"folders"`
}

// Folder is one folder's entry in a FolderMap. Names are modified UTF-7 as
// on the wire (RFC 3501 section 5.1.3).
type Folder struct {
	Old        string `json:"old"`                   // name on old, as the client sees it
	New        string `json:"new"`                   // name on new; "" until known
	SpecialUse string `json:"special_use,omitempty"` // RFC 6154 role ("\\Sent"), "" for none
	Subscribed bool   `json:"subscribed,omitempty"`
	Created    bool   `json:"created,omitempty"` // made in new by pecgate
}

// GetFolderMap returns user's folder map, or ErrNotFound.
func GetFolderMap(tx Tx, user string) (*FolderMap, error) {
	u, err := userKey(user)
	if err != nil {
		return nil, err
	}
	fm := new(FolderMap)
	if err := getJSON(tx, BucketFolders, u, fm); err != nil {
		return nil, err
	}
	return fm, nil
}

// PutFolderMap stores user's folder map, replacing any.
func PutFolderMap(tx Tx, user string, fm *FolderMap) error {
	u, err := userKey(user)
	if err != nil {
		return err
	}
	if fm == nil {
		return fmt.Errorf("store: nil folder map for %q", user)
	}
	return putJSON(tx, BucketFolders, u, fm)
}

// Pending operations.
const (
	PendingFlags   = "flags"
	PendingExpunge = "expunge"
	PendingMove    = "move"
)

// Pending is a change the user made during migrating to a message not yet
// copied to new, kept until the copy and applied to it then (invariant 4).
type Pending struct {
	Mailbox string   `json:"mailbox"`         // canonical (CanonicalMailbox)
	V       UID      `json:"v"`               // the message's virtual UID in Mailbox
	Op      string   `json:"op"`              // PendingFlags, PendingExpunge or PendingMove
	Flags   []string `json:"flags,omitempty"` // PendingFlags: the message's flags after the change
	Dest    string   `json:"dest,omitempty"`  // PendingMove: the destination mailbox
}

// pendingKey returns "USER\x00MAILBOX\x00VUID" with VUID as 10 decimal
// digits, so byte order is numeric order.
func pendingKey(user, mailbox string, v UID) (string, error) {
	k, err := userMailboxKey(user, mailbox)
	if err != nil {
		return "", err
	}
	if v == 0 {
		return "", errors.New("store: pending change for UID 0")
	}
	return fmt.Sprintf("%s\x00%010d", k, v), nil
}

// AddPending records p for user. Changes are kept per (mailbox, V) in the
// order they were added, and none replaces another: what a later change
// means for an earlier one (a flag change then a move) is for whoever
// applies them to decide.
func AddPending(tx Tx, user string, p Pending) error {
	switch p.Op {
	case PendingFlags, PendingExpunge:
	case PendingMove:
		if p.Dest == "" {
			return errors.New("store: pending move without destination")
		}
	default:
		return fmt.Errorf("store: pending op %q is not flags, expunge or move", p.Op)
	}
	k, err := pendingKey(user, p.Mailbox, p.V)
	if err != nil {
		return err
	}
	p.Mailbox = CanonicalMailbox(p.Mailbox)
	if p.Dest != "" {
		p.Dest = CanonicalMailbox(p.Dest)
	}
	var list []Pending
	if err := getJSON(tx, BucketPending, k, &list); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return putJSON(tx, BucketPending, k, append(list, p))
}

// ListPending returns user's pending changes in mailbox, by V and, for
// one V, in the order they were added.
func ListPending(tx Tx, user, mailbox string) ([]Pending, error) {
	k, err := userMailboxKey(user, mailbox)
	if err != nil {
		return nil, err
	}
	var out []Pending
	err = tx.ForEach(BucketPending, k+"\x00", func(key string, v []byte) error {
		var list []Pending
		if err := json.Unmarshal(v, &list); err != nil {
			return fmt.Errorf("store: decode %s/%q: %w", BucketPending, key, err)
		}
		out = append(out, list...)
		return nil
	})
	return out, err
}

// DeletePending removes every pending change of virtual UID v in mailbox
// (once they have been applied); removing none is not an error.
func DeletePending(tx Tx, user, mailbox string, v UID) error {
	k, err := pendingKey(user, mailbox, v)
	if err != nil {
		return err
	}
	return tx.Delete(BucketPending, k)
}

// Progress is a user's copy progress, shown by `pecgate status` and
// GET /api/v1/users/{user}.
type Progress struct {
	User          string          `json:"user"`  // canonical (CanonicalUser)
	State         string          `json:"state"` // the back-fill's state, e.g. "copying", "done"
	MessagesDone  int64           `json:"messages_done"`
	MessagesTotal int64           `json:"messages_total"`
	BytesDone     int64           `json:"bytes_done"`
	BytesTotal    int64           `json:"bytes_total"`
	Errors        []ProgressError `json:"errors,omitempty"` // the caller bounds its length
	Updated       time.Time       `json:"updated"`
	// Folders are the same counts per old folder (its name on old, as the
	// UID maps key it), as the last pass counted them; absent in records
	// written before per-folder counts were kept.
	Folders []FolderProgress `json:"folders,omitempty"`
}

// FolderProgress is one folder's share of a Progress.
type FolderProgress struct {
	Name          string `json:"name"`
	MessagesDone  int64  `json:"messages_done"`
	MessagesTotal int64  `json:"messages_total"`
}

// ProgressError is one problem met while copying a user's mail.
type ProgressError struct {
	Kind    string    `json:"kind"` // a short machine-readable class, e.g. "quota"
	Message string    `json:"message"`
	Mailbox string    `json:"mailbox,omitempty"` // "" when not about one mailbox
	V       UID       `json:"v,omitempty"`       // 0 when not about one message
	At      time.Time `json:"at"`
}

// GetProgress returns user's progress, or ErrNotFound.
func GetProgress(tx Tx, user string) (*Progress, error) {
	u, err := userKey(user)
	if err != nil {
		return nil, err
	}
	p := new(Progress)
	if err := getJSON(tx, BucketProgress, u, p); err != nil {
		return nil, err
	}
	return p, nil
}

// PutProgress stores p under p.User, replacing any; the stored User is
// canonical. p is not modified.
func PutProgress(tx Tx, p *Progress) error {
	if p == nil {
		return errors.New("store: nil progress")
	}
	u, err := userKey(p.User)
	if err != nil {
		return err
	}
	q := *p
	q.User = u
	return putJSON(tx, BucketProgress, u, &q)
}

// ListProgress returns every user's progress, sorted by user.
func ListProgress(tx Tx) ([]*Progress, error) {
	var out []*Progress
	err := tx.ForEach(BucketProgress, "", func(k string, v []byte) error {
		p := new(Progress)
		if err := json.Unmarshal(v, p); err != nil {
			return fmt.Errorf("store: decode %s/%q: %w", BucketProgress, k, err)
		}
		out = append(out, p)
		return nil
	})
	return out, err
}
