// Package verify is the audit that proves a migration complete (`pecgate
// verify`, DESIGN.md invariant 2 "Nothing lost"): it re-reads every folder
// of a member on the old and on the new provider, pairs each old message
// with its copy in new through the member's UID map, and reports per folder
// (UIDVALIDITY, messages and bytes on each side) and per message (old UID,
// new UID, virtual UID, INTERNALDATE, flags, size, SHA-256 on each side,
// PEC kind) what it found.
//
// Each message gets one status:
//
//   - ok: an old message whose mapped copy in new has the same bytes
//     (SHA-256) and the same INTERNALDATE.
//   - missing: an old message, not expunged by the user, with no copy in new:
//     the map has no new UID for it, or names one that new does not hold.
//     When new holds a copy with the same bytes that the map does not know
//     (a crashed copy, another tool's), the row names it: the back-fill's
//     adoption maps it, and verify then says ok.
//   - duplicate: a copy in new too many: new holds the bytes of an old
//     message more often in the folder than old does (the extra copies are
//     the ones no old message maps to), or a new UID is the copy of two old
//     messages.
//   - mismatch: the mapped copy differs from the old message in its bytes
//     or its INTERNALDATE.
//   - new-only: a message in new that comes from no old message of the
//     folder (delivered after the switch, appended by the user). Not an
//     error.
//   - expunged: an old message the user expunged during the migration (Gone
//     in the map), or every message of an old folder the user deleted or
//     renamed away: not expected in new. Not an error.
//
// Report.OK is true when nothing is missing, duplicated or mismatched and
// every user and folder could be read.
//
// Flags are not part of the verdict: the user may change flags during the
// migration, and those changes are made in new (invariant 4), so old's flags
// are no longer the truth. A flag difference between a message and its copy
// is reported as information (FlagDiffs, and a note on the message), never
// as a mismatch. Keywords count as flags; \Recent is ignored (it is
// session state, RFC 3501 section 2.3.2). Flag names compare
// case-insensitively.
//
// Implementation notes:
//
//   - Old is read with EXAMINE and BODY.PEEK only: it is the untouched
//     source (invariant 4). New is read the same way, so verify changes
//     neither side (no \Seen, no \Recent taken).
//   - Bytes are streamed from the FETCH literal into SHA-256 (invariant 5:
//     the RFC 5322 bytes), never held whole: memory grows with the number
//     of messages, not with their size. Messages are matched by the map and
//     by SHA-256, never by Message-ID: PEC receipts share
//     X-Riferimento-Message-ID with their envelope.
//   - INTERNALDATE compares instants (RFC 3501 date-time has seconds and a
//     zone; servers may report another zone for the same instant).
//   - The old folder's name is what the client sees and what the UID map is
//     keyed by; its name in new comes from the user's folder map, then the
//     special-use roles of both providers, then the name with the hierarchy
//     delimiter converted: as the gateway maps them (DESIGN.md, Folders).
//   - A folder renamed during the migration shows as its old name deleted by
//     the user (expunged) and, under its new name, a folder of new whose
//     messages are new-only with a note naming the old UID they were copied
//     from: they are not compared again.
//   - Folders and users are read one after the other; for each folder the
//     old and the new side are read at the same time on two connections.
package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// Options are what a verification needs.
type Options struct {
	// Config gives the domains and providers. Required.
	Config *config.Config
	// Store holds the routing overrides, UID maps and folder maps; it is
	// only read. Required.
	Store store.Store
	// Backends are the configured providers. Required.
	Backends *backend.Set
	// Secrets gives vault credentials; nil when no provider uses vault.
	Secrets backend.Secrets
	// Log receives progress at Info and problems at Warn; nil discards.
	Log *slog.Logger
	// Password returns a member's own password, for providers with auth =
	// "passthrough". nil, or ok false, means none is known: that member
	// cannot be verified on such a provider (ErrNoPassword).
	Password func(user string) (password string, ok bool)
}

// Errors. ErrUnknownDomain and ErrNoNewProvider are returned by User and
// Domain; ErrNoPassword ends in a UserReport (Reason "no-password").
var (
	// ErrNoPassword: a provider of the member logs in with the member's own
	// password (auth = "passthrough") and Options.Password has none.
	ErrNoPassword = errors.New("verify: the provider logs in with the member's own password, and none was given")
	// ErrNoNewProvider: the member's domain has no new provider: there is
	// no migration to verify.
	ErrNoNewProvider = errors.New("verify: the domain has no new provider")
	// ErrUnknownDomain: the member's domain (or the domain given) is not
	// served by the configuration.
	ErrUnknownDomain = errors.New("verify: domain not served")
)

// pecHeaders are the header fields the PEC kind is read from (DM
// 2/11/2005, allegato tecnico: X-Trasporto on envelopes, X-Ricevuta on
// receipts, X-TipoRicevuta for the kind of delivery receipt asked for,
// spelled X-Tiporicevuta by Aruba; header names are case-insensitive).
var pecHeaders = []string{"X-Trasporto", "X-Ricevuta", "X-Tiporicevuta"}

// maxHeaderBytes bounds the PEC header fields kept per message.
const maxHeaderBytes = 16 << 10

// User verifies one member: every folder on its old provider against its
// copy on the new one. Problems reaching the providers are in the report
// (UserReport.Error, FolderReport.Problems) and make it not OK; the error
// is for a user whose domain is not served or has no new provider, a store
// failure, or ctx ending.
func User(ctx context.Context, o Options, user string) (*Report, error) {
	r := &Report{Started: time.Now().UTC()}
	router, err := store.NewRouter(ctx, o.Config, o.Store)
	if err != nil {
		return nil, err
	}
	rt := router.Route(user)
	switch {
	case rt == nil:
		return nil, fmt.Errorf("%w: %s", ErrUnknownDomain, user)
	case rt.New == "":
		return nil, fmt.Errorf("%w: %s (domain %s)", ErrNoNewProvider, user, rt.Domain.Name)
	}
	ur, err := verifyUser(ctx, o, rt)
	if err != nil {
		return nil, err
	}
	r.add(ur)
	r.Finished = time.Now().UTC()
	return r, nil
}

// Domain verifies every member in users of domain, one after the other;
// nil users means KnownUsers. Users of another domain are refused.
func Domain(ctx context.Context, o Options, domain string, users []string) (*Report, error) {
	d := o.Config.Domains[strings.ToLower(domain)]
	switch {
	case d == nil:
		return nil, fmt.Errorf("%w: %s", ErrUnknownDomain, domain)
	case d.New == "":
		return nil, fmt.Errorf("%w: %s", ErrNoNewProvider, domain)
	}
	if users == nil {
		var err error
		if users, err = KnownUsers(ctx, o.Store, domain); err != nil {
			return nil, err
		}
	}
	router, err := store.NewRouter(ctx, o.Config, o.Store)
	if err != nil {
		return nil, err
	}
	r := &Report{Started: time.Now().UTC()}
	for _, u := range users {
		rt := router.Route(u)
		if rt == nil || rt.Domain.Name != d.Name {
			return nil, fmt.Errorf("verify: %s is not a member of %s", u, d.Name)
		}
		ur, err := verifyUser(ctx, o, rt)
		if err != nil {
			return nil, err
		}
		r.add(ur)
	}
	r.Finished = time.Now().UTC()
	return r, nil
}

// KnownUsers returns the members of domain the store knows, sorted and
// lower-cased: those with vault credentials (BucketVault,
// "PROVIDER\x00USER"), a pinned verifier (BucketVerifiers, "USER"), a UID
// map (BucketMaps, "USER\x00MAILBOX"), copy progress (BucketProgress) or an
// own routing override (BucketOverrides, "user:USER"). A member who never
// logged in through the gateway and has none of these is not listed:
// verify such a member by address.
func KnownUsers(ctx context.Context, st store.Store, domain string) ([]string, error) {
	domain = strings.ToLower(domain)
	seen := map[string]bool{}
	add := func(u string) {
		u = store.CanonicalUser(u)
		at := strings.LastIndexByte(u, '@')
		if at > 0 && u[at+1:] == domain {
			seen[u] = true
		}
	}
	err := st.View(ctx, func(tx store.Tx) error {
		scans := []struct {
			bucket, prefix string
			user           func(k string) string
		}{
			{store.BucketVault, "", func(k string) string { _, u, _ := strings.Cut(k, "\x00"); return u }},
			{store.BucketVerifiers, "", func(k string) string { return k }},
			{store.BucketMaps, "", func(k string) string { u, _, _ := strings.Cut(k, "\x00"); return u }},
			{store.BucketProgress, "", func(k string) string { return k }},
			{store.BucketOverrides, store.OverrideUser + ":", func(k string) string { return strings.TrimPrefix(k, store.OverrideUser+":") }},
		}
		for _, s := range scans {
			err := tx.ForEach(s.bucket, s.prefix, func(k string, _ []byte) error {
				add(s.user(k))
				return nil
			})
			if err != nil {
				return fmt.Errorf("read %s: %w", s.bucket, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(seen))
	for u := range seen {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

func (o Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// login logs in to provider name on behalf of user.
func (o Options) login(ctx context.Context, name, user string) (*backend.IMAPConn, error) {
	p := o.Backends.Provider(name)
	if p == nil {
		return nil, fmt.Errorf("provider %s is not configured", name)
	}
	var pw string
	if p.Config().Auth == config.AuthPassthrough || p.Config().Auth == "" {
		var ok bool
		if o.Password != nil {
			pw, ok = o.Password(user)
		}
		if !ok || pw == "" {
			return nil, fmt.Errorf("%s: %w", name, ErrNoPassword)
		}
	}
	return p.LoginUser(ctx, user, pw, o.Secrets, nil)
}

// verifyUser verifies one routed user. Upstream problems go into the
// returned report; the error is for the store and ctx.
func verifyUser(ctx context.Context, o Options, rt *store.Route) (UserReport, error) {
	user := store.CanonicalUser(rt.User)
	ur := UserReport{User: user, Domain: rt.Domain.Name, State: rt.State, OldProvider: rt.Old, NewProvider: rt.New}
	log := o.log().With("user", user)
	log.Info("verifying user", "state", rt.State, "old", rt.Old, "new", rt.New)
	var (
		fm   *store.FolderMap
		maps []string
	)
	err := o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		fm, err = store.GetFolderMap(tx, user)
		if errors.Is(err, store.ErrNotFound) {
			fm, err = &store.FolderMap{}, nil
		}
		if err != nil {
			return err
		}
		maps, err = store.ListMaps(tx, user)
		return err
	})
	if err != nil {
		return ur, fmt.Errorf("read the store for %s: %w", user, err)
	}
	oldC, err := o.login(ctx, rt.Old, user)
	if err != nil {
		return ur.failed(ctx, fmt.Errorf("log in to the old provider: %w", err))
	}
	defer oldC.Logout()
	newC, err := o.login(ctx, rt.New, user)
	if err != nil {
		return ur.failed(ctx, fmt.Errorf("log in to the new provider: %w", err))
	}
	defer newC.Logout()
	// imapclient has no context: end both conversations when ctx ends.
	stop := context.AfterFunc(ctx, func() { oldC.Client.Close(); newC.Client.Close() })
	defer stop()

	oldList, err := listFolders(oldC)
	if err != nil {
		return ur.failed(ctx, fmt.Errorf("list folders on the old provider: %w", err))
	}
	newList, err := listFolders(newC)
	if err != nil {
		return ur.failed(ctx, fmt.Errorf("list folders on the new provider: %w", err))
	}
	names := newFolderNames(fm, oldList, newList)
	claimed := map[string]bool{} // new folder names verified against an old one
	for _, of := range oldList.folders {
		if !of.selectable {
			continue
		}
		fr := FolderReport{Folder: of.name}
		newName, deleted := names.toNew(of.name)
		if !deleted {
			fr.NewFolder = newName
			claimed[newName] = true
		}
		if err := verifyFolder(ctx, o, log, oldC, newC, user, &fr, deleted, newList.has(newName)); err != nil {
			if ctx.Err() != nil {
				return ur, ctx.Err()
			}
			fr.Problems = append(fr.Problems, err.Error())
		}
		ur.Folders = append(ur.Folders, fr)
	}
	// Folders only in new: made by the user during the migration, or the
	// target of a rename.
	for _, nf := range newList.folders {
		if !nf.selectable || claimed[nf.name] {
			continue
		}
		oldName := names.toOld(nf.name)
		if !slices.Contains(maps, store.CanonicalMailbox(oldName)) {
			oldName = nf.name
		}
		fr := FolderReport{Folder: oldName, NewFolder: nf.name, NewOnlyFolder: true}
		if err := verifyFolder(ctx, o, log, nil, newC, user, &fr, false, true); err != nil {
			if ctx.Err() != nil {
				return ur, ctx.Err()
			}
			fr.Problems = append(fr.Problems, err.Error())
		}
		ur.Folders = append(ur.Folders, fr)
	}
	return ur, ctx.Err()
}

// failed records err as the reason the user could not be verified, unless
// ctx ended (then that is the error).
func (ur UserReport) failed(ctx context.Context, err error) (UserReport, error) {
	if ctx.Err() != nil {
		return ur, ctx.Err()
	}
	ur.Error = err.Error()
	switch {
	case errors.Is(err, ErrNoPassword):
		ur.Reason = ReasonNoPassword
	case errors.Is(err, backend.ErrNoCredential):
		ur.Reason = ReasonNoCredential
	case backend.IsAuthFailure(err):
		ur.Reason = ReasonAuthRefused
	case errors.Is(err, backend.ErrUnavailable), errors.Is(err, backend.ErrBusy):
		ur.Reason = ReasonUnavailable
	default:
		ur.Reason = ReasonError
	}
	return ur, nil
}

// verifyFolder reads fr.Folder on old (unless oldC is nil) and fr.NewFolder
// on new (when inNew), loads the folder's UID map and classifies.
func verifyFolder(ctx context.Context, o Options, log *slog.Logger, oldC, newC *backend.IMAPConn, user string, fr *FolderReport, deleted, inNew bool) error {
	var m *store.Map
	err := o.Store.View(ctx, func(tx store.Tx) error {
		var err error
		m, err = store.GetMap(tx, user, fr.Folder)
		if errors.Is(err, store.ErrNotFound) {
			m, err = nil, nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("read the UID map: %w", err)
	}
	var (
		oldSide, newSide = &side{}, &side{}
		errc             = make(chan error, 2)
	)
	go func() {
		if oldC == nil {
			errc <- nil
			return
		}
		s, err := scan(oldC, fr.Folder)
		if err != nil {
			err = fmt.Errorf("read %q on the old provider: %w", fr.Folder, err)
		} else {
			oldSide = s
		}
		errc <- err
	}()
	go func() {
		if deleted || !inNew {
			errc <- nil
			return
		}
		s, err := scan(newC, fr.NewFolder)
		if err != nil {
			err = fmt.Errorf("read %q on the new provider: %w", fr.NewFolder, err)
		} else {
			newSide = s
		}
		errc <- err
	}()
	err = errors.Join(<-errc, <-errc)
	if err != nil {
		return err
	}
	classify(fr, oldSide, newSide, m, deleted)
	log.Info("verified folder", "folder", fr.Folder, "new_folder", fr.NewFolder,
		"old_messages", fr.Old.Messages, "new_messages", fr.New.Messages,
		"missing", fr.Missing, "duplicates", fr.Duplicates, "mismatches", fr.Mismatches)
	return nil
}

// folderList is one provider's LIST answer.
type folderList struct {
	delim   rune
	folders []listed
}

type listed struct {
	name       string
	selectable bool
	role       imap.MailboxAttr // special-use role (RFC 6154), "" for none
}

func (l *folderList) has(name string) bool {
	return slices.ContainsFunc(l.folders, func(f listed) bool { return f.selectable && sameMailbox(f.name, name) })
}

// listFolders lists every folder, with special-use roles when offered.
func listFolders(c *backend.IMAPConn) (*folderList, error) {
	var opts *imap.ListOptions
	if c.Caps().Has(imap.CapSpecialUse) {
		opts = &imap.ListOptions{ReturnSpecialUse: true}
	}
	list, err := c.List("", "*", opts).Collect()
	if err != nil {
		return nil, err
	}
	out := &folderList{}
	for _, l := range list {
		if out.delim == 0 {
			out.delim = l.Delim
		}
		f := listed{name: l.Mailbox, selectable: true}
		if strings.EqualFold(l.Mailbox, "INBOX") {
			f.name = "INBOX"
		}
		for _, a := range l.Attrs {
			switch {
			case a == imap.MailboxAttrNoSelect || a == imap.MailboxAttrNonExistent:
				f.selectable = false
			case slices.Contains(backend.SpecialUse, a) && f.role == "":
				f.role = a
			}
		}
		out.folders = append(out.folders, f)
	}
	slices.SortFunc(out.folders, func(a, b listed) int {
		// INBOX first, then by name.
		if (a.name == "INBOX") != (b.name == "INBOX") {
			if a.name == "INBOX" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	return out, nil
}

// folderNames translates folder names between old (the client's) and new.
type folderNames struct {
	fm                 *store.FolderMap
	oldDelim, newDelim rune
	roleNew, roleOld   map[string]string
}

func newFolderNames(fm *store.FolderMap, oldList, newList *folderList) *folderNames {
	n := &folderNames{fm: fm, oldDelim: oldList.delim, newDelim: newList.delim,
		roleNew: map[string]string{}, roleOld: map[string]string{}}
	roles := func(l *folderList) map[imap.MailboxAttr]string {
		out := map[imap.MailboxAttr]string{}
		for _, f := range l.folders {
			if f.role != "" && f.selectable {
				if _, dup := out[f.role]; !dup {
					out[f.role] = f.name
				}
			}
		}
		return out
	}
	or, nr := roles(oldList), roles(newList)
	for _, a := range backend.SpecialUse {
		if o, nw := or[a], nr[a]; o != "" && nw != "" {
			n.roleNew[o], n.roleOld[nw] = nw, o
		}
	}
	// What the gateway recorded wins over what LIST says today.
	for _, f := range fm.Folders {
		if f.SpecialUse != "" && f.New != "" {
			n.roleNew[f.Old], n.roleOld[f.New] = f.New, f.Old
		}
	}
	return n
}

// toNew returns the new provider's name of old folder name, or deleted
// true when the user deleted or renamed the folder during the migration.
func (n *folderNames) toNew(name string) (newName string, deleted bool) {
	for _, f := range n.fm.Folders {
		if f.Old == name {
			if f.New == "" {
				return "", true
			}
			return f.New, false
		}
	}
	if nw, ok := n.roleNew[name]; ok {
		return nw, false
	}
	if name == "INBOX" || n.oldDelim == 0 || n.newDelim == 0 || n.oldDelim == n.newDelim {
		return name, false
	}
	return strings.ReplaceAll(name, string(n.oldDelim), string(n.newDelim)), false
}

// toOld returns the client's name of new folder name.
func (n *folderNames) toOld(name string) string {
	for _, f := range n.fm.Folders {
		if f.New == name {
			return f.Old
		}
	}
	if o, ok := n.roleOld[name]; ok {
		return o
	}
	if name == "INBOX" || n.oldDelim == 0 || n.newDelim == 0 || n.oldDelim == n.newDelim {
		return name
	}
	return strings.ReplaceAll(name, string(n.newDelim), string(n.oldDelim))
}

func sameMailbox(a, b string) bool {
	return store.CanonicalMailbox(a) == store.CanonicalMailbox(b)
}

// side is what one provider holds in one folder.
type side struct {
	exists      bool
	uidValidity uint32
	uidNext     store.UID
	msgs        []message // by UID
	bytes       int64
}

// message is one message as read from a provider.
type message struct {
	uid         store.UID
	flags       []string // without \Recent, sorted case-insensitively
	date        time.Time
	size        int64 // bytes read, which the SHA-256 covers
	sum         [32]byte
	kind        string // PEC kind, "" for ordinary mail
	receiptType string // X-TipoRicevuta, "" when absent
}

var (
	headerSection = &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: pecHeaders, Peek: true}
	bodySection   = &imap.FetchItemBodySection{Peek: true}
)

// scan EXAMINEs mailbox and reads every message: UID, flags,
// INTERNALDATE, the PEC header fields and the SHA-256 of BODY.PEEK[],
// streamed. A mailbox that does not exist is a side that does not exist.
func scan(c *backend.IMAPConn, mailbox string) (*side, error) {
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		if isNonExistent(err) {
			return &side{}, nil
		}
		return nil, fmt.Errorf("examine: %w", err)
	}
	s := &side{exists: true, uidValidity: sel.UIDValidity, uidNext: store.UID(sel.UIDNext)}
	if sel.NumMessages == 0 {
		return s, nil
	}
	cmd := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true,
		BodySection: []*imap.FetchItemBodySection{headerSection, bodySection},
	})
	defer cmd.Close()
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		m, err := readMessage(msg)
		if err != nil {
			return nil, err
		}
		s.msgs = append(s.msgs, m)
		s.bytes += m.size
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	slices.SortFunc(s.msgs, func(a, b message) int { return cmpUID(a.uid, b.uid) })
	for i := 1; i < len(s.msgs); i++ {
		if s.msgs[i].uid == s.msgs[i-1].uid {
			return nil, fmt.Errorf("fetch: UID %d answered twice", s.msgs[i].uid)
		}
	}
	return s, nil
}

// readMessage reads one FETCH answer, hashing the body as it streams.
func readMessage(msg *imapclient.FetchMessageData) (message, error) {
	var (
		m             message
		gotBody, gotD bool
		hdr           []byte
	)
	for item := msg.Next(); item != nil; item = msg.Next() {
		switch it := item.(type) {
		case imapclient.FetchItemDataUID:
			m.uid = store.UID(it.UID)
		case imapclient.FetchItemDataFlags:
			m.flags = normFlags(it.Flags)
		case imapclient.FetchItemDataInternalDate:
			m.date, gotD = it.Time, true
		case imapclient.FetchItemDataBodySection:
			if it.Literal == nil {
				continue
			}
			switch {
			case it.MatchCommand(headerSection):
				b, err := io.ReadAll(io.LimitReader(it.Literal, maxHeaderBytes))
				if err != nil {
					return m, fmt.Errorf("fetch sequence %d: header fields: %w", msg.SeqNum, err)
				}
				hdr = b
			case it.MatchCommand(bodySection):
				h := sha256.New()
				n, err := io.Copy(h, it.Literal)
				if err != nil {
					return m, fmt.Errorf("fetch sequence %d: body: %w", msg.SeqNum, err)
				}
				if n != it.Literal.Size() {
					return m, fmt.Errorf("fetch sequence %d: body: %w", msg.SeqNum, io.ErrUnexpectedEOF)
				}
				m.size = n
				h.Sum(m.sum[:0])
				gotBody = true
			}
		}
	}
	if m.uid == 0 || !gotBody || !gotD {
		return m, fmt.Errorf("fetch sequence %d: the answer lacks UID, INTERNALDATE or BODY[]", msg.SeqNum)
	}
	m.kind, m.receiptType = pecKind(hdr)
	return m, nil
}

// normFlags drops \Recent and sorts the rest case-insensitively.
func normFlags(fs []imap.Flag) []string {
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		if !strings.EqualFold(string(f), `\Recent`) {
			out = append(out, string(f))
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	return out
}

// sameFlags compares two normalised flag lists case-insensitively.
func sameFlags(a, b []string) bool {
	return slices.EqualFunc(a, b, strings.EqualFold)
}

// pecKind reads the PEC kind from the header fields X-Trasporto,
// X-Ricevuta and X-TipoRicevuta (any case, folded or not): "busta" for
// X-Trasporto: posta-certificata, "anomalia" for X-Trasporto: errore, the
// value of X-Ricevuta for a receipt (accettazione, avvenuta-consegna,
// errore-consegna, ...), "" for ordinary mail; receiptType is the value of
// X-TipoRicevuta (completa, breve, sintetica), "" when absent. Values are
// lower-cased; an X-Trasporto with another value is returned as it is.
func pecKind(hdr []byte) (kind, receiptType string) {
	fields := map[string]string{}
	var name string
	for line := range bytes.Lines(hdr) {
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if name != "" {
				fields[name] += " " + string(bytes.TrimSpace(line))
			}
			continue
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			name = ""
			continue
		}
		name = strings.ToLower(string(bytes.TrimSpace(k)))
		if _, dup := fields[name]; dup {
			name = "" // the first occurrence counts
			continue
		}
		fields[name] = string(bytes.TrimSpace(v))
	}
	val := func(k string) string { return strings.ToLower(strings.TrimSpace(fields[k])) }
	receiptType = val("x-tiporicevuta")
	switch t := val("x-trasporto"); t {
	case "":
	case "posta-certificata":
		return "busta", receiptType
	case "errore":
		return "anomalia", receiptType
	default:
		return t, receiptType
	}
	return val("x-ricevuta"), receiptType
}

func isNonExistent(err error) bool {
	var imapErr *imap.Error
	return errors.As(err, &imapErr) && (imapErr.Code == imap.ResponseCodeNonExistent ||
		strings.Contains(strings.ToLower(imapErr.Text), "doesn't exist"))
}

func cmpUID(a, b store.UID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
