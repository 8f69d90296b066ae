package backend

import (
	"errors"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"
)

// SpecialUse are the roles paired between providers (RFC 6154), in the
// gateway's order: the back-fill, preflight and verify map them alike.
var SpecialUse = []imap.MailboxAttr{imap.MailboxAttrSent, imap.MailboxAttrDrafts, imap.MailboxAttrTrash,
	imap.MailboxAttrJunk, imap.MailboxAttrArchive}

// HasAttr reports whether l carries the attribute a (case-insensitively).
func HasAttr(l *imap.ListData, a imap.MailboxAttr) bool {
	return slices.ContainsFunc(l.Attrs, func(b imap.MailboxAttr) bool { return strings.EqualFold(string(a), string(b)) })
}

// Selectable reports whether l names a mailbox that can be selected (not
// \Noselect, not \NonExistent).
func Selectable(l *imap.ListData) bool {
	return !HasAttr(l, imap.MailboxAttrNoSelect) && !HasAttr(l, imap.MailboxAttrNonExistent)
}

// Roles returns the first mailbox of list carrying each special-use role.
func Roles(list []*imap.ListData) map[imap.MailboxAttr]string {
	out := map[imap.MailboxAttr]string{}
	for _, l := range list {
		for _, a := range SpecialUse {
			if _, dup := out[a]; !dup && HasAttr(l, a) {
				out[a] = l.Mailbox
			}
		}
	}
	return out
}

// Delim is the hierarchy delimiter of c, as the proxy determines it
// (LIST "" "", '/' when the server names none).
func (c *IMAPConn) Delim() rune {
	l, err := c.List("", "", nil).Collect()
	if err != nil || len(l) == 0 || l[0].Delim == 0 {
		return '/'
	}
	return l[0].Delim
}

// ConvertName is the old mailbox name with old's hierarchy delimiter
// replaced by new's (INBOX as it is).
func ConvertName(name string, oldDelim, newDelim rune) string {
	if oldDelim == 0 || newDelim == 0 || oldDelim == newDelim || strings.EqualFold(name, "INBOX") {
		return name
	}
	return strings.ReplaceAll(name, string(oldDelim), string(newDelim))
}

// IsAlreadyExists reports whether err is a server's refusal to create a
// mailbox that exists ([ALREADYEXISTS], or a text that says so).
func IsAlreadyExists(err error) bool {
	var e *imap.Error
	return errors.As(err, &e) && (e.Code == imap.ResponseCodeAlreadyExists || strings.Contains(strings.ToLower(e.Text), "already exists"))
}

// SizeLimit is the largest message p takes: max_message_size, lowered by
// c's APPENDLIMIT; 0 when neither says one. c may be nil (no connection).
func (p *Provider) SizeLimit(c *IMAPConn) int64 {
	limit := p.cfg.MaxMessageSize
	if c == nil {
		return max(limit, 0)
	}
	if lim, ok := c.Caps().AppendLimit(); ok && lim != nil && *lim > 0 && (limit <= 0 || int64(*lim) < limit) {
		limit = int64(*lim)
	}
	return max(limit, 0)
}
