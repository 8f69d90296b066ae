package sync

// The background back-fill engine (DESIGN.md "Copying (sync)"; invariants
// 2, 5 and 6).
//
// Engine.Run schedules users; CopyUser is one pass over one user: log in
// to old and new, map the folders (folders.go), count what old holds and
// what new already has (one UID FETCH 1:* per folder and side), check the
// new side's quota, then copy each folder, INBOX first: for every old
// message the UID map does not yet place in new, adoption first (adopt.go),
// else a pipelined copy in windows (batch.go: one FETCH on old streamed
// into APPENDs on new, the mappings recorded in the store transaction that
// ends the window), and Copier.CopyToNew for what a window could not copy.
//
// Implementation notes:
//
//   - Crash safety (invariant 6) rests on two things: a copy's mapping is
//     committed with the copy (its window, or Copier), and a copy whose
//     APPEND completed but whose commit was lost is found on the next pass,
//     before anything is copied again: through the intent written before
//     the APPEND (Copier.Recover, at the start of each folder), else by
//     adoption. A pass keeps no state of its own
//     that a restart would need.
//   - Order: INBOX first, then the other folders; within a folder the
//     newest messages first, in chunks that double (256, 512, ...) copied
//     in ascending UID order, so that the new provider's consecutive
//     APPENDUIDs extend one run of the UID map per chunk: a folder of
//     100,000 messages ends as about ten runs, not 100,000.
//   - Limits, per provider, for the old and the new side alike:
//     copy_connections users at a time, each over one connection there
//     (the pass holds one connection to old and one to new); a token bucket
//     for copy_messages_per_second and one for copy_bytes_per_second, shared
//     by every user. Adoption's reads count like copies.
//   - Quota: before copying, the bytes still to copy (old messages not in
//     new and with no likely copy there) are compared with what new has
//     free: GETQUOTAROOT INBOX (RFC 9208, STORAGE in units of 1024 octets)
//     when offered, else the provider's quota_bytes minus what new's
//     mailboxes hold. Not enough room: nothing is copied and the progress
//     says why (KindQuota). An APPEND refused with OVERQUOTA stops the pass
//     the same way. A message larger than the new provider's limit
//     (max_message_size, APPENDLIMIT) is reported (KindOversize), never
//     silently skipped.
//   - Progress is written after counting, every 100 messages or 2 seconds,
//     and at the end. MessagesTotal counts the old messages that belong in
//     new (not expunged by the user, in folders the user kept),
//     MessagesDone those the map places in new; Uncopied is their
//     difference from the last counted pass.
//   - Passwords of passthrough providers live in memory only (Remember),
//     and one that a provider refused is dropped at once: no retry into a
//     lock-out.
//   - go-imap has no contexts: a pass closes its connections when its
//     context ends.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

// Sentinel errors of CopyUser and Uncopied.
var (
	// ErrNeedsLogin: a passthrough provider needs the member's password,
	// which pecgate holds only after the member's next login.
	ErrNeedsLogin = errors.New("sync: copy waits for the member to log in once")
	// ErrNotMigrating: the user is not served, or not in state migrating.
	ErrNotMigrating = errors.New("sync: user not in state migrating")
	// ErrQuota: the new provider has no room for what is left to copy.
	ErrQuota = errors.New("sync: not enough room on the new provider")
	// ErrNotCounted: no pass has counted the user's mail yet. It is the
	// store's sentinel, which the router turns into a refusal.
	ErrNotCounted = store.ErrNotCounted
)

// Progress states (store.Progress.State) written by the engine.
const (
	StateCopying    = "copying"     // counted; copying
	StateDone       = "done"        // every old message is in new
	StateIncomplete = "incomplete"  // the pass ended with messages left (see Errors)
	StateQuota      = "quota"       // stopped: no room on the new provider
	StateNeedsLogin = "needs-login" // waits for the member's next login
	StateFailed     = "failed"      // the pass failed (see Errors); retried later
)

// Error kinds (store.ProgressError.Kind) written by the engine.
const (
	KindNeedsLogin   = "needs-login"   // a passthrough password is needed
	KindAuth         = "auth"          // a provider refused the credentials
	KindNoCredential = "no-credential" // the vault has no credentials for the user on a vault provider
	KindQuota        = "quota"         // no room on the new provider
	KindOversize     = "oversize"      // a message over the new provider's size limit
	KindUpstream     = "upstream"      // a provider failed or refused a command
	KindFolder       = "folder"        // a folder could not be created or subscribed in new
	KindUIDValidity  = "uidvalidity"   // old's UIDVALIDITY no longer matches the folder's map
	KindTwin         = "twin"          // in new already under a virtual UID of its own
	KindInternalDate = "internaldate"  // adopted a copy whose INTERNALDATE differs
	KindTruncated    = "truncated"     // more errors than the progress keeps
)

// Schedule constants.
const (
	wakePeriod       = 30 * time.Second // Run looks for work at least this often
	rescanAfter      = 10 * time.Minute // a user copied completely is passed over again after
	quotaRetry       = 30 * time.Minute
	authRetry        = time.Hour // master or vault credentials refused
	minTouchInterval = 30 * time.Second
	maxBackoff       = 30 * time.Minute
	maxErrors        = 100 // per progress record
	saveEvery        = 100 // messages
	saveInterval     = 2 * time.Second
	maxReconnects    = 5 // per pass
	firstChunk       = 256
)

// Options configure an Engine.
type Options struct {
	// Config gives the domains and providers. Required.
	Config *config.Config
	// Store holds progress, folder maps and the users known to the gateway.
	// Nil means Maps.Store().
	Store store.Store
	// Maps is the UID map cache shared with the proxy, so that sessions see
	// each copy at once and copies are serialised with theirs. Nil means a
	// cache of the engine's own over Store (only for a gateway without
	// sessions).
	Maps *store.MapCache
	// Router says who is in state migrating and notifies flips. Required.
	Router *store.Router
	// Backends are the providers. Required.
	Backends *backend.Set
	// Secrets gives vault credentials; nil when no provider uses a vault.
	Secrets backend.Secrets
	// Log receives the engine's log lines; nil discards them.
	Log *slog.Logger
	// Metrics counts the messages and bytes copied and the problems, by
	// domain; nil: none.
	Metrics *metrics.Metrics
}

// Engine copies every user in state migrating from old to new in the
// background. It is safe for concurrent use.
type Engine struct {
	cfg      *config.Config
	st       store.Store
	maps     *store.MapCache
	router   *store.Router
	backends *backend.Set
	secrets  backend.Secrets
	log      *slog.Logger
	metrics  *metrics.Metrics
	copier   Copier
	clock    clock

	wake chan struct{}

	mu     gosync.Mutex
	users  map[string]*userSched // canonical user -> schedule
	known  map[string]bool       // users found in the store at the last look
	slots  map[string]chan struct{}
	limits map[string]*limiter

	// afterCount, when set (tests), runs after a pass has counted and
	// checked the quota, before it copies.
	afterCount func(user string)
	// beforeRecord, when set (tests), runs in a copy window after its
	// APPENDs are answered and before their mappings are committed; an
	// error ends the pass there, as a crash would.
	beforeRecord func() error
}

// userSched is one user's place in the schedule.
type userSched struct {
	lock       gosync.Mutex // held by the user's pass
	password   string       // Remember'ed; "" when none
	running    bool
	touched    bool      // a live session: first in line
	waitLogin  bool      // needs a password; Remember wakes it
	next       time.Time // not before, unless touched
	lastEnd    time.Time
	fails      int
	everQueued bool
	// folders remembers, per old folder, the state in which the last pass
	// left it completely copied; only the user's pass (holding lock) uses it.
	folders map[string]folderSummary
}

// folderSummary lets a later pass skip a folder that nothing changed since
// it was completely copied: same UIDVALIDITY, UIDNEXT and message count on
// old, same map (Next, expunged count).
type folderSummary struct {
	uidValidity, uidNext, messages uint32
	mapNext                        store.UID
	mapGone                        uint64
	total, bytes                   int64
}

// mapFingerprint is what folderSummary compares of a map; the caller holds
// its entry.
func mapFingerprint(m *store.Map) (next store.UID, gone uint64) {
	for _, g := range m.Gone {
		gone += uint64(g.Hi-g.Lo) + 1
	}
	return m.Next, gone
}

// NewEngine returns an engine; Run starts it.
func NewEngine(o Options) *Engine {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st, maps := o.Store, o.Maps
	if st == nil && maps != nil {
		st = maps.Store()
	}
	if maps == nil && st != nil {
		maps = store.NewMapCache(st, 0)
	}
	return &Engine{
		cfg: o.Config, st: st, maps: maps, router: o.Router, backends: o.Backends, secrets: o.Secrets,
		log: log.With("component", "backfill"), clock: realClock{},
		metrics: o.Metrics, copier: Copier{Metrics: o.Metrics, Source: metrics.SourceBackfill},
		wake:  make(chan struct{}, 1),
		users: map[string]*userSched{}, known: map[string]bool{},
		slots: map[string]chan struct{}{}, limits: map[string]*limiter{},
	}
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// sched returns u's schedule; e.mu is held.
func (e *Engine) sched(u string) *userSched {
	s := e.users[u]
	if s == nil {
		s = &userSched{}
		e.users[u] = s
	}
	return s
}

// Remember keeps user's password, from their last successful login, in
// memory only, for providers with auth = "passthrough"; a user waiting for
// it is scheduled at once.
func (e *Engine) Remember(user, password string) {
	if user == "" || password == "" {
		return
	}
	u := store.CanonicalUser(user)
	e.mu.Lock()
	s := e.sched(u)
	s.password = password
	if s.waitLogin {
		s.waitLogin, s.next = false, time.Time{}
	}
	e.mu.Unlock()
	e.poke()
}

// Touch says user has a live session: the user's next pass is scheduled
// before everyone else's (at most once every 30 seconds).
func (e *Engine) Touch(user string) {
	if user == "" {
		return
	}
	e.mu.Lock()
	e.sched(store.CanonicalUser(user)).touched = true
	e.mu.Unlock()
	e.poke()
}

// Retry says user's credentials changed (a member set their vault
// credentials on the member page, an operator imported new ones): the
// user's next pass starts now, not when the back-off after the last
// refusal ends.
func (e *Engine) Retry(user string) {
	if user == "" {
		return
	}
	e.mu.Lock()
	s := e.sched(store.CanonicalUser(user))
	s.next, s.lastEnd = time.Time{}, time.Time{}
	e.mu.Unlock()
	e.poke()
}

// forget drops a password a provider refused.
func (e *Engine) forget(u, password string) {
	e.mu.Lock()
	if s := e.users[u]; s != nil && s.password == password {
		s.password = ""
	}
	e.mu.Unlock()
}

// KnownPassword returns the member's own password the engine holds in
// memory (learnt at their last login through the gateway, for a
// passthrough provider), for checks that run inside the gateway
// (preflight); ok is false when it holds none. It never leaves the
// process.
func (e *Engine) KnownPassword(user string) (password string, ok bool) {
	pw := e.password(store.CanonicalUser(user))
	return pw, pw != ""
}

func (e *Engine) password(u string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s := e.users[u]; s != nil {
		return s.password
	}
	return ""
}

// Run schedules back-fill passes until ctx ends, then waits for the
// passes it started and returns nil. It looks for work when a routing
// state changes, when Remember or Touch name a user, when a pass ends and
// every 30 seconds, and copies every known user in state migrating: users
// with a vault credential for their domain's old or new provider, a pinned
// verifier, a UID map or a progress record in the store, and users
// Remember'ed or Touch'ed. Users with live sessions go first, then those
// never copied, then the longest waiting.
func (e *Engine) Run(ctx context.Context) error {
	if e.router == nil || e.backends == nil || e.st == nil {
		return errors.New("sync: engine needs a router, backends and a store")
	}
	changes, cancel := e.router.Subscribe()
	defer cancel()
	tick := time.NewTicker(wakePeriod)
	defer tick.Stop()
	var wg gosync.WaitGroup
	defer wg.Wait()
	look := true
	for {
		if look {
			if err := e.loadKnown(ctx); err != nil && ctx.Err() == nil {
				e.log.Warn("cannot list the users to copy", "err", err)
			}
		}
		e.schedule(ctx, &wg)
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
			look = true
		case <-tick.C:
			look = true
		case <-e.wake:
			look = false
		}
	}
}

// loadKnown refreshes the users found in the store.
func (e *Engine) loadKnown(ctx context.Context) error {
	users, err := e.storeUsers(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(users))
	for _, u := range users {
		known[u] = true
	}
	e.mu.Lock()
	e.known = known
	e.mu.Unlock()
	return nil
}

// storeUsers lists the users the store knows of (see Run), canonical.
func (e *Engine) storeUsers(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	err := e.st.View(ctx, func(tx store.Tx) error {
		add := func(u string) {
			if u != "" {
				seen[store.CanonicalUser(u)] = true
			}
		}
		err := tx.ForEach(store.BucketVault, "", func(k string, _ []byte) error {
			provider, u, ok := strings.Cut(k, "\x00")
			if !ok {
				return nil
			}
			if d := e.cfg.LookupDomain(u); d != nil && (d.Old == provider || d.New == provider) {
				add(u)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, b := range []string{store.BucketVerifiers, store.BucketMaps, store.BucketProgress} {
			err := tx.ForEach(b, "", func(k string, _ []byte) error {
				u, _, _ := strings.Cut(k, "\x00")
				add(u)
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return sortedKeys(seen), err
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// schedule starts a pass for each due user in state migrating whose
// providers have a free copy slot.
func (e *Engine) schedule(ctx context.Context, wg *gosync.WaitGroup) {
	if ctx.Err() != nil {
		return
	}
	now := e.clock.Now()
	type cand struct {
		u string
		s *userSched
	}
	var due []cand
	e.mu.Lock()
	names := map[string]bool{}
	for u := range e.known {
		names[u] = true
	}
	for u := range e.users {
		names[u] = true
	}
	for u := range names {
		s := e.sched(u)
		switch {
		case s.running:
		case s.touched && !now.Before(s.lastEnd.Add(minTouchInterval)) && !(s.waitLogin && s.password == ""):
			due = append(due, cand{u, s})
		case !now.Before(s.next) && !s.waitLogin:
			due = append(due, cand{u, s})
		}
	}
	e.mu.Unlock()
	slices.SortFunc(due, func(a, b cand) int {
		if a.s.touched != b.s.touched {
			if a.s.touched {
				return -1
			}
			return 1
		}
		if a.s.everQueued != b.s.everQueued {
			if !a.s.everQueued {
				return -1
			}
			return 1
		}
		return cmp.Or(a.s.next.Compare(b.s.next), strings.Compare(a.u, b.u))
	})
	for _, c := range due {
		route := e.router.Route(c.u)
		if route == nil || route.State != config.StateMigrating || route.New == "" {
			continue
		}
		release, ok := e.tryAcquire(route.Old, route.New)
		if !ok {
			continue
		}
		e.mu.Lock()
		c.s.running, c.s.touched, c.s.everQueued = true, false, true
		e.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer e.poke()
			defer release()
			e.runScheduled(ctx, route, c.s)
		}()
	}
}

// runScheduled runs one pass for the scheduler and sets the user's next turn.
func (e *Engine) runScheduled(ctx context.Context, route *store.Route, s *userSched) {
	log := e.log.With("user", route.User, "domain", route.Domain.Name)
	defer func() {
		if r := recover(); r != nil {
			log.Error("back-fill pass panicked", "panic", r)
			e.mu.Lock()
			s.running, s.fails = false, s.fails+1
			s.next = e.clock.Now().Add(maxBackoff)
			e.mu.Unlock()
		}
	}()
	prog, err := func() (*store.Progress, error) {
		s.lock.Lock()
		defer s.lock.Unlock()
		return e.pass(ctx, route, s)
	}()
	now := e.clock.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	s.running, s.lastEnd = false, now
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, ErrNeedsLogin) && s.password != "":
		// Remember ran while this pass was failing for want of the
		// password: go again now rather than wait for a wake already spent.
		s.next = time.Time{}
	case errors.Is(err, ErrNeedsLogin):
		s.waitLogin = true
		log.Info("back-fill waits for the member to log in")
	case errors.Is(err, ErrQuota):
		s.next = now.Add(quotaRetry)
		log.Warn("back-fill stopped: no room on the new provider", "err", err)
	case backend.IsAuthFailure(err):
		s.next = now.Add(authRetry)
		log.Warn("back-fill login refused", "err", err)
	case err != nil:
		s.fails++
		d := min(time.Minute<<min(s.fails-1, 10), maxBackoff)
		s.next = now.Add(d)
		log.Warn("back-fill pass failed", "err", err, "retry_in", d)
	default:
		s.fails = 0
		s.next = now.Add(rescanAfter)
		log.Info("back-fill pass ended", "state", prog.State, "messages_done", prog.MessagesDone, "messages_total", prog.MessagesTotal)
	}
}

// CopyUser runs one full pass over every folder of user, which must be in
// state migrating, and returns the progress it stored. It waits for a
// copy slot on both providers and for any other pass over the same user.
// The error is nil when the pass went through, even with messages left
// (State incomplete, Errors say why); it wraps ErrNeedsLogin, ErrQuota, a
// login refusal (backend.IsAuthFailure) or the failure that ended the pass
// otherwise.
func (e *Engine) CopyUser(ctx context.Context, user string) (*store.Progress, error) {
	route := e.router.Route(user)
	if route == nil || route.State != config.StateMigrating || route.New == "" {
		return nil, fmt.Errorf("%w: %s", ErrNotMigrating, user)
	}
	release, err := e.acquire(ctx, route.Old, route.New)
	if err != nil {
		return nil, err
	}
	defer release()
	e.mu.Lock()
	s := e.sched(store.CanonicalUser(user))
	e.mu.Unlock()
	s.lock.Lock()
	defer s.lock.Unlock()
	return e.pass(ctx, route, s)
}

// Uncopied reports how many messages are not yet in new, from the stored
// progress of the last counted pass: of user, or, when user is "", of
// every known user of domain that follows the domain's state (users with
// their own routing override are left out: a domain flip does not move
// them). A user never counted makes it an error wrapping ErrNotCounted.
// It is meant for store.Router.Uncopied.
func (e *Engine) Uncopied(ctx context.Context, domain, user string) (int, error) {
	var users []string
	if user != "" {
		users = []string{store.CanonicalUser(user)}
	} else {
		all, err := e.storeUsers(ctx)
		if err != nil {
			return 0, err
		}
		e.mu.Lock()
		for u := range e.users {
			all = append(all, u)
		}
		e.mu.Unlock()
		slices.Sort(all)
		for _, u := range slices.Compact(all) {
			d := e.cfg.LookupDomain(u)
			if d == nil || d.Name != strings.ToLower(domain) {
				continue
			}
			if rt := e.router.Route(u); rt != nil && rt.Overridden == store.OverrideUser {
				continue
			}
			users = append(users, u)
		}
	}
	var sum int64
	var missing []string
	err := e.st.View(ctx, func(tx store.Tx) error {
		for _, u := range users {
			p, err := store.GetProgress(tx, u)
			switch {
			case errors.Is(err, store.ErrNotFound):
				missing = append(missing, u)
				continue
			case err != nil:
				return err
			case !counted(p):
				missing = append(missing, u)
				continue
			}
			sum += max(p.MessagesTotal-p.MessagesDone, 0)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(missing) > 0 {
		return 0, fmt.Errorf("%w: %d members (%s)", ErrNotCounted, len(missing), strings.Join(missing[:min(len(missing), 5)], ", "))
	}
	return int(min(sum, math.MaxInt32)), nil
}

// counted reports whether p holds the counts of a pass.
func counted(p *store.Progress) bool {
	switch p.State {
	case StateCopying, StateDone, StateIncomplete, StateQuota:
		return true
	}
	return p.MessagesTotal > 0
}

// slotsOf returns provider's copy slots; e.mu is held.
func (e *Engine) slotsOf(provider string) chan struct{} {
	c := e.slots[provider]
	if c == nil {
		n := config.DefaultCopyConnections
		if p := e.backends.Provider(provider); p != nil && p.Config().CopyConnections > 0 {
			n = p.Config().CopyConnections
		}
		c = make(chan struct{}, n)
		e.slots[provider] = c
	}
	return c
}

// slotSet returns the slots of the providers in a fixed order (no
// deadlock between passes that wait).
func (e *Engine) slotSet(providers ...string) []chan struct{} {
	slices.Sort(providers)
	providers = slices.Compact(providers)
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]chan struct{}, len(providers))
	for i, p := range providers {
		out[i] = e.slotsOf(p)
	}
	return out
}

func releaser(held []chan struct{}) func() {
	var once gosync.Once
	return func() {
		once.Do(func() {
			for _, c := range held {
				<-c
			}
		})
	}
}

// tryAcquire takes a copy slot on each provider without waiting.
func (e *Engine) tryAcquire(providers ...string) (func(), bool) {
	var held []chan struct{}
	for _, c := range e.slotSet(providers...) {
		select {
		case c <- struct{}{}:
			held = append(held, c)
		default:
			releaser(held)()
			return nil, false
		}
	}
	return releaser(held), true
}

// acquire takes a copy slot on each provider, waiting until ctx ends.
func (e *Engine) acquire(ctx context.Context, providers ...string) (func(), error) {
	var held []chan struct{}
	for _, c := range e.slotSet(providers...) {
		select {
		case c <- struct{}{}:
			held = append(held, c)
		case <-ctx.Done():
			releaser(held)()
			return nil, ctx.Err()
		}
	}
	return releaser(held), nil
}

// pass is one CopyUser pass.
type pass struct {
	e          *Engine
	sched      *userSched
	ctx        context.Context
	route      *store.Route
	user       string // as routed (route.User)
	log        *slog.Logger
	oldP, newP *backend.Provider
	oldC, newC *backend.IMAPConn
	password   string
	folders    []*folder
	maxSize    int64 // the new provider's message size limit; 0: none known
	reconnects int

	connMu    gosync.Mutex // guards oldC and newC against closeConns
	cancelled bool

	prog      store.Progress
	sinceSave int
	lastSave  time.Time
}

// pass runs one pass over route's user, whose schedule s is locked, and
// stores its progress.
func (e *Engine) pass(ctx context.Context, route *store.Route, s *userSched) (*store.Progress, error) {
	u := store.CanonicalUser(route.User)
	p := &pass{e: e, ctx: ctx, route: route, user: route.User, sched: s, log: e.log.With("user", u, "domain", route.Domain.Name, "provider", route.New, "old_provider", route.Old)}
	// Until this pass has counted, the progress keeps the last counts.
	err := e.st.View(ctx, func(tx store.Tx) error {
		prev, err := store.GetProgress(tx, u)
		if err == nil {
			p.prog = *prev
		}
		if errors.Is(err, store.ErrNotFound) {
			err = nil
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the progress of %s: %w", u, err)
	}
	prev := p.prog
	p.prog.User, p.prog.State, p.prog.Errors = u, "", nil
	err = p.run()
	if p.oldC != nil {
		p.oldC.Logout()
	}
	if p.newC != nil {
		p.newC.Logout()
	}
	switch {
	case err == nil && p.prog.MessagesDone >= p.prog.MessagesTotal:
		p.prog.State = StateDone
	case err == nil:
		p.prog.State = StateIncomplete
	case p.prog.State == StateQuota || p.prog.State == StateNeedsLogin:
	case ctx.Err() != nil:
		// Shutting down: the next pass resumes. A pass that had not
		// counted yet leaves the record as it was.
		if p.prog.State == "" {
			return &prev, err
		}
	default:
		p.prog.State = StateFailed
		if !slices.ContainsFunc(p.prog.Errors, func(pe store.ProgressError) bool { return pe.Kind == KindAuth || pe.Kind == KindNoCredential }) {
			p.addError(KindUpstream, "", 0, err.Error())
		}
	}
	if serr := p.save(true); serr != nil && err == nil {
		err = serr
	}
	out := p.prog
	return &out, err
}

// saveCtx is the context of store writes that must happen once their IMAP
// side did, even while shutting down.
func (p *pass) saveCtx() context.Context { return context.WithoutCancel(p.ctx) }

// save stores the progress: when force, or every saveEvery messages or
// saveInterval.
func (p *pass) save(force bool) error {
	now := p.e.clock.Now()
	if !force && p.sinceSave < saveEvery && now.Sub(p.lastSave) < saveInterval {
		return nil
	}
	p.prog.Updated = now
	p.sinceSave, p.lastSave = 0, now
	ctx, cancel := context.WithTimeout(p.saveCtx(), 30*time.Second)
	defer cancel()
	err := p.e.st.Update(ctx, func(tx store.Tx) error { return store.PutProgress(tx, &p.prog) })
	if err != nil {
		p.log.Warn("cannot store the back-fill progress", "err", err)
	}
	return err
}

// addError records a problem in the progress, at most maxErrors of them.
func (p *pass) addError(kind, mailbox string, v store.UID, msg string) {
	pe := store.ProgressError{Kind: kind, Message: msg, Mailbox: mailbox, V: v, At: p.e.clock.Now()}
	switch n := len(p.prog.Errors); {
	case n < maxErrors-1:
		p.prog.Errors = append(p.prog.Errors, pe)
	case n == maxErrors-1:
		p.prog.Errors = append(p.prog.Errors, store.ProgressError{Kind: KindTruncated, Message: "further problems are not listed", At: pe.At})
	}
	p.e.metrics.BackfillError(p.route.Domain.Name, kind)
	p.log.Warn("back-fill problem", "kind", kind, "mailbox", mailbox, "v", v, "detail", msg)
}

// closed reports whether c's connection is gone.
func closed(c *backend.IMAPConn) bool {
	select {
	case <-c.Closed():
		return true
	default:
		return false
	}
}

// closeConns closes the pass's connections when its context ends, from
// another goroutine: only the network side (imapclient's Close), so that
// the connection slots are released by the pass itself.
func (p *pass) closeConns() {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	p.cancelled = true
	for _, c := range []*backend.IMAPConn{p.oldC, p.newC} {
		if c != nil {
			c.Client.Close()
		}
	}
}

// setConn replaces *slot with c, unless the pass was cancelled meanwhile.
func (p *pass) setConn(slot **backend.IMAPConn, c *backend.IMAPConn) error {
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.cancelled {
		c.Close()
		return p.ctx.Err()
	}
	*slot = c
	return nil
}

// run is the pass proper; it sets p.prog's counts and, for the outcomes
// it knows, its State.
func (p *pass) run() error {
	ctx := p.ctx
	if err := p.login(); err != nil {
		return err
	}
	closedAll := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		p.closeConns()
		close(closedAll)
	})
	defer func() {
		if !stop() {
			<-closedAll
		}
	}()
	if err := p.planFolders(); err != nil {
		return p.ctxOr(err)
	}
	var total, done, bytes, bytesDone int64
	// The per-folder counts: allocated whole first, so that the messages'
	// pointers into it (oldMsg.fp) stay valid.
	folders := make([]store.FolderProgress, len(p.folders))
	for i, f := range p.folders {
		fp := &folders[i]
		fp.Name = f.Old
		if sum, ok := p.unchanged(f); ok {
			total, done = total+sum.total, done+sum.total
			bytes, bytesDone = bytes+sum.bytes, bytesDone+sum.bytes
			fp.MessagesTotal, fp.MessagesDone = sum.total, sum.total
			continue
		}
		if err := p.scanFolder(f); err != nil {
			return p.ctxOr(fmt.Errorf("count %q: %w", f.Old, err))
		}
		for _, o := range f.msgs {
			o.fp = fp
			total, bytes = total+1, bytes+o.Size
			fp.MessagesTotal++
			if o.copied {
				done, bytesDone = done+1, bytesDone+o.Size
				fp.MessagesDone++
			}
		}
	}
	p.prog.Folders = folders
	p.prog.MessagesTotal, p.prog.MessagesDone = total, done
	p.prog.BytesTotal, p.prog.BytesDone = bytes, bytesDone
	p.prog.State = StateCopying
	p.save(true)
	if err := p.checkQuota(); err != nil {
		return p.ctxOr(err)
	}
	if h := p.e.afterCount; h != nil {
		h(p.user)
	}
	for _, f := range p.folders {
		if err := p.copyFolder(f); err != nil {
			return p.ctxOr(err)
		}
		p.remember(f)
	}
	return nil
}

// unchanged reports whether f is as the last pass left it, completely
// copied: then it needs neither counting nor copying.
func (p *pass) unchanged(f *folder) (folderSummary, bool) {
	sum, ok := p.sched.folders[f.Old]
	if !ok || f.noCopy {
		return sum, false
	}
	st, err := p.oldC.Status(f.Old, &imap.StatusOptions{NumMessages: true, UIDNext: true, UIDValidity: true}).Wait()
	if err != nil || st.NumMessages == nil || st.UIDValidity != sum.uidValidity || uint32(st.UIDNext) != sum.uidNext || *st.NumMessages != sum.messages {
		return sum, false
	}
	e, err := p.e.maps.Get(p.ctx, p.user, f.Old)
	if err != nil {
		return sum, false
	}
	e.Lock()
	defer e.Unlock()
	if e.M == nil {
		return sum, false
	}
	next, gone := mapFingerprint(e.M)
	if next != sum.mapNext || gone != sum.mapGone {
		return sum, false
	}
	f.skipped = true
	p.log.Debug("folder unchanged since it was copied", "mailbox", f.Old)
	return sum, true
}

// remember records f's summary when the pass left it completely copied,
// and forgets it otherwise.
func (p *pass) remember(f *folder) {
	if f.skipped {
		return
	}
	if p.sched.folders == nil {
		p.sched.folders = map[string]folderSummary{}
	}
	delete(p.sched.folders, f.Old)
	if f.noCopy || f.entry == nil || f.oldStatus.uidValidity == 0 {
		return
	}
	sum := f.oldStatus
	for _, o := range f.msgs {
		if !o.copied {
			return
		}
		sum.total, sum.bytes = sum.total+1, sum.bytes+o.Size
	}
	f.entry.Lock()
	sum.mapNext, sum.mapGone = mapFingerprint(f.entry.M)
	f.entry.Unlock()
	p.sched.folders[f.Old] = sum
}

// ctxOr returns ctx's error when the context ended (the connections were
// closed under the pass), else err.
func (p *pass) ctxOr(err error) error {
	if cerr := p.ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// login logs in to old and new with each provider's credentials.
func (p *pass) login() error {
	p.oldP, p.newP = p.e.backends.Provider(p.route.Old), p.e.backends.Provider(p.route.New)
	if p.oldP == nil || p.newP == nil {
		return fmt.Errorf("providers %q and %q: not configured", p.route.Old, p.route.New)
	}
	u := store.CanonicalUser(p.user)
	if p.oldP.Config().Auth == config.AuthPassthrough || p.newP.Config().Auth == config.AuthPassthrough {
		p.password = p.e.password(u)
		if p.password == "" {
			p.prog.State = StateNeedsLogin
			p.addError(KindNeedsLogin, "", 0, "copy waits for the member to log in once")
			return ErrNeedsLogin
		}
	}
	var err error
	if p.oldC, err = p.dial(p.oldP); err != nil {
		return err
	}
	if p.newC, err = p.dial(p.newP); err != nil {
		return err
	}
	p.maxSize = p.newP.SizeLimit(p.newC)
	return nil
}

// dial logs in to provider pr for the user, recording a refusal.
func (p *pass) dial(pr *backend.Provider) (*backend.IMAPConn, error) {
	c, err := pr.LoginUser(p.ctx, p.user, p.password, p.e.secrets, nil)
	if err == nil {
		return c, nil
	}
	if backend.IsAuthFailure(err) || errors.Is(err, backend.ErrNoCredential) {
		kind := KindAuth
		if errors.Is(err, backend.ErrNoCredential) {
			kind = KindNoCredential
		}
		p.addError(kind, "", 0, err.Error())
		if pr.Config().Auth == config.AuthPassthrough {
			p.e.forget(store.CanonicalUser(p.user), p.password)
		}
	}
	return nil, err
}

// reconnect replaces a broken connection and selects f again on both
// sides (old read-only).
func (p *pass) reconnect(f *folder) error {
	if p.ctx.Err() != nil {
		return p.ctx.Err()
	}
	if p.reconnects >= maxReconnects {
		return errors.New("too many broken connections in one pass")
	}
	p.reconnects++
	for _, side := range []struct {
		c  **backend.IMAPConn
		pr *backend.Provider
	}{{&p.oldC, p.oldP}, {&p.newC, p.newP}} {
		if !closed(*side.c) {
			continue
		}
		c, err := p.dial(side.pr)
		if err != nil {
			return err
		}
		(*side.c).Close() // frees its slot
		if err := p.setConn(side.c, c); err != nil {
			return err
		}
	}
	return p.selectBoth(f)
}

func (p *pass) selectBoth(f *folder) error {
	if _, err := p.oldC.Select(f.Old, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return fmt.Errorf("examine %q on old: %w", f.Old, err)
	}
	if _, err := p.newC.Select(f.New, nil).Wait(); err != nil {
		return fmt.Errorf("select %q on new: %w", f.New, err)
	}
	return nil
}

// scanFolder reads f on both sides: its map (made as the proxy makes it
// when the folder first leaves state old), old's messages that belong in
// new, and new's messages that may be their copies.
func (p *pass) scanFolder(f *folder) error {
	sel, err := p.oldC.Select(f.Old, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		if isNonExistent(err) {
			f.noCopy = true // deleted on old since LIST
			return nil
		}
		return fmt.Errorf("examine on old: %w", err)
	}
	f.oldStatus = folderSummary{uidValidity: sel.UIDValidity, uidNext: uint32(sel.UIDNext), messages: sel.NumMessages}
	entry, err := p.e.maps.Get(p.ctx, p.user, f.Old)
	if err != nil {
		return err
	}
	f.entry = entry
	entry.Lock()
	if entry.M == nil {
		entry.M = store.NewMap(sel.UIDValidity, store.UID(sel.UIDNext))
		if err := p.e.maps.Save(p.saveCtx(), entry, nil); err != nil {
			entry.M = nil
			entry.Unlock()
			return fmt.Errorf("create the UID map: %w", err)
		}
	}
	uidValidity := entry.M.UIDValidity
	entry.Unlock()
	olds, err := fetchMeta(p.oldC)
	if err != nil {
		return fmt.Errorf("read old: %w", err)
	}
	if uidValidity != sel.UIDValidity {
		// Old renumbered the folder, or the map belongs to another folder
		// of that name: its UIDs cannot be trusted. Count, do not copy.
		p.addError(KindUIDValidity, f.Old, 0, fmt.Sprintf("UIDVALIDITY on old is %d, the folder's UID map says %d: not copied", sel.UIDValidity, uidValidity))
		f.noCopy = true
		for _, m := range olds {
			f.msgs = append(f.msgs, &oldMsg{msgMeta: m})
		}
		return nil
	}
	var news []msgMeta
	var newUV uint32
	if !f.noCopy {
		nsel, err := p.newC.Select(f.New, &imap.SelectOptions{ReadOnly: true}).Wait()
		switch {
		case err == nil:
			newUV = nsel.UIDValidity
			if news, err = fetchMeta(p.newC); err != nil {
				return fmt.Errorf("read new: %w", err)
			}
		case isNonExistent(err):
			p.addError(KindFolder, f.Old, 0, fmt.Sprintf("%q does not exist on the new provider", f.New))
			f.noCopy = true
		default:
			return fmt.Errorf("examine %q on new: %w", f.New, err)
		}
	}
	entry.Lock()
	defer entry.Unlock()
	m := entry.M
	if !f.noCopy && m.NewUIDValidity != 0 && m.NewUIDValidity != newUV {
		p.addError(KindUIDValidity, f.Old, 0, fmt.Sprintf("UIDVALIDITY of %q on new is %d, the folder's UID map says %d: not copied", f.New, newUV, m.NewUIDValidity))
		f.noCopy = true
	}
	changed := false
	if !f.noCopy && m.NewUIDValidity == 0 && newUV != 0 {
		m.NewUIDValidity = newUV // a plain field: no index depends on it
		changed = true
	}
	for _, o := range olds {
		v, ok := m.ByOld(o.UID)
		if !ok {
			if o.UID < m.Frozen {
				continue // expunged by the user during migrating
			}
			before := m.Next
			if v = m.AddOld(o.UID); v == 0 {
				continue // the virtual UID space is exhausted
			}
			changed = changed || m.Next != before
		}
		if m.IsGone(v) {
			continue
		}
		_, n, _ := m.Lookup(v)
		f.msgs = append(f.msgs, &oldMsg{msgMeta: o, v: v, copied: n != 0})
	}
	for _, n := range news {
		w, ok := m.ByNew(n.UID)
		if !ok {
			f.copies = append(f.copies, &newMsg{msgMeta: n})
			continue
		}
		if o, _, _ := m.Lookup(w); o == 0 {
			f.copies = append(f.copies, &newMsg{msgMeta: n, twin: w})
		}
	}
	if changed {
		if err := p.e.maps.Save(p.saveCtx(), entry, nil); err != nil {
			return fmt.Errorf("record the UID map: %w", err)
		}
	}
	return nil
}

// checkQuota refuses to start copying what does not fit in new.
func (p *pass) checkQuota() error {
	var need int64
	for _, f := range p.folders {
		if f.noCopy {
			continue
		}
		ix := newAdoptIndex(f.copies)
		for _, o := range f.msgs {
			if o.copied || (p.maxSize > 0 && o.Size > p.maxSize) {
				continue
			}
			if c := ix.candidates(&o.msgMeta); len(c) > 0 {
				c[0].used = true // probably there already
				continue
			}
			need += o.Size
		}
		for _, c := range f.copies {
			c.used = false
		}
	}
	if need == 0 {
		return nil
	}
	free, how, err := p.freeSpace()
	if err != nil {
		return err
	}
	if how == "" || need <= free {
		return nil
	}
	p.prog.State = StateQuota
	msg := fmt.Sprintf("the new provider has %d bytes free (%s) and the messages left to copy need %d: nothing more is copied until there is room", max(free, 0), how, need)
	p.addError(KindQuota, "", 0, msg)
	return fmt.Errorf("%w: %s", ErrQuota, msg)
}

// freeSpace says how many bytes new has free for the user, and how it
// knows ("" when it does not).
func (p *pass) freeSpace() (free int64, how string, err error) {
	if p.newC.Caps().Has(imap.CapQuota) {
		roots, err := p.newC.GetQuotaRoot("INBOX").Wait()
		if err != nil && closed(p.newC) {
			return 0, "", fmt.Errorf("GETQUOTAROOT on new: %w", err)
		}
		found := false
		for _, r := range roots {
			if res, ok := r.Resources[imap.QuotaResourceStorage]; ok {
				f := (res.Limit - res.Usage) * 1024 // RFC 9208 section 5.1: units of 1024 octets
				if !found || f < free {
					free, found = f, true
				}
			}
		}
		if found {
			return free, "GETQUOTAROOT", nil
		}
		if err != nil {
			p.log.Warn("GETQUOTAROOT failed on new", "err", err)
		}
	}
	quota := p.newP.Config().QuotaBytes
	if quota <= 0 {
		return 0, "", nil
	}
	used, err := p.newUsage()
	if err != nil {
		return 0, "", err
	}
	return quota - used, fmt.Sprintf("quota_bytes %d, %d used", quota, used), nil
}

// newUsage sums the sizes of every message in every mailbox of new.
func (p *pass) newUsage() (int64, error) {
	list, err := p.newC.List("", "*", nil).Collect()
	if err != nil {
		return 0, fmt.Errorf("list folders on new: %w", err)
	}
	statusSize := p.newC.Caps().Has(imap.CapStatusSize)
	var used int64
	for _, l := range list {
		if !backend.Selectable(l) {
			continue
		}
		if statusSize {
			st, err := p.newC.Status(l.Mailbox, &imap.StatusOptions{Size: true}).Wait()
			if err == nil && st.Size != nil {
				used += *st.Size
				continue
			}
		}
		if _, err := p.newC.Select(l.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			return 0, fmt.Errorf("examine %q on new: %w", l.Mailbox, err)
		}
		msgs, err := p.newC.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
		if err != nil {
			return 0, fmt.Errorf("sizes in %q on new: %w", l.Mailbox, err)
		}
		for _, m := range msgs {
			used += m.RFC822Size
		}
	}
	return used, nil
}

// newestFirst splits msgs (ascending) into chunks from the end, doubling
// from firstChunk, each still ascending.
func newestFirst[T any](msgs []T) [][]T {
	var out [][]T
	end, n := len(msgs), firstChunk
	for end > 0 {
		start := max(end-n, 0)
		out = append(out, msgs[start:end])
		end, n = start, n*2
	}
	return out
}

// copyFolder copies every message of f that new lacks.
func (p *pass) copyFolder(f *folder) error {
	var todo []*oldMsg
	for _, o := range f.msgs {
		if !o.copied {
			todo = append(todo, o)
		}
	}
	if f.noCopy || len(todo) == 0 {
		return nil
	}
	if err := p.selectBoth(f); err != nil {
		if closed(p.oldC) || closed(p.newC) {
			if err = p.reconnect(f); err != nil {
				return err
			}
		} else {
			p.addError(KindUpstream, f.Old, 0, err.Error())
			return nil
		}
	}
	if err := p.recover(f); err != nil {
		return err
	}
	ix := newAdoptIndex(f.copies)
	unrecorded := false
	for _, chunk := range newestFirst(todo) {
		noUID, err := p.copyChunk(f, ix, chunk)
		unrecorded = unrecorded || noUID
		if err != nil {
			return err
		}
	}
	if unrecorded {
		return p.adoptUnrecorded(f, todo)
	}
	return nil
}

// recover resolves the copies in flight that a crash left in f (Copier's
// intents) before adoption looks at new's unmapped messages.
func (p *pass) recover(f *folder) error {
	var unknown []store.UID
	for _, c := range f.copies {
		if c.twin == 0 {
			unknown = append(unknown, c.UID)
		}
	}
	adopted, err := p.e.copier.Recover(p.saveCtx(), p.oldC, p.newC, f.entry, p.e.maps, unknown)
	for _, n := range adopted {
		for _, c := range f.copies {
			if c.UID == n {
				c.used = true
			}
		}
	}
	if err != nil {
		if cerr := p.ctx.Err(); cerr != nil {
			return cerr
		}
		if closed(p.oldC) || closed(p.newC) {
			return p.reconnect(f)
		}
		p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("resolve the copies a crash left in flight: %v", err))
	}
	return nil
}

// prepare settles old message o of f before a copy: counted when the map
// places it in new (a session copied it, or it is adopted now), dropped
// when expunged meanwhile, reported when too big. It reports whether o is
// to be copied, after the rate limits let it through, and returns only
// errors that end the pass.
func (p *pass) prepare(f *folder, ix *adoptIndex, o *oldMsg) (bool, error) {
	f.entry.Lock()
	_, n, ok := f.entry.M.Lookup(o.v)
	f.entry.Unlock()
	switch {
	case !ok: // expunged by the user meanwhile: no longer due
		p.notDue(o)
		return false, nil
	case n != 0: // copied by a session meanwhile
		p.done(o)
		return false, nil
	}
	res, err := p.adopt(f, ix, o)
	if err != nil {
		return false, p.messageFailed(f, o, err)
	}
	switch res {
	case adoptMapped, adoptTwin:
		p.done(o)
		return false, nil
	case adoptSettled:
		return p.prepare(f, ix, o) // counts it as the map now says
	}
	if p.maxSize > 0 && o.Size > p.maxSize {
		p.addError(KindOversize, f.Old, o.v, fmt.Sprintf("message of %d bytes is over the new provider's limit of %d bytes: not copied", o.Size, p.maxSize))
		return false, nil
	}
	if err := p.e.throttle(p.ctx, []string{p.route.Old, p.route.New}, o.Size); err != nil {
		return false, err
	}
	return true, nil
}

// copySingle copies o, prepared, on its own with CopyToNew (what a window
// could not copy). It returns only errors that end the pass, and
// errNoUIDPlus.
func (p *pass) copySingle(f *folder, o *oldMsg) error {
	// The store write must follow an APPEND that completed, even when the
	// pass is being cancelled: hence a context without cancel (the
	// connections are closed on cancel instead).
	_, err := p.e.copier.CopyToNew(p.saveCtx(), p.oldC, p.newC, f.entry, p.e.maps, f.New, o.v, o.UID)
	if err != nil {
		if errors.Is(err, errNoUIDPlus) {
			return err
		}
		return p.messageFailed(f, o, err)
	}
	p.done(o)
	return nil
}

// notDue takes o, expunged by the user meanwhile, out of the counts.
func (p *pass) notDue(o *oldMsg) {
	p.prog.MessagesTotal--
	p.prog.BytesTotal -= o.Size
	if o.fp != nil {
		o.fp.MessagesTotal--
	}
}

func (p *pass) done(o *oldMsg) {
	o.copied = true
	p.prog.MessagesDone++
	p.prog.BytesDone += o.Size
	if o.fp != nil {
		o.fp.MessagesDone++
	}
	p.sinceSave++
	p.save(false)
}

// messageFailed records why o was not copied and says whether the pass
// can go on: not after the context ended, on a quota refusal, or when a
// broken connection cannot be replaced.
func (p *pass) messageFailed(f *folder, o *oldMsg, err error) error {
	if cerr := p.ctx.Err(); cerr != nil {
		return cerr
	}
	var ie *imap.Error
	isIMAP := errors.As(err, &ie)
	switch {
	case isIMAP && (ie.Code == imap.ResponseCodeOverQuota || strings.Contains(strings.ToLower(ie.Text), "quota")):
		p.prog.State = StateQuota
		msg := fmt.Sprintf("the new provider refused a message of %d bytes for lack of room (%s): nothing more is copied until there is room", o.Size, ie.Text)
		p.addError(KindQuota, f.Old, o.v, msg)
		return fmt.Errorf("%w: %s", ErrQuota, msg)
	case isIMAP && ie.Code == imap.ResponseCodeTooBig:
		p.addError(KindOversize, f.Old, o.v, fmt.Sprintf("the new provider refused a message of %d bytes as too big: %s", o.Size, ie.Text))
	case errors.Is(err, store.ErrUIDGone):
		p.addError(KindUpstream, f.Old, o.v, fmt.Sprintf("expunged by the user while it was being copied; the copy in new is left unmapped: %v", err))
	default:
		p.addError(KindUpstream, f.Old, o.v, err.Error())
	}
	if closed(p.oldC) || closed(p.newC) {
		return p.reconnect(f)
	}
	return nil
}

// adoptUnrecorded maps the copies made into a new provider without
// UIDPLUS: new's messages are read again and each copy is confirmed by
// hash (DESIGN.md: "without UIDPLUS it finds the copy by SEARCH and
// confirms it by hash").
func (p *pass) adoptUnrecorded(f *folder, todo []*oldMsg) error {
	news, err := fetchMeta(p.newC)
	if err != nil {
		return fmt.Errorf("read new: %w", err)
	}
	f.entry.Lock()
	var copies []*newMsg
	for _, n := range news {
		if _, ok := f.entry.M.ByNew(n.UID); !ok {
			copies = append(copies, &newMsg{msgMeta: n})
		}
	}
	f.entry.Unlock()
	ix := newAdoptIndex(copies)
	for _, o := range todo {
		if o.copied {
			continue
		}
		res, err := p.adopt(f, ix, o)
		if err != nil {
			if err := p.messageFailed(f, o, err); err != nil {
				return err
			}
			continue
		}
		if res == adoptMapped {
			p.done(o)
		}
	}
	return nil
}

// clock is the engine's time, injectable for tests.
type clock interface {
	Now() time.Time
	// Sleep waits d or until ctx ends.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bucket is a token bucket that may go into debt: a message larger than
// the burst is let through after the wait its size costs.
type bucket struct {
	rate, burst float64 // per second; rate 0: unlimited
	tokens      float64
	last        time.Time
}

// take removes n tokens at now and returns how long to wait before using
// them.
func (b *bucket) take(now time.Time, n float64) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	if b.last.IsZero() {
		b.tokens = b.burst
	} else if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// limiter holds one provider's copy rate limits.
type limiter struct {
	mu          gosync.Mutex
	msgs, bytes bucket
}

func (e *Engine) limiterOf(provider string) *limiter {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.limits[provider]
	if l == nil {
		l = &limiter{}
		if p := e.backends.Provider(provider); p != nil {
			pc := p.Config()
			l.msgs = bucket{rate: pc.CopyMessagesPerSecond, burst: max(pc.CopyMessagesPerSecond, 1)}
			l.bytes = bucket{rate: float64(pc.CopyBytesPerSecond), burst: float64(pc.CopyBytesPerSecond)}
		}
		e.limits[provider] = l
	}
	return l
}

// throttle waits until one message of size bytes may be read from or
// written to each of providers.
func (e *Engine) throttle(ctx context.Context, providers []string, size int64) error {
	now := e.clock.Now()
	var wait time.Duration
	for _, name := range providers {
		l := e.limiterOf(name)
		l.mu.Lock()
		wait = max(wait, l.msgs.take(now, 1), l.bytes.take(now, float64(size)))
		l.mu.Unlock()
	}
	if wait <= 0 {
		return ctx.Err()
	}
	return e.clock.Sleep(ctx, wait)
}
