package config

import (
	"maps"
	"slices"
	"strings"
)

// Preset is what pecgate knows about a PEC provider. A provider that names a
// preset (`preset = "aruba"`) gets from it every field it leaves empty; the
// values written in the file win.
type Preset struct {
	// Description names the service for people.
	Description string
	// IMAP and SMTP fill Provider.IMAP and Provider.SMTP when empty.
	IMAP string
	SMTP string
	// AppPasswords fills Provider.AppPasswords when the file does not set
	// app_passwords.
	AppPasswords bool
	// MaxMessageSize fills Provider.MaxMessageSize when zero. Zero here
	// means unknown: presets only carry limits that are certain.
	MaxMessageSize int64
	// Notes are hints for operators (how users log in, known quirks).
	Notes string
}

// Presets are the known PEC providers by preset name. Their endpoints are
// the providers' public client settings; a preset never sets Auth, since the
// strategy depends on the contract the Order has with the provider.
var Presets = map[string]Preset{
	"aruba": {
		Description:  "Aruba PEC",
		IMAP:         "imaps://imaps.pec.aruba.it:993",
		SMTP:         "smtps://smtps.pec.aruba.it:465",
		AppPasswords: true,
		Notes:        "Mailboxes with two-factor login accept IMAP and SMTP logins only with an app password created in the webmail.",
	},
	"infocert": {
		Description: "InfoCert Legalmail",
		IMAP:        "imaps://mbox.cert.legalmail.it:993",
		SMTP:        "smtps://sendm.cert.legalmail.it:465",
		Notes:       "Users may log in with a User ID rather than the address; use auth = \"vault\" to hold each user's credentials.",
	},
	"namirial": {
		Description: "Namirial (sicurezzapostale.it)",
		IMAP:        "imaps://imaps.sicurezzapostale.it:993",
		SMTP:        "smtps://smtps.sicurezzapostale.it:465",
	},
	"poste": {
		Description: "Poste Italiane (postecert.it)",
		IMAP:        "imaps://mail.postecert.it:993",
		SMTP:        "smtps://mail.postecert.it:465",
	},
	"register": {
		Description: "Register.it PEC",
		IMAP:        "imaps://imap.pec-email.com:993",
		SMTP:        "smtps://smtp.pec-email.com:465",
	},
	"actalis": {
		Description: "Actalis PEC",
		IMAP:        "imaps://imap.pec.actalis.it:993",
		SMTP:        "smtps://smtp.pec.actalis.it:465",
	},
}

// PresetNames returns the names of Presets, sorted.
func PresetNames() []string { return slices.Sorted(maps.Keys(Presets)) }

// presets fills the providers' empty fields from their presets.
func (p *parser) presets(c *Config) {
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		pr := c.Providers[name]
		if pr.Preset == "" {
			continue
		}
		ps, ok := Presets[pr.Preset]
		if !ok {
			p.errorf(key("providers", name, "preset"), "unknown preset %q; known presets: %s", pr.Preset, strings.Join(PresetNames(), ", "))
			continue
		}
		if pr.IMAP == "" {
			pr.IMAP = ps.IMAP
		}
		if pr.SMTP == "" {
			pr.SMTP = ps.SMTP
		}
		if !p.md.IsDefined("providers", name, "app_passwords") {
			pr.AppPasswords = ps.AppPasswords
		}
		if pr.MaxMessageSize == 0 {
			pr.MaxMessageSize = ps.MaxMessageSize
		}
	}
}
