package store

// The router: where each user's mail lives now.
//
// A domain's state comes from the config file ([domains."NAME"] state) unless
// a run-time override, set with `pecgate route` or the admin API and kept in
// BucketOverrides, says otherwise; a user's own override beats its domain's.
// Overrides survive restarts: once an operator has flipped a domain, the
// store, not the file, says where it is (Domains shows both).
//
// Transition rules (DESIGN.md, invariant 8), for a domain and for a user:
//
//   - migrating and new need the domain to have a new provider; force does
//     not lift this (ErrNoNewProvider).
//   - old -> new is refused: it must go through migrating, which freezes the
//     UID maps and starts the back-fill (invariant 1, 2).
//   - new -> old is refused: mail that arrived on new since the flip, and
//     the user's changes there, would vanish from view; go through migrating.
//   - migrating -> new is refused while messages are not yet in new
//     (Router.Uncopied > 0), or when nobody can count them (Uncopied nil).
//   - old <-> migrating and new -> migrating are always allowed (migrating ->
//     old is the rollback: old was never written).
//
// A refusal is a *RefusedError; force lifts every one of them, and the
// Change then says so and what was left to copy.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	gosync "sync"

	"github.com/pecgate/pecgate/config"
)

// Errors of the router's changes. Each is returned wrapped, with the name
// it is about.
var (
	// ErrBadState: a state that is not old, migrating or new.
	ErrBadState = errors.New("store: state must be old, migrating or new")
	// ErrBadUser: a user that is not an address (no '@', or nothing after it).
	ErrBadUser = errors.New("store: not a user address")
	// ErrUnknownDomain: a domain, or a user's domain, the config does not serve.
	ErrUnknownDomain = errors.New("store: domain not served")
	// ErrNotCounted, from Router.Uncopied: some member's mail has not been
	// counted yet (no copy pass reached them), so nobody can say what a
	// flip to new would leave behind. The flip is refused (forceable).
	ErrNotCounted = errors.New("mail not counted yet")
	// ErrNoNewProvider: migrating or new for a domain whose config names no
	// new provider. Force does not lift it.
	ErrNoNewProvider = errors.New("store: no new provider")
)

// RefusedError is a change that the transition rules refuse; the same
// change with force succeeds.
type RefusedError struct {
	// Reason says why, for an operator ("412 messages are not yet in new").
	Reason string
	// Uncopied is how many messages are not yet in new when that is why the
	// change was refused; 0 otherwise (including when nobody could count
	// them: Reason says so).
	Uncopied int
}

func (e *RefusedError) Error() string { return "store: change refused: " + e.Reason }

// Route is where one user's mail lives now.
type Route struct {
	// User is the address as given to Router.Route.
	User string
	// Domain is the user's domain in the config; never nil.
	Domain *config.Domain
	// State is the effective state: config.StateOld, StateMigrating or StateNew.
	State string
	// Old and New are the provider names (keys of the config's providers);
	// New is "" when the domain has none, and then State is old.
	Old, New string
	// Overridden says where State comes from: "" the config file,
	// OverrideDomain the domain's run-time override, OverrideUser the user's.
	Overridden string
}

// Change is what a SetDomain, SetUser or ClearUser did.
type Change struct {
	Kind string // OverrideDomain or OverrideUser
	Name string // the lower-cased domain or user
	// From and To are the effective states before and after; equal when
	// the effective state did not change (the override was recorded, or
	// there was nothing to do).
	From, To string
	// Cleared is true when a user override was removed (ClearUser).
	Cleared bool
	// Forced is true when force lifted a rule that would have refused the
	// change.
	Forced bool
	// Uncopied, for a forced change to new, is how many messages were not
	// yet in new (DESIGN invariant 8: "the report says what was left"); -1
	// when unknown; 0 otherwise.
	Uncopied int
}

// DomainStatus is one served domain, as Domains reports it.
type DomainStatus struct {
	Name string
	// Config is the state in the config file, State the effective one.
	Config, State string
	// Overridden is true when a run-time override sets State.
	Overridden bool
	// Old and New are provider names; New is "" when the domain has none.
	Old, New string
	// Users is how many users of the domain have their own override.
	Users int
}

// UserStatus is one user override.
type UserStatus struct {
	User  string // lower-cased address
	State string // the user's state (its override)
}

// IgnoredOverride is a stored override that NewRouter did not apply,
// because the config no longer allows it.
type IgnoredOverride struct {
	Override
	Reason string
}

// Router says which provider serves each user, from the config and the
// run-time overrides, and changes the overrides under the transition rules.
// It is safe for concurrent use; Route reads no store.
type Router struct {
	// Uncopied reports how many messages of a domain (user == "") or of a
	// user are not yet in new. Set by the wiring (the sync package) before
	// the Router is shared. nil means "unknown": then migrating -> new
	// needs force.
	Uncopied func(ctx context.Context, domain, user string) (int, error)

	cfg *config.Config
	st  Store

	chg gosync.Mutex // serialises changes; its holder may read the maps without mu

	mu      gosync.RWMutex
	domains map[string]string // domain -> state override
	users   map[string]string // lower-cased user -> state override

	ignored []IgnoredOverride

	subMu gosync.Mutex
	subs  map[chan struct{}]struct{}
}

// NewRouter loads the overrides from st; cfg gives each domain's default
// state. Stored overrides the config no longer allows (a domain or user
// domain not served any more, migrating or new without a new provider) are
// left in the store but not applied; Ignored lists them for the caller to
// log.
func NewRouter(ctx context.Context, cfg *config.Config, st Store) (*Router, error) {
	r := &Router{
		cfg: cfg, st: st,
		domains: map[string]string{}, users: map[string]string{},
		subs: map[chan struct{}]struct{}{},
	}
	var list []Override
	err := st.View(ctx, func(tx Tx) error {
		var err error
		list, err = ListOverrides(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load routing overrides: %w", err)
	}
	for _, o := range list {
		if reason := r.unusable(o); reason != "" {
			r.ignored = append(r.ignored, IgnoredOverride{Override: o, Reason: reason})
			continue
		}
		if o.Kind == OverrideDomain {
			r.domains[o.Name] = o.State
		} else {
			r.users[o.Name] = o.State
		}
	}
	return r, nil
}

// unusable says why the config does not allow the stored override o, or "".
func (r *Router) unusable(o Override) string {
	var d *config.Domain
	switch o.Kind {
	case OverrideDomain:
		d = r.cfg.Domains[o.Name]
	case OverrideUser:
		d = r.cfg.LookupDomain(o.Name)
	default:
		return fmt.Sprintf("unknown kind %q", o.Kind)
	}
	switch {
	case d == nil:
		return "domain not in the config"
	case !validState(o.State):
		return fmt.Sprintf("unknown state %q", o.State)
	case o.State != config.StateOld && d.New == "":
		return fmt.Sprintf("state %s needs a new provider, and the config names none", o.State)
	}
	return ""
}

// Ignored returns the stored overrides NewRouter did not apply, with why.
func (r *Router) Ignored() []IgnoredOverride { return slices.Clone(r.ignored) }

func validState(s string) bool {
	return s == config.StateOld || s == config.StateMigrating || s == config.StateNew
}

// Route says where a user's mail lives now: nil when the user's domain is
// not served (or user is not an address).
func (r *Router) Route(user string) *Route {
	d := r.cfg.LookupDomain(user)
	if d == nil {
		return nil
	}
	rt := &Route{User: user, Domain: d, State: d.State, Old: d.Old, New: d.New}
	r.mu.RLock()
	if s, ok := r.users[CanonicalUser(user)]; ok {
		rt.State, rt.Overridden = s, OverrideUser
	} else if s, ok := r.domains[d.Name]; ok {
		rt.State, rt.Overridden = s, OverrideDomain
	}
	r.mu.RUnlock()
	return rt
}

// domainState is d's effective state; the caller holds chg or mu.
func (r *Router) domainState(d *config.Domain) (state string, overridden bool) {
	if s, ok := r.domains[d.Name]; ok {
		return s, true
	}
	return d.State, false
}

// lookupDomain finds a served domain by name, case-insensitively.
func (r *Router) lookupDomain(name string) (*config.Domain, error) {
	d := r.cfg.Domains[strings.ToLower(name)]
	if d == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownDomain, name)
	}
	return d, nil
}

// lookupUser checks user and finds its served domain.
func (r *Router) lookupUser(user string) (string, *config.Domain, error) {
	at := strings.LastIndexByte(user, '@')
	if at <= 0 || at == len(user)-1 || strings.IndexByte(user, 0) >= 0 {
		return "", nil, fmt.Errorf("%w: %q", ErrBadUser, user)
	}
	d := r.cfg.LookupDomain(user)
	if d == nil {
		return "", nil, fmt.Errorf("%w: %q (user %q)", ErrUnknownDomain, strings.ToLower(user[at+1:]), user)
	}
	return CanonicalUser(user), d, nil
}

// SetDomain sets a domain's run-time state, under the transition rules
// unless force. Users with their own override keep it. The override is
// recorded even when it equals the config's state, so a later edit of the
// file does not move the domain; setting the state the override already
// holds does nothing.
func (r *Router) SetDomain(ctx context.Context, domain, state string, force bool) (*Change, error) {
	r.chg.Lock()
	defer r.chg.Unlock()
	d, err := r.lookupDomain(domain)
	if err != nil {
		return nil, err
	}
	from, _ := r.domainState(d)
	c := &Change{Kind: OverrideDomain, Name: d.Name, From: from, To: state}
	if cur, ok := r.domains[d.Name]; ok && cur == state {
		return c, nil
	}
	if err := r.check(ctx, d, "", c, force); err != nil {
		return nil, err
	}
	err = r.st.Update(ctx, func(tx Tx) error { return SetOverride(tx, OverrideDomain, d.Name, state) })
	if err != nil {
		return nil, fmt.Errorf("record state of %s: %w", d.Name, err)
	}
	r.mu.Lock()
	r.domains[d.Name] = state
	r.mu.Unlock()
	if from != state {
		r.notify()
	}
	return c, nil
}

// SetUser sets a user's own state, under the transition rules (from the
// user's current effective state) unless force. The override is recorded
// even when it equals the domain's state: it pins the user there when the
// domain moves on.
func (r *Router) SetUser(ctx context.Context, user, state string, force bool) (*Change, error) {
	r.chg.Lock()
	defer r.chg.Unlock()
	u, d, err := r.lookupUser(user)
	if err != nil {
		return nil, err
	}
	cur, has := r.users[u]
	from := cur
	if !has {
		from, _ = r.domainState(d)
	}
	c := &Change{Kind: OverrideUser, Name: u, From: from, To: state}
	if has && cur == state {
		return c, nil
	}
	if err := r.check(ctx, d, u, c, force); err != nil {
		return nil, err
	}
	err = r.st.Update(ctx, func(tx Tx) error { return SetOverride(tx, OverrideUser, u, state) })
	if err != nil {
		return nil, fmt.Errorf("record state of %s: %w", u, err)
	}
	r.mu.Lock()
	r.users[u] = state
	r.mu.Unlock()
	if from != state {
		r.notify()
	}
	return c, nil
}

// ClearUser removes a user's override: the user follows its domain's state
// again. Moving there obeys the transition rules unless force (a user
// pinned at old while the domain went to new must go through migrating
// first). Clearing a user without an override does nothing.
func (r *Router) ClearUser(ctx context.Context, user string, force bool) (*Change, error) {
	r.chg.Lock()
	defer r.chg.Unlock()
	u, d, err := r.lookupUser(user)
	if err != nil {
		return nil, err
	}
	to, _ := r.domainState(d)
	from, has := r.users[u]
	c := &Change{Kind: OverrideUser, Name: u, From: to, To: to}
	if !has {
		return c, nil
	}
	c.From, c.Cleared = from, true
	if err := r.check(ctx, d, u, c, force); err != nil {
		return nil, err
	}
	err = r.st.Update(ctx, func(tx Tx) error { return DeleteOverride(tx, OverrideUser, u) })
	if err != nil {
		return nil, fmt.Errorf("clear state of %s: %w", u, err)
	}
	r.mu.Lock()
	delete(r.users, u)
	r.mu.Unlock()
	if from != to {
		r.notify()
	}
	return c, nil
}

// Preview is what SetDomain would do, as PreviewDomain answers it.
type Preview struct {
	// Change is the change SetDomain would make: with force when Refused is
	// set (Forced true, Uncopied what would be left behind), without
	// otherwise.
	Change
	// Refused is why the transition rules refuse the change without force,
	// or nil when SetDomain would make it as asked. Its Uncopied is the
	// count the refusal would carry.
	Refused *RefusedError
}

// PreviewDomain says what SetDomain(ctx, domain, state, force) would do,
// changing nothing: it applies the same rules with the same count of
// messages not yet in new (Router.Uncopied). Errors are SetDomain's
// (ErrUnknownDomain, ErrBadState, ErrNoNewProvider, a failed count); a
// refusal is not an error but Preview.Refused. The answer may be stale the
// moment it is returned: the change itself checks again.
func (r *Router) PreviewDomain(ctx context.Context, domain, state string) (*Preview, error) {
	r.chg.Lock()
	defer r.chg.Unlock()
	d, err := r.lookupDomain(domain)
	if err != nil {
		return nil, err
	}
	from, _ := r.domainState(d)
	p := &Preview{Change: Change{Kind: OverrideDomain, Name: d.Name, From: from, To: state}}
	if cur, ok := r.domains[d.Name]; ok && cur == state {
		return p, nil
	}
	err = r.check(ctx, d, "", &p.Change, false)
	var re *RefusedError
	if !errors.As(err, &re) {
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	p.Refused = re
	p.Change = Change{Kind: OverrideDomain, Name: d.Name, From: from, To: state}
	if err := r.check(ctx, d, "", &p.Change, true); err != nil {
		return nil, err // force lifts every refusal; anything else is SetDomain's error too
	}
	return p, nil
}

// check applies the transition rules to c (From -> To) for domain d, or for
// user of d when user != "", and fills c.Forced and c.Uncopied.
func (r *Router) check(ctx context.Context, d *config.Domain, user string, c *Change, force bool) error {
	if !validState(c.To) {
		return fmt.Errorf("%w, got %q", ErrBadState, c.To)
	}
	if c.To != config.StateOld && d.New == "" {
		return fmt.Errorf("%w: %s cannot be %s until its config names one ([domains.%q] new)", ErrNoNewProvider, d.Name, c.To, d.Name)
	}
	refuse := func(e *RefusedError) error {
		if !force {
			return e
		}
		c.Forced = true
		return nil
	}
	switch {
	case c.From == c.To:
		return nil
	case c.From == config.StateOld && c.To == config.StateNew:
		if err := refuse(&RefusedError{Reason: fmt.Sprintf("%s: old -> new skips migrating, which freezes the UIDs clients know and copies the mail; go through migrating", c.Name)}); err != nil {
			return err
		}
		c.Uncopied = r.countForced(ctx, d, user)
		return nil
	case c.From == config.StateNew && c.To == config.StateOld:
		return refuse(&RefusedError{Reason: fmt.Sprintf("%s: new -> old hides the mail that arrived on new since the flip and the changes made there; go through migrating", c.Name)})
	case c.From == config.StateMigrating && c.To == config.StateNew:
		if r.Uncopied == nil {
			if err := refuse(&RefusedError{Reason: fmt.Sprintf("%s: the copy progress is unknown (no back-fill is running in this gateway), so nobody can tell whether every message is in new", c.Name)}); err != nil {
				return err
			}
			c.Uncopied = -1
			return nil
		}
		n, err := r.Uncopied(ctx, d.Name, user)
		if errors.Is(err, ErrNotCounted) {
			if err := refuse(&RefusedError{Reason: fmt.Sprintf("%s: not every member's mail has been counted yet, so nobody can tell what the flip would leave behind (%v); their copy starts at their first login, or when their credentials are fixed", c.Name, err)}); err != nil {
				return err
			}
			c.Uncopied = -1
			return nil
		}
		if err != nil {
			if !force {
				return fmt.Errorf("count the messages of %s not yet in new: %w", c.Name, err)
			}
			c.Forced, c.Uncopied = true, -1
			return nil
		}
		if n > 0 {
			if err := refuse(&RefusedError{Reason: fmt.Sprintf("%s: %d messages are not yet in new", c.Name, n), Uncopied: n}); err != nil {
				return err
			}
			c.Uncopied = n
		}
		return nil
	}
	return nil // old <-> migrating, new -> migrating
}

// countForced returns what Change.Uncopied says for a forced flip to new.
func (r *Router) countForced(ctx context.Context, d *config.Domain, user string) int {
	if r.Uncopied == nil {
		return -1
	}
	n, err := r.Uncopied(ctx, d.Name, user)
	if err != nil {
		return -1
	}
	return n
}

// Domains returns every served domain, sorted by name.
func (r *Router) Domains() []DomainStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	counts := map[string]int{}
	for u := range r.users {
		counts[u[strings.LastIndexByte(u, '@')+1:]]++
	}
	out := make([]DomainStatus, 0, len(r.cfg.Domains))
	for _, name := range slices.Sorted(maps.Keys(r.cfg.Domains)) {
		d := r.cfg.Domains[name]
		state, ov := r.domainState(d)
		out = append(out, DomainStatus{
			Name: d.Name, Config: d.State, State: state, Overridden: ov,
			Old: d.Old, New: d.New, Users: counts[d.Name],
		})
	}
	return out
}

// Domain returns one served domain's status, or an error wrapping
// ErrUnknownDomain.
func (r *Router) Domain(name string) (DomainStatus, error) {
	d, err := r.lookupDomain(name)
	if err != nil {
		return DomainStatus{}, err
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	state, ov := r.domainState(d)
	st := DomainStatus{Name: d.Name, Config: d.State, State: state, Overridden: ov, Old: d.Old, New: d.New}
	for u := range r.users {
		if u[strings.LastIndexByte(u, '@')+1:] == d.Name {
			st.Users++
		}
	}
	return st, nil
}

// Users returns the user overrides of a domain (case-insensitive), sorted
// by user; none for a domain not served.
func (r *Router) Users(domain string) []UserStatus {
	domain = strings.ToLower(domain)
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []UserStatus
	for u, s := range r.users {
		if u[strings.LastIndexByte(u, '@')+1:] == domain {
			out = append(out, UserStatus{User: u, State: s})
		}
	}
	slices.SortFunc(out, func(a, b UserStatus) int { return cmp.Compare(a.User, b.User) })
	return out
}

// Subscribe returns a channel that receives a token after every change of
// an effective state (a token, not one per change: a slow reader sees one
// for several), and a cancel func that stops the deliveries. Sessions use
// it to follow a flip while connected (invariant 8): on a token they call
// Route again.
func (r *Router) Subscribe() (ch <-chan struct{}, cancel func()) {
	c := make(chan struct{}, 1)
	r.subMu.Lock()
	r.subs[c] = struct{}{}
	r.subMu.Unlock()
	var once gosync.Once
	return c, func() {
		once.Do(func() {
			r.subMu.Lock()
			delete(r.subs, c)
			r.subMu.Unlock()
		})
	}
}

func (r *Router) notify() {
	r.subMu.Lock()
	defer r.subMu.Unlock()
	for c := range r.subs {
		select {
		case c <- struct{}{}:
		default: // a token is already waiting
		}
	}
}
