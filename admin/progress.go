package admin

// Copy progress as the API shows it (issue 4, item 8): a user's progress
// with its rate, ETA and a hint per problem (UserProgress), and a domain's
// members counted by phase with their summed counts (DomainProgress).
//
// Implementation notes:
//
//   - The back-fill engine (package sync) writes one store.Progress per
//     user; this file only reads them (Options.Store). Its states are
//     spelled here again (Phase*) because admin does not import sync.
//   - Rates are measured, never guessed. The server keeps in memory, per
//     user, the last two distinct records it read from the store (distinct:
//     another Updated), whenever a user's GET or a domain listing reads
//     them, and the rate is (done2-done1)/(Updated2-Updated1), by the
//     engine's own clock. It is unknown, and absent from the documents,
//     until two records were read, after the counts went down (a new pass
//     counted again), while the user is not copying, and when the engine
//     wrote nothing for staleAfter (a pass that stalled or a gateway that
//     stopped). The memory is lost on restart: the rate is then unknown
//     again for a moment.
//   - ETA is the remaining messages over the message rate, or the remaining
//     bytes over the byte rate when that is later (a few 10 MB messages
//     left copy slower than their count says), rounded up to a second.
//   - A domain's members are every user of the domain the store knows: a
//     progress record, a pinned verifier (logged in through pecgate), a
//     vault credential for one of the domain's providers, or a user's own
//     state. Those without a record, or whose first pass has not counted
//     yet, are PhaseNotStarted.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// Phases of a user's copy: the back-fill engine's progress states
// (store.Progress.State), plus PhaseNotStarted for a member without a
// counted pass.
const (
	PhaseCopying    = "copying"     // counted; copying
	PhaseDone       = "done"        // every old message is in new
	PhaseIncomplete = "incomplete"  // a pass ended with messages left; retried
	PhaseQuota      = "quota"       // stopped: no room on the new provider
	PhaseNeedsLogin = "needs-login" // waits for the member's next login
	PhaseFailed     = "failed"      // a pass failed; retried
	PhaseNotStarted = "not-started" // no pass has counted the member's mail yet
)

// Phases returns every phase, in the order a listing shows them.
func Phases() []string {
	return []string{PhaseCopying, PhaseDone, PhaseIncomplete, PhaseQuota, PhaseNeedsLogin, PhaseFailed, PhaseNotStarted}
}

// staleAfter is how long a copying user's record may go unwritten before
// its rate counts as unknown. The engine writes every 100 messages or 2
// seconds while messages move.
const staleAfter = 2 * time.Minute

// hints say what to do about each kind of problem (store.ProgressError.Kind,
// the engine's sync.Kind*).
var hints = map[string]string{
	"needs-login":   "the member must log in once through pecgate (passthrough provider)",
	"auth":          "check the master/vault credentials; for Aruba with two-factor login an app password is needed",
	"no-credential": "no credentials for this member in the vault: import them (pecgate vault import) or let the member set them on the member page (/me)",
	"quota":         "raise the quota at the new provider",
	"oversize":      "the message is larger than the new provider accepts; it stays on old",
	"upstream":      "the provider failed; the copy retries by itself",
	"truncated":     "more problems than the progress keeps; the gateway's log has them all",
}

// Hint returns what to do about a problem of kind, or "" when there is
// nothing to advise.
func Hint(kind string) string { return hints[kind] }

// UserProgress is a user's copy progress: "progress" in GET
// /api/v1/users/{user}, and GET /api/v1/users/{user}/progress. Its fields
// are those of store.Progress plus the measured rates, the ETA and hints.
type UserProgress struct {
	User string `json:"user"` // lower-cased
	// State is the back-fill's state, one of the Phase* but
	// PhaseNotStarted; "" while a first pass counts.
	State         string `json:"state"`
	MessagesDone  int64  `json:"messages_done"`
	MessagesTotal int64  `json:"messages_total"`
	BytesDone     int64  `json:"bytes_done"`
	BytesTotal    int64  `json:"bytes_total"`
	// MessagesPerSecond and BytesPerSecond are measured between the last
	// two records the gateway read; absent when unknown.
	MessagesPerSecond *float64 `json:"messages_per_second,omitempty"`
	BytesPerSecond    *float64 `json:"bytes_per_second,omitempty"`
	// ETASeconds is when the copy should end at that rate; absent when
	// unknown.
	ETASeconds *int64          `json:"eta_seconds,omitempty"`
	Errors     []ProgressError `json:"errors,omitempty"`
	// Folders are the counts per old folder (its name on old, mUTF-7 as
	// IMAP writes it) as the last pass counted them; absent until then.
	Folders []FolderProgress `json:"folders,omitempty"`
	// Updated is when the engine last wrote the record.
	Updated time.Time `json:"updated"`
}

// Counted reports whether a pass has counted the user's mail, so that
// MessagesTotal is known.
func (p *UserProgress) Counted() bool {
	switch p.State {
	case PhaseCopying, PhaseDone, PhaseIncomplete, PhaseQuota:
		return true
	}
	return p.MessagesTotal > 0
}

// ProgressError is one problem met while copying a user's mail.
type ProgressError struct {
	// Kind is a short class: needs-login, auth, quota, oversize, upstream,
	// folder, uidvalidity, twin, internaldate, truncated.
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	Mailbox string    `json:"mailbox,omitempty"` // absent when not about one mailbox
	V       uint32    `json:"v,omitempty"`       // the message's virtual UID; absent when not about one
	At      time.Time `json:"at"`
	// Hint says what to do (Hint); absent when there is nothing to advise.
	Hint string `json:"hint,omitempty"`
}

// DomainProgress is a domain's copy progress: "progress" of each domain in
// GET /api/v1/domains and GET /api/v1/domains/{domain}.
type DomainProgress struct {
	// Members counts the domain's members by phase; every phase of Phases
	// is present. MembersTotal is their sum.
	Members      map[string]int `json:"members"`
	MembersTotal int            `json:"members_total"`
	// The sums over the members whose mail was counted.
	MessagesDone  int64 `json:"messages_done"`
	MessagesTotal int64 `json:"messages_total"`
	BytesDone     int64 `json:"bytes_done"`
	BytesTotal    int64 `json:"bytes_total"`
	// MessagesPerSecond and BytesPerSecond are the sums of the members'
	// known rates; absent when no member has one.
	MessagesPerSecond *float64 `json:"messages_per_second,omitempty"`
	BytesPerSecond    *float64 `json:"bytes_per_second,omitempty"`
	// ETASeconds is when the domain's copy should end at that rate; absent
	// when unknown, and while a member in state migrating is not counted
	// yet, waits for a login or has no room: then nobody can tell.
	ETASeconds *int64 `json:"eta_seconds,omitempty"`
	// Problems lists the members that need attention (GET
	// /api/v1/domains/{domain} only), sorted by user.
	Problems []MemberProblem `json:"problems,omitempty"`
}

// Settled reports whether nothing is left to copy: every member done.
func (d *DomainProgress) Settled() bool {
	return d.MembersTotal > 0 && d.Members[PhaseDone] == d.MembersTotal
}

// FolderProgress is one folder's share of a UserProgress.
type FolderProgress struct {
	Name          string `json:"name"`
	MessagesDone  int64  `json:"messages_done"`
	MessagesTotal int64  `json:"messages_total"`
}

// MemberProblem is a member whose copy needs attention: stopped (quota,
// needs-login), failed or incomplete, or with problems recorded.
type MemberProblem struct {
	User  string `json:"user"`
	Phase string `json:"phase"`
	// Kinds are the member's problems by kind, in the order first met.
	Kinds []KindCount `json:"kinds"`
}

// KindCount is one kind of problem of a member.
type KindCount struct {
	Kind  string `json:"kind"`
	Count int    `json:"count"`
	// Message is the last problem's text.
	Message string `json:"message,omitempty"`
	Hint    string `json:"hint,omitempty"`
}

// ProgressDoc decodes u.Progress; nil when the answer had none.
func (u *User) ProgressDoc() (*UserProgress, error) {
	if len(u.Progress) == 0 || string(u.Progress) == "null" {
		return nil, nil
	}
	p := new(UserProgress)
	if err := json.Unmarshal(u.Progress, p); err != nil {
		return nil, fmt.Errorf("decode the progress of %s: %w", u.User, err)
	}
	return p, nil
}

// snapshot is a user's done counts at the engine's Updated.
type snapshot struct {
	messages, bytes int64
	at              time.Time
}

// rateTrack is a user's last two distinct snapshots; prev is valid when
// pair.
type rateTrack struct {
	prev, last snapshot
	pair       bool
}

// rates keeps the snapshots of every user read so far.
type rates struct {
	now   func() time.Time
	mu    gosync.Mutex
	users map[string]*rateTrack
}

func newRates() *rates {
	return &rates{now: time.Now, users: map[string]*rateTrack{}}
}

// observe records p's counts and returns the rates between the user's last
// two snapshots; ok is false when they are unknown (see the notes above).
func (r *rates) observe(p *store.Progress) (msgsPerSec, bytesPerSec float64, ok bool) {
	if p.Updated.IsZero() {
		return 0, 0, false
	}
	cur := snapshot{messages: p.MessagesDone, bytes: p.BytesDone, at: p.Updated}
	r.mu.Lock()
	t := r.users[p.User]
	switch {
	case t == nil:
		r.users[p.User] = &rateTrack{last: cur}
	case cur.at.Equal(t.last.at):
		// The record read before; nothing new.
	case cur.at.Before(t.last.at), cur.messages < t.last.messages, cur.bytes < t.last.bytes:
		// Counted again, or an older record: start over.
		*t = rateTrack{last: cur}
	default:
		*t = rateTrack{prev: t.last, last: cur, pair: true}
	}
	var tr rateTrack
	if t != nil {
		tr = *t
	}
	r.mu.Unlock()
	if !tr.pair || p.State != PhaseCopying || r.now().Sub(tr.last.at) > staleAfter {
		return 0, 0, false
	}
	secs := tr.last.at.Sub(tr.prev.at).Seconds()
	if secs <= 0 {
		return 0, 0, false
	}
	return float64(tr.last.messages-tr.prev.messages) / secs, float64(tr.last.bytes-tr.prev.bytes) / secs, true
}

// eta returns the seconds left at the given rates, or false when unknown.
func eta(msgsLeft, bytesLeft int64, msgsPerSec, bytesPerSec float64) (int64, bool) {
	if msgsLeft <= 0 {
		return 0, true
	}
	if msgsPerSec <= 0 {
		return 0, false
	}
	secs := float64(msgsLeft) / msgsPerSec
	if bytesLeft > 0 && bytesPerSec > 0 {
		secs = max(secs, float64(bytesLeft)/bytesPerSec)
	}
	return int64(math.Ceil(secs)), true
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }

// round2 rounds to hundredths.
func round2(f float64) float64 { return math.Round(f*100) / 100 }

// userDoc makes the document of p, observing its counts.
func (s *server) userDoc(p *store.Progress) *UserProgress {
	doc := &UserProgress{
		User: p.User, State: p.State,
		MessagesDone: p.MessagesDone, MessagesTotal: p.MessagesTotal,
		BytesDone: p.BytesDone, BytesTotal: p.BytesTotal,
		Updated: p.Updated,
	}
	for _, f := range p.Folders {
		doc.Folders = append(doc.Folders, FolderProgress{Name: f.Name, MessagesDone: f.MessagesDone, MessagesTotal: f.MessagesTotal})
	}
	for _, e := range p.Errors {
		doc.Errors = append(doc.Errors, ProgressError{
			Kind: e.Kind, Message: e.Message, Mailbox: e.Mailbox, V: uint32(e.V), At: e.At, Hint: Hint(e.Kind),
		})
	}
	if mps, bps, ok := s.rates.observe(p); ok {
		doc.MessagesPerSecond, doc.BytesPerSecond = ptr(round2(mps)), ptr(math.Round(bps))
		if e, ok := eta(p.MessagesTotal-p.MessagesDone, p.BytesTotal-p.BytesDone, mps, bps); ok {
			doc.ETASeconds = &e
		}
	}
	return doc
}

// storeProgress is Options.Progress when the handler reads the store: the
// user's *UserProgress.
func (s *server) storeProgress(ctx context.Context, user string) (any, error) {
	var p *store.Progress
	err := s.Store.View(ctx, func(tx store.Tx) error {
		var err error
		p, err = store.GetProgress(tx, user)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.userDoc(p), nil
}

// member is one user of a domain, as the domain listing counts it.
type member struct {
	user  string
	state string // the user's routing state
	prog  *store.Progress
	doc   *UserProgress // nil without a record
}

// phase returns the phase m is counted in.
func (m *member) phase() string {
	if m.doc == nil || (m.doc.State == "" && !m.doc.Counted()) {
		return PhaseNotStarted
	}
	if m.doc.State == "" {
		return PhaseCopying // a pass recounting a user counted before
	}
	return m.doc.State
}

// domainProgress returns the progress of each domain in names (served,
// lower-cased), with the members' problems when withProblems.
func (s *server) domainProgress(ctx context.Context, names []string, withProblems bool) (map[string]*DomainProgress, error) {
	wanted := map[string]bool{}
	for _, n := range names {
		wanted[n] = true
	}
	members := map[string]*member{}
	add := func(user string) *member {
		u := store.CanonicalUser(user)
		if m := members[u]; m != nil {
			return m
		}
		rt := s.Router.Route(u)
		if rt == nil || !wanted[rt.Domain.Name] {
			return nil
		}
		m := &member{user: u, state: rt.State}
		members[u] = m
		return m
	}
	err := s.Store.View(ctx, func(tx store.Tx) error {
		list, err := store.ListProgress(tx)
		if err != nil {
			return err
		}
		for _, p := range list {
			if m := add(p.User); m != nil {
				m.prog = p
			}
		}
		err = tx.ForEach(store.BucketVerifiers, "", func(k string, _ []byte) error {
			add(k)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.ForEach(store.BucketVault, "", func(k string, _ []byte) error {
			provider, u, ok := strings.Cut(k, "\x00")
			if !ok {
				return nil
			}
			if rt := s.Router.Route(u); rt != nil && (rt.Old == provider || rt.New == provider) {
				add(u)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read the copy progress: %w", err)
	}
	for _, n := range names {
		for _, o := range s.Router.Users(n) {
			add(o.User)
		}
	}

	out := map[string]*DomainProgress{}
	blocked := map[string]bool{} // domains whose ETA nobody can tell
	for _, n := range names {
		d := &DomainProgress{Members: map[string]int{}}
		for _, ph := range Phases() {
			d.Members[ph] = 0
		}
		out[n] = d
	}
	users := make([]string, 0, len(members))
	for u := range members {
		users = append(users, u)
	}
	slices.Sort(users)
	for _, u := range users {
		m := members[u]
		if m.prog != nil {
			m.doc = s.userDoc(m.prog)
		}
		name := s.Router.Route(u).Domain.Name
		d := out[name]
		ph := m.phase()
		d.Members[ph]++
		d.MembersTotal++
		if m.state == config.StateMigrating {
			switch ph {
			case PhaseNotStarted, PhaseNeedsLogin, PhaseQuota:
				blocked[name] = true
			}
		}
		if m.doc == nil {
			continue
		}
		if m.doc.Counted() {
			d.MessagesDone += m.doc.MessagesDone
			d.MessagesTotal += m.doc.MessagesTotal
			d.BytesDone += m.doc.BytesDone
			d.BytesTotal += m.doc.BytesTotal
		}
		if m.doc.MessagesPerSecond != nil {
			d.MessagesPerSecond = ptr(round2(deref(d.MessagesPerSecond) + *m.doc.MessagesPerSecond))
			d.BytesPerSecond = ptr(deref(d.BytesPerSecond) + deref(m.doc.BytesPerSecond))
		}
		if withProblems {
			if mp := problemOf(m, ph); mp != nil {
				d.Problems = append(d.Problems, *mp)
			}
		}
	}
	for name, d := range out {
		if d.MessagesPerSecond == nil || blocked[name] {
			continue
		}
		if e, ok := eta(d.MessagesTotal-d.MessagesDone, d.BytesTotal-d.BytesDone, *d.MessagesPerSecond, *d.BytesPerSecond); ok {
			d.ETASeconds = &e
		}
	}
	return out, nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// problemOf returns m's problems, or nil when it has none.
func problemOf(m *member, ph string) *MemberProblem {
	mp := &MemberProblem{User: m.user, Phase: ph}
	if m.doc != nil {
		for _, e := range m.doc.Errors {
			i := slices.IndexFunc(mp.Kinds, func(k KindCount) bool { return k.Kind == e.Kind })
			if i < 0 {
				mp.Kinds = append(mp.Kinds, KindCount{Kind: e.Kind, Hint: e.Hint})
				i = len(mp.Kinds) - 1
			}
			mp.Kinds[i].Count++
			mp.Kinds[i].Message = e.Message
		}
	}
	switch ph {
	case PhaseQuota, PhaseNeedsLogin:
		// Stopped: say why even when the record lists no problem.
		if !slices.ContainsFunc(mp.Kinds, func(k KindCount) bool { return k.Kind == ph }) {
			mp.Kinds = append(mp.Kinds, KindCount{Kind: ph, Hint: Hint(ph)})
		}
	case PhaseFailed, PhaseIncomplete:
	default:
		if len(mp.Kinds) == 0 {
			return nil
		}
	}
	return mp
}

// fillProgress sets the progress of each domain in list, when the
// handler reads the store.
func (s *server) fillProgress(ctx context.Context, list []Domain, withProblems bool) error {
	if s.Store == nil || len(list) == 0 {
		return nil
	}
	names := make([]string, len(list))
	for i, d := range list {
		names[i] = d.Name
	}
	progress, err := s.domainProgress(ctx, names, withProblems)
	if err != nil {
		return err
	}
	for i := range list {
		list[i].Progress = progress[list[i].Name]
	}
	return nil
}
