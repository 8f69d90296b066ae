package preflight

import (
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// CSVHeader are the columns of WriteCSV, one row per member:
//
//	user            the member's address
//	state           the member's effective state (old, migrating, new)
//	verdict         ok, warning or blocked
//	old_login       ok, refused or not checked
//	new_login       ok, refused or not checked
//	folders         selectable folders on old
//	messages        messages on old
//	bytes           bytes on old (STATUS SIZE or the sum of RFC822.SIZE)
//	quota_limit     new's quota in bytes, empty when unknown
//	quota_used      new's usage in bytes, empty when unknown
//	quota_source    GETQUOTAROOT or quota_bytes, empty when unknown
//	size_limit      new's message size limit in bytes, empty when unknown
//	oversize        messages over the limit: "FOLDER UID SIZE" joined by "; "
//	folders_created folders created on new (the migration would have)
//	folders_refused "OLD -> NEW: ANSWER" joined by "; "
//	problems        what is wrong, joined by " | "
//	advice          what to do, in the same order, joined by " | "
var CSVHeader = []string{"user", "state", "verdict", "old_login", "new_login", "folders", "messages", "bytes",
	"quota_limit", "quota_used", "quota_source", "size_limit", "oversize", "folders_created", "folders_refused",
	"problems", "advice"}

// WriteCSV writes the report, one row per member, after CSVHeader. A cell
// that a spreadsheet would take for a formula (starting with =, +, -, @:
// folder names and answers come from mailboxes and servers) is written
// with a leading '.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	opt := func(known bool, n int64) string {
		if !known {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	for _, m := range r.Members {
		var big, refused, problems, advice []string
		for _, o := range m.Oversize {
			big = append(big, fmt.Sprintf("%s %d %d", o.Folder, o.UID, o.Size))
		}
		for _, f := range m.FolderRefusals {
			refused = append(refused, fmt.Sprintf("%s -> %s: %s", f.Folder, f.NewFolder, f.Reason))
		}
		for _, p := range m.Problems {
			problems = append(problems, p.Message)
			advice = append(advice, p.Advice)
		}
		q := m.QuotaSource != ""
		rec := []string{m.User, m.State, m.Verdict(), m.OldLogin, m.NewLogin,
			strconv.Itoa(m.Folders), strconv.FormatInt(m.Messages, 10), strconv.FormatInt(m.Bytes, 10),
			opt(q, m.QuotaLimit), opt(q, m.QuotaUsed), m.QuotaSource, opt(m.SizeLimit > 0, m.SizeLimit),
			strings.Join(big, "; "), strings.Join(m.FoldersCreated, "; "), strings.Join(refused, "; "),
			strings.Join(problems, " | "), strings.Join(advice, " | ")}
		for i := range rec {
			rec[i] = cell(rec[i])
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// cell defuses a value a spreadsheet would run as a formula.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}
