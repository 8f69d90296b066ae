package sync

// Folders (DESIGN.md, Folders; invariant 2: folder names, subscriptions and
// special-use roles carry over).
//
// The back-fill maps each old folder to new exactly as the proxy does
// (proxy/virtual.go newName), so both write the same mailbox: by
// special-use role first (old's \Sent is new's \Sent, whatever each calls
// it), then by name with the hierarchy delimiter converted (INBOX stays
// INBOX). Role pairs recorded in the user's store.FolderMap are reused;
// pairs not recorded yet are computed from both sides' LIST ... RETURN
// (SPECIAL-USE) and recorded the way the proxy records them.
//
// The folder map also carries the user's changes during migrating, which
// the back-fill respects (invariant 4):
//
//   - an entry with New == "" and not Created is a folder the user deleted
//     or renamed away: it is neither created again nor copied;
//   - Subscribed says old's subscription was carried to new once; it is not
//     carried again, so an UNSUBSCRIBE in new sticks.
//
// Names are UTF-8 as imapclient gives them (it decodes modified UTF-7,
// RFC 3501 section 5.1.3), which is also how the proxy keys the UID maps.

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/store"
)

// folder is one old folder a pass copies.
type folder struct {
	Old, New   string
	Role       imap.MailboxAttr // old's special-use role, "" for none
	subscribed bool             // subscribed in old
	subCarried bool             // subscribed in new by this pass
	created    bool             // created in new by this pass
	// noCopy: the folder is counted but not copied (it could not be made in
	// new, or its UIDVALIDITY does not match its map).
	noCopy bool
	// skipped: unchanged since the last pass copied it all (not read).
	skipped   bool
	oldStatus folderSummary // old's state when counted

	entry  *store.MapEntry
	msgs   []*oldMsg // old's messages that belong in new, by ascending old UID
	copies []*newMsg // new's messages that may be copies of old ones
}

// oldMsg is one old message and its virtual UID.
type oldMsg struct {
	msgMeta
	v      store.UID
	copied bool                  // the map gives it a new UID
	fp     *store.FolderProgress // its folder's counts in the pass's progress; nil: none kept
}

// listAll lists every mailbox of c with its special-use role and
// subscription where the server can say them (LIST-EXTENDED, RFC 5258;
// SPECIAL-USE, RFC 6154).
func listAll(c *backend.IMAPConn) ([]*imap.ListData, error) {
	caps := c.Caps()
	var opts *imap.ListOptions
	if caps.Has(imap.CapListExtended) || caps.Has(imap.CapIMAP4rev2) {
		opts = &imap.ListOptions{ReturnSubscribed: true, ReturnSpecialUse: caps.Has(imap.CapSpecialUse) || caps.Has(imap.CapIMAP4rev2)}
	}
	return c.List("", "*", opts).Collect()
}

func isNonExistent(err error) bool {
	var e *imap.Error
	return errors.As(err, &e) && (e.Code == imap.ResponseCodeNonExistent || e.Code == imap.ResponseCodeTryCreate ||
		strings.Contains(strings.ToLower(e.Text), "doesn't exist"))
}

// planFolders lists old's folders, maps each to new, creates what new
// lacks, carries subscriptions, records all that in the folder map, and
// sets p.folders: INBOX first, then the others in old's LIST order.
func (p *pass) planFolders() error {
	oldList, err := listAll(p.oldC)
	if err != nil {
		return fmt.Errorf("list folders on old: %w", err)
	}
	newList, err := listAll(p.newC)
	if err != nil {
		return fmt.Errorf("list folders on new: %w", err)
	}
	oldDelim, newDelim := p.oldC.Delim(), p.newC.Delim()

	var fm *store.FolderMap
	err = p.e.st.View(p.ctx, func(tx store.Tx) error {
		var err error
		fm, err = store.GetFolderMap(tx, p.user)
		if errors.Is(err, store.ErrNotFound) {
			fm, err = &store.FolderMap{}, nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("read the folder map: %w", err)
	}
	records := map[string]store.Folder{}
	for _, f := range fm.Folders {
		records[f.Old] = f
	}
	deleted := func(name string) bool {
		r, ok := records[name]
		return ok && r.New == "" && !r.Created
	}

	// Role pairs: recorded ones first, computed for the others.
	roleNew := map[string]string{}
	for _, r := range fm.Folders {
		if r.SpecialUse != "" && r.New != "" {
			roleNew[r.Old] = r.New
		}
	}
	oldRoles, newRoles := backend.Roles(oldList), backend.Roles(newList)
	var pairs []store.Folder
	for _, a := range backend.SpecialUse {
		o, n := oldRoles[a], newRoles[a]
		if o == "" || n == "" || deleted(o) {
			continue
		}
		if _, ok := roleNew[o]; ok {
			continue
		}
		roleNew[o] = n
		pairs = append(pairs, store.Folder{Old: o, New: n, SpecialUse: string(a)})
	}

	exists := map[string]bool{}
	for _, l := range newList {
		if backend.Selectable(l) {
			exists[store.CanonicalMailbox(l.Mailbox)] = true
		}
	}
	var folders []*folder
	for _, l := range oldList {
		if !backend.Selectable(l) || deleted(l.Mailbox) {
			continue
		}
		f := &folder{Old: l.Mailbox, subscribed: backend.HasAttr(l, imap.MailboxAttrSubscribed)}
		for _, a := range backend.SpecialUse {
			if backend.HasAttr(l, a) {
				f.Role = a
				break
			}
		}
		if n, ok := roleNew[f.Old]; ok {
			f.New = n
		} else {
			f.New = backend.ConvertName(f.Old, oldDelim, newDelim)
		}
		folders = append(folders, f)
	}
	slices.SortStableFunc(folders, func(a, b *folder) int {
		ai, bi := strings.EqualFold(a.Old, "INBOX"), strings.EqualFold(b.Old, "INBOX")
		switch {
		case ai && !bi:
			return -1
		case bi && !ai:
			return 1
		}
		return 0
	})

	caps := p.newC.Caps()
	for _, f := range folders {
		if exists[store.CanonicalMailbox(f.New)] {
			continue
		}
		var opts *imap.CreateOptions
		if f.Role != "" && newRoles[f.Role] == "" && caps.Has(imap.CapCreateSpecialUse) {
			opts = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{f.Role}}
		}
		err := p.newC.Create(f.New, opts).Wait()
		if err != nil && opts != nil && !backend.IsAlreadyExists(err) && !closed(p.newC) {
			err = p.newC.Create(f.New, nil).Wait()
		}
		switch {
		case err == nil:
			f.created = true
			exists[store.CanonicalMailbox(f.New)] = true
		case backend.IsAlreadyExists(err):
		case closed(p.newC):
			return fmt.Errorf("create %q on new: %w", f.New, err)
		default:
			p.addError(KindFolder, f.Old, 0, fmt.Sprintf("cannot create %q on the new provider: %v", f.New, err))
			f.noCopy = true
		}
	}
	for _, f := range folders {
		if !f.subscribed || f.noCopy || records[f.Old].Subscribed {
			continue
		}
		if err := p.newC.Subscribe(f.New).Wait(); err != nil {
			if closed(p.newC) {
				return fmt.Errorf("subscribe %q on new: %w", f.New, err)
			}
			p.addError(KindFolder, f.Old, 0, fmt.Sprintf("cannot subscribe %q on the new provider: %v", f.New, err))
			continue
		}
		f.subCarried = true
	}
	p.folders = folders
	return p.recordFolders(string(oldDelim), string(newDelim), pairs)
}

// recordFolders writes what planFolders learnt into the user's folder map,
// in one transaction that re-reads it, so that concurrent changes by
// sessions are kept.
func (p *pass) recordFolders(oldDelim, newDelim string, pairs []store.Folder) error {
	changed := len(pairs) > 0
	for _, f := range p.folders {
		changed = changed || f.created || f.subCarried
	}
	if !changed {
		return nil
	}
	err := p.e.st.Update(p.saveCtx(), func(tx store.Tx) error {
		fm, err := store.GetFolderMap(tx, p.user)
		if errors.Is(err, store.ErrNotFound) {
			fm, err = &store.FolderMap{OldDelim: oldDelim, NewDelim: newDelim}, nil
		}
		if err != nil {
			return err
		}
		find := func(old string) int {
			return slices.IndexFunc(fm.Folders, func(f store.Folder) bool { return f.Old == old })
		}
		for _, pr := range pairs { // as proxy/virtual.go mapRoles records them
			if i := find(pr.Old); i >= 0 {
				if fm.Folders[i].New == "" && !fm.Folders[i].Created {
					continue // deleted by the user meanwhile
				}
				fm.Folders[i] = pr
			} else {
				fm.Folders = append(fm.Folders, pr)
			}
		}
		for _, f := range p.folders {
			if !f.created && !f.subCarried {
				continue
			}
			i := find(f.Old)
			if i < 0 {
				fm.Folders = append(fm.Folders, store.Folder{Old: f.Old, New: f.New})
				i = len(fm.Folders) - 1
			} else if fm.Folders[i].New == "" && !fm.Folders[i].Created {
				continue // deleted by the user meanwhile
			}
			if fm.Folders[i].New == "" {
				fm.Folders[i].New = f.New
			}
			if f.created {
				fm.Folders[i].Created = true
			}
			if f.subCarried {
				fm.Folders[i].Subscribed = true
			}
		}
		return store.PutFolderMap(tx, p.user, fm)
	})
	if err != nil {
		return fmt.Errorf("record the folder map: %w", err)
	}
	return nil
}
