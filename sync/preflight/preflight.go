// Package preflight checks, before a flip, that every member of a domain can
// be migrated (`pecgate preflight`, issue 5): it logs in to the old and to
// the new provider on each member's behalf, and on success compares the
// mailbox size with the new side's quota, lists the messages over the new
// provider's size limit and the folder names the new side refuses. Each
// problem says which provider, what it means and what to do; Report.OK is
// false when a member blocks the flip.
//
// What blocks the flip (Problem.Blocks):
//
//   - a refused or failed login on either side (wrong password, two-factor
//     login wanting an app password, IMAP disabled, vault without
//     credentials, unreachable provider): the back-fill cannot read old or
//     write new, and after a flip the member cannot log in;
//   - a mailbox that does not fit in the new side's quota;
//   - messages over the new provider's size limit: the back-fill cannot
//     copy them, so they would stay behind on old;
//   - a folder the new side refuses to create: its messages cannot be
//     copied.
//
// A member whose provider logs in with the member's own password (auth =
// "passthrough") and whose password was not given is "not checked" on that
// side: a warning, not a block (nothing was guessed, nothing was tried).
//
// Implementation notes:
//
//   - No lock-outs: each member gets at most one login attempt per
//     provider per run, and a refusal is never retried. Logins go through
//     backend.Provider.LoginUser, so master and vault providers log in
//     without the member's password, exactly as the gateway does.
//   - Bounded concurrency: at most Options.Concurrency members per provider
//     at a time (default: the provider's copy_connections). A member holds
//     one connection to old and one to new, taken in that order (old
//     first), so members cannot deadlock on each other's slots.
//   - Old is only read: STATUS (MESSAGES, SIZE with STATUS=SIZE, RFC 8438),
//     else EXAMINE and FETCH RFC822.SIZE; messages over the limit are found
//     with UID SEARCH LARGER (RFC 3501 section 6.4.4) and described with
//     FETCH ENVELOPE, never BODY: nothing gets \Seen.
//   - Size limit: the new provider's max_message_size, lowered by the
//     APPENDLIMIT it advertises (RFC 7889), as the back-fill uses it.
//   - Quota: GETQUOTAROOT INBOX on new (RFC 9208, STORAGE in units of 1024
//     octets) when it has QUOTA; else the provider's quota_bytes against the
//     sum of new's folder sizes; else unknown (reported, not a block). The
//     mailbox needs its old size minus the messages too big to copy. In
//     state old (nothing copied yet) it must fit in what new has free; in
//     migrating or new part of new's usage is the copies themselves, so only
//     a mailbox larger than the whole quota blocks, and one larger than
//     what is free is a warning.
//   - Folder names: IMAP has no "could you create this?" command, so the
//     only sure answer is the new server's own. Preflight maps each old
//     folder to its name on new exactly as the back-fill does
//     (sync/folders.go: special-use role first, then the name with the
//     hierarchy delimiter converted; folders the member deleted during the
//     migration, per the folder map, are skipped) and CREATEs on new those
//     that new lacks, with the same options as the back-fill. These are
//     folders the migration creates anyway, empty, on a provider the member
//     does not use directly before the flip: nothing the member would
//     notice, and the back-fill later finds them made. A refusal (NO) is
//     reported with the server's text. Preflight deletes nothing: a
//     create-and-delete probe would leave the implicitly created parents of
//     hierarchical names behind on some servers and, on a server that
//     refuses DELETE of a folder with children, fail in ways that say
//     nothing about the name. With Options.NoCreate, or without a store in
//     state migrating or new (the folder map, which knows folders the member
//     deleted, is then unknown, and creating one again would undo the
//     member's change), folders are not checked and the report says so.
//   - Preflight never writes the store.
package preflight

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// Options are what a preflight needs.
type Options struct {
	// Config gives the domains and providers. Required.
	Config *config.Config
	// Backends are the configured providers. Required.
	Backends *backend.Set
	// Store gives routing overrides and folder maps; it is only read. nil
	// means none: states come from the configuration and, in migrating or
	// new, folder names are not checked (see the package doc).
	Store store.Store
	// Secrets gives vault credentials; nil when no provider uses vault.
	Secrets backend.Secrets
	// Password returns a member's own password, for providers with auth =
	// "passthrough". nil, or ok false, means none is known: the member is
	// not checked on such a provider (a warning).
	Password func(user string) (password string, ok bool)
	// Concurrency caps the members checked at once per provider. Zero or
	// negative means each provider's copy_connections (2 when unset).
	Concurrency int
	// NoCreate leaves folder names unchecked instead of creating on new the
	// folders the migration would create.
	NoCreate bool
	// Log receives progress at Info and problems at Warn; nil discards.
	Log *slog.Logger
}

// Errors returned by Domain.
var (
	// ErrUnknownDomain: the domain is not served by the configuration.
	ErrUnknownDomain = errors.New("preflight: domain not served")
	// ErrNoNewProvider: the domain has no new provider: there is no flip to
	// check.
	ErrNoNewProvider = errors.New("preflight: the domain has no new provider")
	// ErrNotMember: a user given is not an address of the domain.
	ErrNotMember = errors.New("preflight: not a member of the domain")
)

// Problem kinds.
const (
	KindLogin      = "login"       // a login failed; Refusal says why
	KindNoPassword = "no-password" // passthrough provider, password not given: not checked
	KindQuota      = "quota"       // the mailbox does not fit in new's quota
	KindOversize   = "oversize"    // messages over new's size limit
	KindFolder     = "folder"      // a folder name new refuses
	KindError      = "error"       // a provider failed while checking
)

// Sides.
const (
	SideOld = "old"
	SideNew = "new"
)

// Login outcomes in Member.OldLogin and Member.NewLogin.
const (
	LoginOK         = "ok"
	LoginRefused    = "refused"     // see the member's KindLogin problem
	LoginNotChecked = "not checked" // no password, or interrupted
)

// Problem is one thing that is wrong with a member.
type Problem struct {
	Side     string `json:"side"` // SideOld or SideNew
	Provider string `json:"provider"`
	Kind     string `json:"kind"`
	// Refusal is the kind of login failure for KindLogin, "" otherwise.
	Refusal backend.LoginRefusal `json:"refusal,omitempty"`
	// Blocks is true when the problem makes the flip unsafe; false for a
	// warning.
	Blocks bool `json:"blocks"`
	// Message says what is wrong; Advice what to do.
	Message string `json:"message"`
	Advice  string `json:"advice"`
}

// Oversize is a message of old that is over new's size limit.
type Oversize struct {
	Folder  string    `json:"folder"`
	UID     uint32    `json:"uid"`
	Size    int64     `json:"size"`
	Date    time.Time `json:"date"` // INTERNALDATE
	Subject string    `json:"subject"`
}

// FolderRefusal is an old folder whose name new refuses.
type FolderRefusal struct {
	Folder    string `json:"folder"`     // name on old
	NewFolder string `json:"new_folder"` // the name tried on new
	Messages  uint32 `json:"messages"`   // messages in the old folder, which would stay behind
	Reason    string `json:"reason"`     // the new server's answer
}

// Member is one member's result.
//
// Its JSON document has the fields below and, computed, "verdict"
// (Verdict) and "blocks" (Blocks).
type Member struct {
	User  string `json:"user"`
	State string `json:"state"` // effective state of the member
	// OldLogin and NewLogin are LoginOK, LoginRefused or LoginNotChecked.
	OldLogin string `json:"old_login"`
	NewLogin string `json:"new_login"`
	// Folders, Messages and Bytes are what old holds (selectable folders).
	Folders  int   `json:"folders"`
	Messages int64 `json:"messages"`
	Bytes    int64 `json:"bytes"`
	// QuotaLimit and QuotaUsed are new's quota and usage in bytes;
	// QuotaSource says where they come from ("GETQUOTAROOT", "quota_bytes")
	// or is "" when unknown.
	QuotaLimit  int64  `json:"quota_limit"`
	QuotaUsed   int64  `json:"quota_used"`
	QuotaSource string `json:"quota_source"`
	// SizeLimit is new's message size limit in bytes, 0 when unknown.
	SizeLimit int64      `json:"size_limit"`
	Oversize  []Oversize `json:"oversize"`
	// FoldersCreated are the folders created on new (which the migration
	// would have created), FolderRefusals those new refused.
	FoldersCreated []string        `json:"folders_created"`
	FolderRefusals []FolderRefusal `json:"folders_refused"`
	// FoldersChecked is false when folder names were not checked.
	FoldersChecked bool      `json:"folders_checked"`
	Problems       []Problem `json:"problems"`
}

// MarshalJSON adds "verdict" and "blocks" to the member's fields.
func (m *Member) MarshalJSON() ([]byte, error) {
	type plain Member
	return json.Marshal(struct {
		*plain
		Verdict string `json:"verdict"`
		Blocks  bool   `json:"blocks"`
	}{(*plain)(m), m.Verdict(), m.Blocks()})
}

// Blocks reports whether the member makes the flip unsafe.
func (m *Member) Blocks() bool {
	return slices.ContainsFunc(m.Problems, func(p Problem) bool { return p.Blocks })
}

// Verdict is "blocked", "warning" or "ok".
func (m *Member) Verdict() string {
	switch {
	case m.Blocks():
		return "blocked"
	case len(m.Problems) > 0:
		return "warning"
	}
	return "ok"
}

func (m *Member) add(p Problem) { m.Problems = append(m.Problems, p) }

// Report is a whole preflight.
//
// Its JSON document (the answer of the admin API's POST
// /api/v1/domains/{domain}/preflight) has the fields
// below and, computed, "ok" (OK).
type Report struct {
	Domain   string    `json:"domain"`
	State    string    `json:"state"` // the domain's effective state
	Old      string    `json:"old"`   // provider names
	New      string    `json:"new"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Members  []*Member `json:"members"` // sorted by address
	// Concurrency is the members checked at once, per provider.
	Concurrency map[string]int `json:"concurrency"`
	// FoldersNotChecked says why folder names were not checked, "" when
	// they were.
	FoldersNotChecked string `json:"folders_not_checked,omitempty"`
}

// MarshalJSON adds "ok" to the report's fields.
func (r *Report) MarshalJSON() ([]byte, error) {
	type plain Report
	return json.Marshal(struct {
		*plain
		OK bool `json:"ok"`
	}{(*plain)(r), r.OK()})
}

// OK reports whether no member blocks the flip.
func (r *Report) OK() bool {
	return !slices.ContainsFunc(r.Members, (*Member).Blocks)
}

// Blocking returns the members that block the flip.
func (r *Report) Blocking() []*Member {
	var out []*Member
	for _, m := range r.Members {
		if m.Blocks() {
			out = append(out, m)
		}
	}
	return out
}

func (o Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// Domain checks every member in users of domain. Problems with members are
// in the report; the error is for a domain that is not served or has no
// new provider, a user of another domain, a store failure or ctx ending.
func Domain(ctx context.Context, o Options, domain string, users []string) (*Report, error) {
	d := o.Config.Domains[strings.ToLower(domain)]
	switch {
	case d == nil:
		return nil, fmt.Errorf("%w: %s", ErrUnknownDomain, domain)
	case d.New == "":
		return nil, fmt.Errorf("%w: %s", ErrNoNewProvider, domain)
	}
	oldP, newP := o.Backends.Provider(d.Old), o.Backends.Provider(d.New)
	if oldP == nil || newP == nil {
		return nil, fmt.Errorf("preflight: providers %s and %s of %s must both be configured", d.Old, d.New, d.Name)
	}
	var router *store.Router
	if o.Store != nil {
		var err error
		if router, err = store.NewRouter(ctx, o.Config, o.Store); err != nil {
			return nil, err
		}
	}
	r := &Report{Domain: d.Name, State: d.State, Old: d.Old, New: d.New, Started: time.Now().UTC(), Concurrency: map[string]int{}}
	seen := map[string]bool{}
	for _, u := range users {
		u = store.CanonicalUser(strings.TrimSpace(u))
		if dd := o.Config.LookupDomain(u); dd == nil || dd.Name != d.Name {
			return nil, fmt.Errorf("%w: %s is not an address of %s", ErrNotMember, u, d.Name)
		}
		if seen[u] {
			continue
		}
		seen[u] = true
		m := &Member{User: u, State: d.State, OldLogin: LoginNotChecked, NewLogin: LoginNotChecked}
		if router != nil {
			m.State = router.Route(u).State
		}
		r.Members = append(r.Members, m)
	}
	if router != nil {
		if ds, err := router.Domain(d.Name); err == nil {
			r.State = ds.State
		}
	}
	slices.SortFunc(r.Members, func(a, b *Member) int { return strings.Compare(a.User, b.User) })

	sems := map[string]chan struct{}{}
	for _, p := range []*backend.Provider{oldP, newP} {
		n := o.Concurrency
		if n <= 0 {
			n = p.Config().CopyConnections
		}
		if n <= 0 {
			n = 2
		}
		sems[p.Name] = make(chan struct{}, n)
		r.Concurrency[p.Name] = n
	}
	c := &checker{o: o, log: o.log().With("domain", d.Name), oldP: oldP, newP: newP, router: router}
	var wg sync.WaitGroup
	for _, m := range r.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !acquire(ctx, sems[oldP.Name]) {
				return
			}
			defer func() { <-sems[oldP.Name] }()
			if !acquire(ctx, sems[newP.Name]) {
				return
			}
			defer func() { <-sems[newP.Name] }()
			c.member(ctx, m)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, m := range r.Members {
		if !m.FoldersChecked && m.OldLogin == LoginOK && m.NewLogin == LoginOK && r.FoldersNotChecked == "" {
			r.FoldersNotChecked = c.noCreateReason(m.State)
		}
	}
	r.Finished = time.Now().UTC()
	return r, nil
}

func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

type checker struct {
	o          Options
	log        *slog.Logger
	oldP, newP *backend.Provider
	router     *store.Router
}

// noCreateReason says why folders are not created for a member in state,
// "" when they are.
func (c *checker) noCreateReason(state string) string {
	switch {
	case c.o.NoCreate:
		return "folder names not checked (-no-create)"
	case c.o.Store == nil && state != config.StateOld:
		return "folder names not checked: the domain is " + state + " and the store (which knows the folders members deleted) could not be read"
	}
	return ""
}

// login logs in to p on behalf of m.User, once. A nil connection means the
// member's problem is recorded.
func (c *checker) login(ctx context.Context, m *Member, side string, p *backend.Provider) *backend.IMAPConn {
	var pw string
	if auth := p.Config().Auth; auth == config.AuthPassthrough || auth == "" {
		var ok bool
		if c.o.Password != nil {
			pw, ok = c.o.Password(m.User)
		}
		if !ok || pw == "" {
			m.add(Problem{Side: side, Provider: p.Name, Kind: KindNoPassword,
				Message: fmt.Sprintf("not checked on %s: %s logs in with the member's own password (auth = \"passthrough\") and none was given", side, p.Name),
				Advice:  "give the member's password in the password column of the -users file, or check this member by hand"})
			return nil
		}
	}
	conn, err := p.LoginUser(ctx, m.User, pw, c.o.Secrets, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		lp := p.DiagnoseLogin(err)
		c.log.Warn("login failed", "user", m.User, "side", side, "provider", p.Name, "refusal", lp.Refusal, "answer", lp.Text)
		where := p.Name
		if where != side {
			where += " (" + side + ")"
		}
		m.add(Problem{Side: side, Provider: p.Name, Kind: KindLogin, Refusal: lp.Refusal, Blocks: true,
			Message: fmt.Sprintf("login to %s failed: %s; the provider answered: %s", where, refusalPhrase[lp.Refusal], lp.Text), Advice: lp.Advice})
		if side == SideOld {
			m.OldLogin = LoginRefused
		} else {
			m.NewLogin = LoginRefused
		}
		return nil
	}
	if side == SideOld {
		m.OldLogin = LoginOK
	} else {
		m.NewLogin = LoginOK
	}
	return conn
}

// refusalPhrase says a login refusal in words.
var refusalPhrase = map[backend.LoginRefusal]string{
	backend.RefusalCredentials:  "the credentials were refused",
	backend.RefusalSecondFactor: "two-factor login is on: the provider wants an app password",
	backend.RefusalDisabled:     "IMAP is not enabled for the account",
	backend.RefusalExpired:      "the password expired",
	backend.RefusalContactAdmin: "the account is blocked (the provider says to contact its administrator)",
	backend.RefusalPrivacy:      "the provider wants TLS",
	backend.RefusalUnavailable:  "the provider could not be reached or was busy",
	backend.RefusalNoCredential: "the vault holds no credentials for the member",
	backend.RefusalOther:        "the login failed",
}

// member checks one member: one login per provider, then sizes, quota,
// oversize messages and folders.
func (c *checker) member(ctx context.Context, m *Member) {
	log := c.log.With("user", m.User)
	log.Info("checking member", "state", m.State)
	oldC := c.login(ctx, m, SideOld, c.oldP)
	if oldC != nil {
		defer oldC.Logout()
	}
	newC := c.login(ctx, m, SideNew, c.newP)
	if newC != nil {
		defer newC.Logout()
	}
	// imapclient has no context: end both conversations when ctx ends.
	stop := context.AfterFunc(ctx, func() {
		if oldC != nil {
			oldC.Client.Close()
		}
		if newC != nil {
			newC.Client.Close()
		}
	})
	defer stop()

	m.SizeLimit = c.newP.SizeLimit(newC)
	var oldList []*imap.ListData
	if oldC != nil {
		var err error
		if oldList, err = listAll(oldC); err != nil {
			m.add(c.failure(SideOld, c.oldP, "list folders", err))
			oldC = nil
		}
	}
	if oldC != nil {
		c.measureOld(m, oldC, oldList)
	}
	if newC != nil {
		c.checkQuota(m, newC)
	}
	if oldC != nil && newC != nil {
		c.checkFolders(ctx, m, oldC, newC, oldList)
	}
	log.Info("member checked", "verdict", m.Verdict(), "problems", len(m.Problems))
}

func (c *checker) failure(side string, p *backend.Provider, what string, err error) Problem {
	return Problem{Side: side, Provider: p.Name, Kind: KindError, Blocks: true,
		Message: fmt.Sprintf("%s on %s (%s): %v", what, p.Name, side, err),
		Advice:  "check the provider's status and run preflight again"}
}

// listAll lists every mailbox with its special-use role where the server
// says it (as sync/folders.go listAll).
func listAll(c *backend.IMAPConn) ([]*imap.ListData, error) {
	caps := c.Caps()
	var opts *imap.ListOptions
	// RETURN needs LIST-EXTENDED (RFC 5258); a SPECIAL-USE server sends the
	// roles in a plain LIST too (RFC 6154 section 2).
	if (caps.Has(imap.CapListExtended) || caps.Has(imap.CapIMAP4rev2)) && (caps.Has(imap.CapSpecialUse) || caps.Has(imap.CapIMAP4rev2)) {
		opts = &imap.ListOptions{ReturnSpecialUse: true}
	}
	return c.List("", "*", opts).Collect()
}

// folderSize returns a folder's message count and size in bytes: STATUS
// with SIZE when offered, else EXAMINE and FETCH RFC822.SIZE.
func folderSize(c *backend.IMAPConn, mailbox string) (msgs uint32, size int64, err error) {
	if c.Caps().Has(imap.CapStatusSize) {
		st, err := c.Status(mailbox, &imap.StatusOptions{NumMessages: true, Size: true}).Wait()
		if err == nil && st.NumMessages != nil && st.Size != nil {
			return *st.NumMessages, *st.Size, nil
		}
		if err != nil {
			return 0, 0, fmt.Errorf("status %q: %w", mailbox, err)
		}
	}
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return 0, 0, fmt.Errorf("examine %q: %w", mailbox, err)
	}
	if sel.NumMessages == 0 {
		return 0, 0, nil
	}
	fetched, err := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, RFC822Size: true}).Collect()
	if err != nil {
		return 0, 0, fmt.Errorf("fetch %q: %w", mailbox, err)
	}
	for _, f := range fetched {
		size += f.RFC822Size
	}
	return uint32(len(fetched)), size, nil
}

// measureOld counts old's messages and bytes and finds the messages over
// the size limit.
func (c *checker) measureOld(m *Member, oldC *backend.IMAPConn, list []*imap.ListData) {
	for _, l := range list {
		if !backend.Selectable(l) {
			continue
		}
		n, size, err := folderSize(oldC, l.Mailbox)
		if err != nil {
			m.add(c.failure(SideOld, c.oldP, "measure a folder", err))
			continue
		}
		m.Folders++
		m.Messages += int64(n)
		m.Bytes += size
		if m.SizeLimit <= 0 || n == 0 || size <= m.SizeLimit {
			continue
		}
		big, err := oversize(oldC, l.Mailbox, m.SizeLimit)
		if err != nil {
			m.add(c.failure(SideOld, c.oldP, "look for large messages", err))
			continue
		}
		m.Oversize = append(m.Oversize, big...)
	}
	if len(m.Oversize) > 0 {
		var total int64
		for _, o := range m.Oversize {
			total += o.Size
		}
		m.add(Problem{Side: SideNew, Provider: c.newP.Name, Kind: KindOversize, Blocks: true,
			Message: fmt.Sprintf("%d messages (%d bytes) on %s are over %s's size limit of %d bytes: the migration cannot copy them", len(m.Oversize), total, c.oldP.Name, c.newP.Name, m.SizeLimit),
			Advice:  fmt.Sprintf("ask %s for a higher limit (then set providers.%s.max_message_size), or have the member save these messages (they are listed in the report) and keep the old mailbox readable after the flip", c.newP.Name, c.newP.Name)})
	}
}

// oversize finds the messages of mailbox larger than limit with UID SEARCH
// LARGER and describes them with FETCH (no body: nothing gets \Seen).
func oversize(c *backend.IMAPConn, mailbox string, limit int64) ([]Oversize, error) {
	if _, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return nil, fmt.Errorf("examine %q: %w", mailbox, err)
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{Larger: limit}, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("search %q: %w", mailbox, err)
	}
	uids := res.AllUIDs()
	if len(uids) == 0 {
		return nil, nil
	}
	fetched, err := c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{UID: true, RFC822Size: true, InternalDate: true, Envelope: true}).Collect()
	if err != nil {
		return nil, fmt.Errorf("fetch %q: %w", mailbox, err)
	}
	var out []Oversize
	for _, f := range fetched {
		if f.RFC822Size <= limit { // LARGER counts in the server's own way; the size decides
			continue
		}
		o := Oversize{Folder: mailbox, UID: uint32(f.UID), Size: f.RFC822Size, Date: f.InternalDate}
		if f.Envelope != nil {
			o.Subject = f.Envelope.Subject
		}
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b Oversize) int { return int(int64(a.UID) - int64(b.UID)) })
	return out, nil
}

// checkQuota compares what old holds (less what is too big to copy) with
// new's quota.
func (c *checker) checkQuota(m *Member, newC *backend.IMAPConn) {
	if newC.Caps().Has(imap.CapQuota) {
		roots, err := newC.GetQuotaRoot("INBOX").Wait()
		found := false
		for _, r := range roots {
			if res, ok := r.Resources[imap.QuotaResourceStorage]; ok {
				limit, used := res.Limit*1024, res.Usage*1024 // RFC 9208 section 5.1: units of 1024 octets
				if !found || limit-used < m.QuotaLimit-m.QuotaUsed {
					m.QuotaLimit, m.QuotaUsed, found = limit, used, true
				}
			}
		}
		if found {
			m.QuotaSource = "GETQUOTAROOT"
		} else if err != nil {
			c.log.Warn("GETQUOTAROOT failed on new", "user", m.User, "err", err)
		}
	}
	if m.QuotaSource == "" && c.newP.Config().QuotaBytes > 0 {
		list, err := listAll(newC)
		if err != nil {
			m.add(c.failure(SideNew, c.newP, "list folders", err))
			return
		}
		var used int64
		for _, l := range list {
			if !backend.Selectable(l) {
				continue
			}
			_, size, err := folderSize(newC, l.Mailbox)
			if err != nil {
				m.add(c.failure(SideNew, c.newP, "measure a folder", err))
				return
			}
			used += size
		}
		m.QuotaLimit, m.QuotaUsed, m.QuotaSource = c.newP.Config().QuotaBytes, used, "quota_bytes"
	}
	if m.QuotaSource == "" || m.OldLogin != LoginOK {
		return
	}
	need := m.Bytes
	for _, o := range m.Oversize {
		need -= o.Size
	}
	free := m.QuotaLimit - m.QuotaUsed
	switch {
	case need > m.QuotaLimit || (need > free && m.State == config.StateOld):
		m.add(Problem{Side: SideNew, Provider: c.newP.Name, Kind: KindQuota, Blocks: true,
			Message: fmt.Sprintf("the mailbox needs %d bytes and %s has %d free of a quota of %d bytes (%s)", need, c.newP.Name, max(free, 0), m.QuotaLimit, m.QuotaSource),
			Advice:  fmt.Sprintf("raise the member's quota at %s (or buy more space) before the flip; the back-fill stops when new is full", c.newP.Name)})
	case need > free:
		m.add(Problem{Side: SideNew, Provider: c.newP.Name, Kind: KindQuota,
			Message: fmt.Sprintf("the mailbox needs %d bytes and %s has %d free of %d bytes (%s); part of what new holds may already be copies", need, c.newP.Name, max(free, 0), m.QuotaLimit, m.QuotaSource),
			Advice:  "watch pecgate status for a quota stop; raise the quota if the back-fill stops"})
	}
}

// checkFolders maps old's folders to new as the back-fill does and
// creates on new those it lacks (see the package doc).
func (c *checker) checkFolders(ctx context.Context, m *Member, oldC, newC *backend.IMAPConn, oldList []*imap.ListData) {
	if c.noCreateReason(m.State) != "" {
		return
	}
	fm := &store.FolderMap{}
	if c.o.Store != nil {
		err := c.o.Store.View(ctx, func(tx store.Tx) error {
			got, err := store.GetFolderMap(tx, m.User)
			if err == nil {
				fm = got
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		})
		if err != nil {
			m.add(Problem{Side: SideNew, Provider: c.newP.Name, Kind: KindError, Blocks: true,
				Message: fmt.Sprintf("read the folder map: %v", err), Advice: "check the store and run preflight again"})
			return
		}
	}
	newList, err := listAll(newC)
	if err != nil {
		m.add(c.failure(SideNew, c.newP, "list folders", err))
		return
	}
	oldDelim, newDelim := oldC.Delim(), newC.Delim()
	records := map[string]store.Folder{}
	roleNew := map[string]string{}
	for _, f := range fm.Folders {
		records[f.Old] = f
		if f.SpecialUse != "" && f.New != "" {
			roleNew[f.Old] = f.New
		}
	}
	deleted := func(name string) bool {
		r, ok := records[name]
		return ok && r.New == "" && !r.Created
	}
	oldRoles, newRoles := backend.Roles(oldList), backend.Roles(newList)
	for _, a := range backend.SpecialUse {
		o, n := oldRoles[a], newRoles[a]
		if o == "" || n == "" || deleted(o) {
			continue
		}
		if _, ok := roleNew[o]; !ok {
			roleNew[o] = n
		}
	}
	exists := map[string]bool{}
	for _, l := range newList {
		if backend.Selectable(l) {
			exists[store.CanonicalMailbox(l.Mailbox)] = true
		}
	}
	caps := newC.Caps()
	for _, l := range oldList {
		if !backend.Selectable(l) || deleted(l.Mailbox) {
			continue
		}
		var role imap.MailboxAttr
		for _, a := range backend.SpecialUse {
			if backend.HasAttr(l, a) {
				role = a
				break
			}
		}
		name, ok := roleNew[l.Mailbox]
		if !ok {
			name = backend.ConvertName(l.Mailbox, oldDelim, newDelim)
		}
		if exists[store.CanonicalMailbox(name)] {
			continue
		}
		var opts *imap.CreateOptions
		if role != "" && newRoles[role] == "" && caps.Has(imap.CapCreateSpecialUse) {
			opts = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{role}}
		}
		err := newC.Create(name, opts).Wait()
		if err != nil && opts != nil && !backend.IsAlreadyExists(err) {
			err = newC.Create(name, nil).Wait()
		}
		var ie *imap.Error
		switch {
		case err == nil:
			m.FoldersCreated = append(m.FoldersCreated, name)
			exists[store.CanonicalMailbox(name)] = true
		case backend.IsAlreadyExists(err):
		case errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo:
			fr := FolderRefusal{Folder: l.Mailbox, NewFolder: name, Reason: ie.Text}
			if ie.Code != "" {
				fr.Reason = "[" + string(ie.Code) + "] " + ie.Text
			}
			if st, err := oldC.Status(l.Mailbox, &imap.StatusOptions{NumMessages: true}).Wait(); err == nil && st.NumMessages != nil {
				fr.Messages = *st.NumMessages
			}
			m.FolderRefusals = append(m.FolderRefusals, fr)
			m.add(Problem{Side: SideNew, Provider: c.newP.Name, Kind: KindFolder, Blocks: true,
				Message: fmt.Sprintf("%s refuses the folder %q (from %q on %s, %d messages): %s", c.newP.Name, name, l.Mailbox, c.oldP.Name, fr.Messages, fr.Reason),
				Advice:  fmt.Sprintf("have the member rename the folder %q on %s to a name without the refused character (its messages stay), then run preflight again", l.Mailbox, c.oldP.Name)})
		default:
			m.add(c.failure(SideNew, c.newP, fmt.Sprintf("create the folder %q", name), err))
			return
		}
	}
	m.FoldersChecked = true
}
