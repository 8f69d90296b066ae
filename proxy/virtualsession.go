package proxy

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// virtual reports whether the session serves a virtual mailbox (states
// migrating and new).
func (s *imapSession) virtual() bool { return s.newUp != nil }

// loginVirtual logs in for states migrating and new. The client is
// authenticated by the old provider with its own password while old is
// there (migrating); the new side is logged into with the new provider's
// credentials (master or vault; passthrough uses the client's password).
func (s *imapSession) loginVirtual(route *Route, username, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if route.Old.Config().Auth != config.AuthPassthrough && route.State != config.StateNew {
		// Old is reached with the provider's credentials (master, vault),
		// which say nothing of the client's password: check it first,
		// against the pinned verifier or old itself.
		if err := s.srv.auth.check(ctx, route, username, password); err != nil {
			return err
		}
	}
	if route.State == config.StateOld {
		// After a rollback: old is the only side, and writable, but its
		// mailboxes keep the virtual UIDs of the map (invariant 1).
		opts, changes := s.clientOptions("new")
		up, err := route.Old.LoginUser(ctx, username, password, s.srv.opts.Secrets, opts)
		if err != nil {
			return err
		}
		s.newUp, s.wIsOld = up, true
		s.vc.newChanges = changes
		s.newDelim = up.Delim()
		s.oldDelim = s.newDelim
		s.state, s.route = route.State, route
		return nil
	}
	if route.State == config.StateMigrating {
		opts, changes := s.clientOptions("old")
		up, err := route.Old.LoginUser(ctx, username, password, s.srv.opts.Secrets, opts)
		if err != nil {
			return err
		}
		s.oldUp = up
		s.vc.oldChanges = changes
		s.oldDelim = up.Delim()
		if route.Old.Config().Auth == config.AuthPassthrough {
			s.srv.auth.pin(ctx, username, password)
		}
	} else if route.New.Config().Auth != config.AuthPassthrough {
		// State new, and the new provider does not see the client's own
		// password: check it against the verifier pinned at the last
		// successful login to old, or ask old itself while it is there.
		if err := s.srv.auth.check(ctx, route, username, password); err != nil {
			return err
		}
	}
	opts, changes := s.clientOptions("new")
	up, err := route.New.LoginUser(ctx, username, password, s.srv.opts.Secrets, opts)
	if err != nil {
		if s.oldUp != nil {
			s.oldUp.Logout()
			s.oldUp = nil
		}
		return err
	}
	s.newUp = up
	s.vc.newChanges = changes
	s.newDelim = up.Delim()
	if s.oldDelim == 0 {
		s.oldDelim = s.newDelim
	}
	s.state = route.State
	s.route = route
	s.roleNew, s.roleOld = nil, nil // paired when first needed (needRoles)
	return nil
}

// clientOptions are the upstream client options of one side in virtual
// mode: any change upstream marks the view dirty; flag changes are
// relayed by side UID at the next flush. The counter returned counts the
// EXISTS and EXPUNGE responses the connection receives (see vcache).
func (s *imapSession) clientOptions(side string) (*imapclient.Options, *atomic.Uint64) {
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	changes := new(atomic.Uint64)
	mark := func() {
		changes.Add(1)
		s.mu.Lock()
		if s.gen == gen && !s.closed {
			s.queue = append(s.queue, update{kind: updResync})
		}
		s.mu.Unlock()
		select {
		case s.events <- struct{}{}:
		default:
		}
	}
	return &imapclient.Options{
		WordDecoder: wordDecoder,
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Expunge: func(uint32) { mark() },
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					mark()
				}
			},
			Fetch: func(msg *imapclient.FetchMessageData) {
				buf, err := msg.Collect()
				if err != nil || buf.Flags == nil {
					return
				}
				s.mu.Lock()
				if s.gen == gen && !s.closed {
					s.queue = append(s.queue, update{kind: updSideFlags, side: side, num: buf.SeqNum, uid: buf.UID, flags: buf.Flags})
				}
				s.mu.Unlock()
				select {
				case s.events <- struct{}{}:
				default:
				}
			},
		},
	}, changes
}

// checkOld and checkNew report an upstream failure; a broken connection
// cannot be silently replaced in virtual mode (two views to keep in step),
// so the client is asked to reconnect.
func (s *imapSession) checkOld(err error) error { return s.vcheck(s.oldUp, err) }
func (s *imapSession) checkNew(err error) error { return s.vcheck(s.newUp, err) }

func (s *imapSession) vcheck(c *backend.IMAPConn, err error) error {
	if err == nil {
		return nil
	}
	var imapErr *imap.Error
	if errors.As(err, &imapErr) {
		return imapErr
	}
	if c != nil {
		s.upstreamBroke(c)
		c.Close()
	}
	return errUpstreamGone
}

// vbroken says BYE when an upstream of the virtual view died.
func (s *imapSession) vbroken() error {
	for _, c := range []*backend.IMAPConn{s.oldUp, s.newUp} {
		if c == nil {
			continue
		}
		select {
		case <-c.Closed():
			go s.conn.Bye("The mail provider connection was lost, please reconnect")
			return errUpstreamGone
		default:
		}
	}
	return nil
}

// checkFlip applies a state change made while the session is connected
// (invariant 8). old -> migrating and migrating -> new keep the client's
// view; other changes while a mailbox is selected ask it to reconnect.
func (s *imapSession) checkFlip() {
	if s.flips == nil || s.route == nil {
		return
	}
	select {
	case <-s.flips:
		s.applyFlip()
	default:
	}
}

// applyFlip re-resolves the user's route after a router change (whose
// token the caller took) and follows it.
func (s *imapSession) applyFlip() {
	if s.route == nil {
		return
	}
	route := s.srv.opts.resolve(s.route.User)
	if route == nil || route.State == s.route.State {
		return
	}
	from, to := s.route.State, route.State
	log := s.log.With("from", from, "to", to)
	switch {
	case from == config.StateOld && to == config.StateMigrating:
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		opts, changes := s.clientOptions("new")
		up, err := route.New.LoginUser(ctx, route.User, s.password, s.srv.opts.Secrets, opts)
		if err != nil {
			log.Warn("flip: new provider login failed, staying on old", "err", err)
			return
		}
		// The old connection keeps its pure-proxy handler: vflush reads its
		// EXISTS/EXPUNGE as "resync" and its flag changes as old's.
		s.mu.Lock()
		s.queue = nil
		s.mu.Unlock()
		oldConn := s.up
		// The pure-proxy handler of a connection opened in state old does
		// not count changes: no cached UID list for it.
		var oldChanges *atomic.Uint64
		if s.wIsOld {
			// Served through the map after a rollback: the same old
			// connection becomes the read-only side again.
			oldConn, s.wIsOld, s.oldExamined = s.newUp, false, ""
			oldChanges = s.vc.newChanges
		}
		s.oldUp, s.up, s.newUp = oldConn, nil, up
		s.vc = vcache{oldChanges: oldChanges, newChanges: changes}
		s.oldDelim, s.newDelim = s.oldUp.Delim(), up.Delim()
		s.route, s.state = route, to
		s.mt.SetState(to)
		s.log = s.routeLog(route)
		s.roleNew, s.roleOld = nil, nil // paired when first needed (needRoles)
		if s.selected != "" {
			prev := s.selData.NumMessages
			if _, err := s.selectVirtual(s.selected, s.readOnly); err != nil {
				log.Warn("flip: cannot open the virtual view", "err", err)
				go s.conn.Bye("Mailbox moving, please reconnect")
				return
			}
			// The client knew old's prev messages; what new alone holds sorts
			// after them (its virtual UIDs are above the freeze).
			if n := uint32(len(s.vm.view)); n > prev {
				s.queueUpdate(update{kind: updVExists, num: n})
			} else if n < prev {
				log.Warn("flip: the view lost messages, closing client")
				go s.conn.Bye("Mailbox moving, please reconnect")
				return
			}
		}
		log.Info("flip applied to live session")
	case from == config.StateMigrating && to == config.StateNew:
		if s.oldUp != nil {
			s.oldUp.Logout()
			s.oldUp = nil
		}
		s.oldExamined, s.vc = "", vcache{newChanges: s.vc.newChanges}
		if s.vm != nil {
			s.vm.old = nil
			s.queueUpdate(update{kind: updResync})
		}
		s.route, s.state = route, to
		s.mt.SetState(to)
		s.log = s.routeLog(route)
		log.Info("flip applied to live session")
	default:
		s.route = route
		log.Info("flip needs a new session")
		go s.conn.Bye("Your mailbox is being moved, please reconnect")
	}
}

func (s *imapSession) queueUpdate(u update) {
	s.mu.Lock()
	s.queue = append(s.queue, u)
	s.mu.Unlock()
}

func (s *imapSession) vSelect(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	if err := s.vbroken(); err != nil {
		return nil, err
	}
	s.vm, s.selected = nil, ""
	s.mu.Lock()
	s.queue = nil
	s.mu.Unlock()
	ro := options != nil && options.ReadOnly
	data, err := s.selectVirtual(mailbox, ro)
	if err != nil {
		return nil, err
	}
	s.selected, s.readOnly = mailbox, ro
	s.selData = &imap.SelectData{NumMessages: data.NumMessages, UIDValidity: data.UIDValidity, UIDNext: data.UIDNext}
	return data, nil
}

// vUnselect closes the virtual mailbox. Old's stays EXAMINEd: it is only
// ever read, and Dovecot takes tens of milliseconds to open a large mailbox
// again, which a client that re-SELECTs it (imapserver UNSELECTs first)
// would pay every time. Old's changes meanwhile are counted (vcache) and
// reach no client while no mailbox is selected (vflush needs s.vm).
func (s *imapSession) vUnselect() error {
	if s.newUp != nil {
		s.newUp.Unselect().Wait()
	}
	s.vm, s.selected = nil, ""
	return nil
}

// vList lists the client's folders: old's names, delimiter and
// special-use roles, plus folders that exist only in new (made there
// during migration), minus folders the user deleted.
func (s *imapSession) vList(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	deleted := s.deletedFolders()
	seen := map[string]bool{}
	if s.oldUp != nil {
		for _, pattern := range patterns {
			list, err := s.oldUp.List(ref, pattern, options).Collect()
			if err != nil {
				return s.checkOld(err)
			}
			for _, d := range list {
				if deleted[d.Mailbox] || seen[d.Mailbox] {
					continue
				}
				if options != nil && options.SelectSubscribed {
					// Subscriptions live in new once migrating.
					continue
				}
				seen[d.Mailbox] = true
				if err := w.WriteList(d); err != nil {
					return err
				}
			}
		}
	}
	for _, pattern := range patterns {
		list, err := s.newUp.List(s.newName(ref), s.newName(pattern), options).Collect()
		if err != nil {
			return s.checkNew(err)
		}
		for _, d := range list {
			d.Mailbox = s.oldName(d.Mailbox)
			if s.oldDelim != 0 {
				d.Delim = s.oldDelim
			}
			if deleted[d.Mailbox] || seen[d.Mailbox] {
				continue
			}
			seen[d.Mailbox] = true
			if err := w.WriteList(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// deletedFolders are folders the user deleted or renamed away during
// migration: old still has them (it is never written) but the client must
// not see them again.
func (s *imapSession) deletedFolders() map[string]bool {
	out := map[string]bool{}
	st := s.srv.opts.Maps.Store()
	if st == nil {
		return out
	}
	st.View(context.Background(), func(tx store.Tx) error {
		fm, err := store.GetFolderMap(tx, s.route.User)
		if err != nil {
			return nil
		}
		for _, f := range fm.Folders {
			if f.New == "" {
				out[f.Old] = true
			}
		}
		return nil
	})
	return out
}

func (s *imapSession) markFolder(old, new string) error {
	st := s.srv.opts.Maps.Store()
	return st.Update(context.Background(), func(tx store.Tx) error {
		fm, err := store.GetFolderMap(tx, s.route.User)
		if errors.Is(err, store.ErrNotFound) {
			fm, err = &store.FolderMap{OldDelim: string(s.oldDelim), NewDelim: string(s.newDelim)}, nil
		}
		if err != nil {
			return err
		}
		i := slices.IndexFunc(fm.Folders, func(f store.Folder) bool { return f.Old == old })
		if i < 0 {
			fm.Folders = append(fm.Folders, store.Folder{Old: old})
			i = len(fm.Folders) - 1
		}
		fm.Folders[i].New = new
		fm.Folders[i].Created = new != ""
		return store.PutFolderMap(tx, s.route.User, fm)
	})
}

func (s *imapSession) vCreate(mailbox string, options *imap.CreateOptions) error {
	if err := s.newUp.Create(s.newName(mailbox), options).Wait(); err != nil {
		return s.checkNew(err)
	}
	return s.markFolder(mailbox, s.newName(mailbox))
}

func (s *imapSession) vDelete(mailbox string) error {
	if err := s.newUp.Delete(s.newName(mailbox)).Wait(); err != nil && !isNonExistent(err) {
		return s.checkNew(err)
	}
	s.srv.opts.Maps.Forget(s.route.User, mailbox)
	return s.markFolder(mailbox, "")
}

// vRename copies whatever of the folder is still only in old, then renames
// it in new; the map follows the name.
func (s *imapSession) vRename(mailbox, newName string, options *imap.RenameOptions) error {
	ctx := context.Background()
	if strings.EqualFold(mailbox, "INBOX") {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "Renaming INBOX is not supported during a migration"}
	}
	inOld := false
	if s.oldUp != nil {
		_, err := s.oldUp.Status(mailbox, &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil && !isNonExistent(err) {
			return s.checkOld(err)
		}
		inOld = err == nil
	}
	if inOld {
		v := &vmail{s: s, mailbox: mailbox, old: &vside{name: "old", c: s.oldUp, mailbox: mailbox}, new: &vside{name: "new", c: s.newUp, mailbox: s.newName(mailbox)}}
		entry, err := s.mapFor(ctx, mailbox)
		if err != nil {
			return err
		}
		v.entry = entry
		if _, err := s.newUp.Select(v.new.mailbox, nil).Wait(); err != nil && isNonExistent(err) {
			if err := s.newUp.Create(v.new.mailbox, nil).Wait(); err != nil && !isAlreadyExists(err) {
				return s.checkNew(err)
			}
		}
		err = s.withExamined(v, func() error {
			if err := v.refresh(ctx); err != nil {
				return err
			}
			_, err := v.ensureCopied(ctx, v.view)
			return err
		})
		if err != nil {
			return err
		}
	}
	if err := s.newUp.Rename(s.newName(mailbox), s.newName(newName), options).Wait(); err != nil {
		return s.checkNew(err)
	}
	if err := s.srv.opts.Maps.Rename(ctx, s.route.User, mailbox, newName); err != nil {
		return err
	}
	if err := s.markFolder(mailbox, ""); err != nil {
		return err
	}
	return s.markFolder(newName, s.newName(newName))
}

// vPoll asks both upstreams for news when the command did not, then
// relays: a changed view is resynchronised (when expunges are allowed).
func (s *imapSession) vPoll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if !s.touched {
		for _, c := range []*backend.IMAPConn{s.oldUp, s.newUp} {
			if c != nil {
				c.Noop().Wait()
			}
		}
	}
	s.touched = false
	return s.vflush(w, allowExpunge)
}

func (s *imapSession) vflush(w *imapserver.UpdateWriter, allowExpunge bool) error {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	resync := false
	for _, u := range q {
		switch u.kind {
		case updResync, updExists, updExpunge:
			// updExists/updExpunge come from an old connection that was
			// opened in state old and flipped live.
			resync = true
		case updFlags:
			if s.vm != nil {
				u.side = "old"
				if err := s.vm.relayFlags(w, u); err != nil {
					return err
				}
			}
		case updVExists:
			if err := w.WriteNumMessages(u.num); err != nil {
				return err
			}
		case updSideFlags:
			if s.vm == nil {
				continue
			}
			if err := s.vm.relayFlags(w, u); err != nil {
				return err
			}
		}
	}
	if !resync || s.vm == nil {
		return nil
	}
	if !allowExpunge {
		s.queueUpdate(update{kind: updResync})
		return nil
	}
	return s.vm.resync(w)
}

// relayFlags relays a flag change seen on one side, by that side's
// sequence number, as the client's.
func (v *vmail) relayFlags(w *imapserver.UpdateWriter, u update) error {
	sd := v.new
	if u.side == "old" {
		sd = v.old
	}
	if sd == nil {
		return nil
	}
	su := store.UID(u.uid)
	if su == 0 && u.num >= 1 && int(u.num) <= len(sd.uids) {
		su = sd.uids[u.num-1]
	}
	v.entry.Lock()
	var vu store.UID
	var ok bool
	if sd == v.new {
		vu, ok = v.s.byW(v.entry.M, su)
	} else {
		vu, ok = v.entry.M.ByOld(su)
		if _, n, _ := v.entry.M.Lookup(vu); n != 0 {
			ok = false // new holds this message's flags
		}
	}
	v.entry.Unlock()
	seq := v.seqOf(vu)
	if !ok || seq == 0 {
		return nil
	}
	return w.WriteMessageFlags(seq, imap.UID(vu), u.flags)
}

// vIdle idles on both upstreams; any change ends both IDLEs, is relayed,
// and they start again. A flip is applied in between.
func (s *imapSession) vIdle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		if err := s.vbroken(); err != nil {
			return err
		}
		if err := s.vflush(w, true); err != nil {
			return err
		}
		var idles []*imapclient.IdleCommand
		for _, c := range []*backend.IMAPConn{s.oldUp, s.newUp} {
			if c == nil {
				continue
			}
			idle, err := c.Idle()
			if err != nil {
				for _, i := range idles {
					i.Close()
				}
				return s.vcheck(c, err)
			}
			idles = append(idles, idle)
		}
		var closed <-chan struct{}
		if s.oldUp != nil {
			closed = s.oldUp.Closed()
		}
		stopped, flipped := false, false
		select {
		case <-stop:
			stopped = true
		case <-s.events:
		case <-s.flips:
			flipped = true
		case <-s.newUp.Closed():
		case <-closed:
		}
		for _, i := range idles {
			i.Close()
			i.Wait()
		}
		if stopped {
			return s.vflush(w, true)
		}
		if flipped {
			// Applied with both IDLEs ended: a flip may log out of old.
			s.applyFlip()
		}
	}
}

func (s *imapSession) vMove(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	if s.vm == nil || s.vm.readOnly {
		return errReadOnly
	}
	data, src, newSet, err := s.vm.copyTo(numSet, dest)
	if err != nil {
		return err
	}
	if len(src) == 0 {
		return nil
	}
	if data != nil {
		if err := w.WriteCopyData(data); err != nil {
			return err
		}
	}
	if err := s.newUp.Store(newSet, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return s.checkNew(err)
	}
	return s.vm.remove(newSet, src, func(seq uint32) error { return w.WriteExpunge(seq) })
}

func (s *imapSession) vNamespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: s.oldDelim}}}, nil
}

// vdo runs a virtual-mode command that talks to the upstreams.
func (s *imapSession) vdo(f func() error) error {
	s.touched = true
	if err := s.vbroken(); err != nil {
		return err
	}
	return f()
}
