package store

// UID is an IMAP UID, virtual or upstream; 0 means "none".
type UID = uint32

// Map is the durable UID map of one (user, mailbox): the virtual UID space
// the client sees, and for each virtual UID the old and new provider UIDs.
//
// Virtual UIDs below Frozen equal the old provider's UIDs (invariant 1):
// they need no run until they are copied. Everything that appears after the
// freeze, in old or in new, gets Next, then Next+1...
//
// A Map is not safe for concurrent use: callers serialise every call,
// lookups included (MapEntry's mutex), because ByOld, ByNew and the changes
// build the reverse indexes on first use in a Map made other than by
// NewMap, UnmarshalBinary or Clone. The exported fields are the durable
// state, for the encoding and for inspection: change a Map only through its
// methods, and copy it with Clone (a struct copy shares its indexes).
type Map struct {
	UIDValidity uint32 // the virtual UIDVALIDITY (old's at freeze time)
	Frozen      UID    // old UIDNEXT when the mailbox left state old
	Next        UID    // virtual UIDNEXT
	// NewUIDValidity is the new provider's UIDVALIDITY the New side refers to.
	NewUIDValidity uint32
	// Runs are sorted by V and never overlap.
	Runs []Run
	// Gone lists virtual UIDs expunged by the user: they must not come back
	// from the side that still holds them (old is never written).
	Gone []Range

	ix *mapIndex // reverse indexes of Runs by Old and by New; nil: not built
}

// Run maps N consecutive virtual UIDs V..V+N-1 to consecutive old UIDs
// Old..Old+N-1 and new UIDs New..New+N-1; Old or New is 0 when that side
// does not hold the messages.
type Run struct {
	V, N     uint32
	Old, New UID
}

// Range is the closed interval [Lo, Hi].
type Range struct{ Lo, Hi uint32 }
