package backend

// Login diagnosis (issue 5, preflight): what a refused or failed upstream
// login means for the operator, read from the provider's answer.
//
// Providers say why they refuse in two ways: an RFC 5530 response code
// ([AUTHENTICATIONFAILED], [UNAVAILABLE], [PRIVACYREQUIRED], [EXPIRED],
// [CONTACTADMIN], ...) and free text, which is all most PEC providers give
// ("Password per le applicazioni richiesta", "two-factor", "OTP"). The code
// decides when it is telling; the text decides otherwise; a NO that says
// nothing more is a refusal of the credentials. [UNAVAILABLE] is a
// temporary failure, not a wrong password, although LoginIMAP reports it as
// ErrAuthFailed (it is a NO to LOGIN).
//
// Nothing here retries: a diagnosis is for a person (no lock-outs).

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/config"
)

// LoginRefusal is the kind of a failed login, as far as the provider's
// answer tells.
type LoginRefusal string

// Login refusals. Their string values appear in reports and CSV files.
const (
	// RefusalCredentials: the credentials were refused, and the answer says
	// no more ([AUTHENTICATIONFAILED], or a bare NO): a wrong password, or
	// no such account there. With master or vault credentials, those are
	// what was refused.
	RefusalCredentials LoginRefusal = "credentials"
	// RefusalSecondFactor: the account has two-factor login and the
	// provider wants an app password (or an OTP) for IMAP.
	RefusalSecondFactor LoginRefusal = "two-factor"
	// RefusalDisabled: IMAP is not enabled for the account (LOGINDISABLED,
	// or the provider says so), or the account is disabled.
	RefusalDisabled LoginRefusal = "protocol-disabled"
	// RefusalExpired: the password expired ([EXPIRED]); the user must set
	// a new one with the provider.
	RefusalExpired LoginRefusal = "password-expired"
	// RefusalContactAdmin: the provider wants its administrator contacted
	// ([CONTACTADMIN]): a blocked or suspended account.
	RefusalContactAdmin LoginRefusal = "contact-admin"
	// RefusalPrivacy: the provider wants an encrypted connection
	// ([PRIVACYREQUIRED]); a configuration problem of pecgate's endpoint.
	RefusalPrivacy LoginRefusal = "tls-required"
	// RefusalUnavailable: a temporary failure ([UNAVAILABLE], an
	// unreachable or busy provider, a broken connection): try again later.
	RefusalUnavailable LoginRefusal = "unavailable"
	// RefusalNoCredential: a provider with auth = "vault" holds no
	// credentials for the user; nothing was sent to the provider.
	RefusalNoCredential LoginRefusal = "no-credential"
	// RefusalOther: any other failure (a certificate error, an unexpected
	// answer).
	RefusalOther LoginRefusal = "other"
)

// LoginProblem is a classified login failure.
type LoginProblem struct {
	// Provider is the provider's name in the configuration.
	Provider string
	// Refusal is the kind of failure.
	Refusal LoginRefusal
	// Code is the provider's response code ("AUTHENTICATIONFAILED"), ""
	// when it gave none or it is unknown.
	Code string
	// Text is the provider's answer or the error, never a password.
	Text string
	// Advice says what to do, for an operator.
	Advice string
}

func (p LoginProblem) String() string {
	s := fmt.Sprintf("%s: %s", p.Provider, p.Refusal)
	if p.Text != "" {
		s += ": " + p.Text
	}
	return s
}

// secondFactorWords and disabledWords are lower-case fragments of provider
// answers that tell the reason (Italian and English wording seen at PEC and
// mail providers: Aruba's "password per le applicazioni", Gmail's
// "Application-specific password required", "Your account is not enabled
// for IMAP use").
var (
	secondFactorWords = []string{
		"app password", "app-password", "application-specific password", "application password",
		"password per le app", "password per applicazioni", "password applicativa", "password dell'applicazione",
		"two-factor", "two factor", "2fa", "2-step", "two-step", "multi-factor", "mfa",
		"doppio fattore", "due fattori", "secondo fattore", "autenticazione forte", "otp", "one-time",
		"web browser", // Gmail: "Please log in via your web browser"
	}
	disabledWords = []string{
		"not enabled for imap", "imap is disabled", "imap disabled", "imap access disabled", "imap access is disabled",
		"imap not enabled", "imap is not enabled", "imap non abilitat", "accesso imap disabilitat", "imap disabilitat",
		"protocol disabled", "protocol not allowed", "protocollo non abilitat", "servizio non abilitat",
		"service not enabled", "not connected", // Microsoft 365: "User is authenticated but not connected."
		"login disabled", // Dovecot's nologin: "[CONTACTADMIN] Login disabled for this user"
		"account disabled", "account is disabled", "account disabilitat", "casella disabilitat", "casella sospes", "account sospes",
	}
)

// ClassifyRefusal classifies a NO answer to LOGIN or AUTHENTICATE from its
// response code and text, and whether the server advertised LOGINDISABLED.
func ClassifyRefusal(code imap.ResponseCode, text string, loginDisabled bool) LoginRefusal {
	if loginDisabled {
		return RefusalDisabled
	}
	switch imap.ResponseCode(strings.ToUpper(string(code))) {
	case imap.ResponseCodeUnavailable:
		return RefusalUnavailable
	case imap.ResponseCodePrivacyRequired:
		return RefusalPrivacy
	case imap.ResponseCodeExpired:
		return RefusalExpired
	}
	low := strings.ToLower(text)
	if containsWord(low, secondFactorWords) {
		return RefusalSecondFactor
	}
	if containsWord(low, disabledWords) {
		return RefusalDisabled
	}
	if strings.EqualFold(string(code), string(imap.ResponseCodeContactAdmin)) {
		return RefusalContactAdmin
	}
	return RefusalCredentials
}

// containsWord reports whether s holds one of words starting at a word
// boundary; words of up to four bytes ("otp", "mfa") must end at one too,
// so "otp" does not match "hotpot" or "otpx". Longer words may be stems
// ("disabilitat" matches "disabilitato" and "disabilitata").
func containsWord(s string, words []string) bool {
	for _, w := range words {
		for i := 0; i < len(s); {
			j := strings.Index(s[i:], w)
			if j < 0 {
				break
			}
			at, end := i+j, i+j+len(w)
			if (at == 0 || !isWordByte(s[at-1])) && (len(w) > 4 || end == len(s) || !isWordByte(s[end])) {
				return true
			}
			i = at + 1
		}
	}
	return false
}

func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_'
}

// DiagnoseLogin classifies err, an error of p's LoginIMAP or LoginUser, and
// says what to do. p must be the provider that returned err.
func (p *Provider) DiagnoseLogin(err error) LoginProblem {
	lp := LoginProblem{Provider: p.Name}
	switch {
	case errors.Is(err, ErrNoCredential):
		lp.Refusal = RefusalNoCredential
		lp.Text = "no vault credentials"
	case errors.Is(err, ErrAuthFailed):
		lp.Code, lp.Text = refusalText(err)
		lp.Refusal = ClassifyRefusal(imap.ResponseCode(lp.Code), lp.Text, false)
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrBusy):
		lp.Refusal = RefusalUnavailable
		lp.Text = causeText(err)
		// A BAD to LOGIN is how some servers say LOGINDISABLED; loginError
		// keeps only its text ("imap: BAD ...").
		if strings.Contains(lp.Text, "LOGINDISABLED") || strings.HasPrefix(lp.Text, "login: ") && strings.Contains(lp.Text, "imap: BAD") {
			lp.Refusal = RefusalDisabled
		}
	default:
		lp.Refusal = RefusalOther
		lp.Text = causeText(err)
	}
	lp.Advice = p.loginAdvice(lp.Refusal)
	return lp
}

// refusalText recovers the response code and text that loginError wrapped
// after ErrAuthFailed ("backend: upstream refused the credentials: [CODE]
// text").
func refusalText(err error) (code, text string) {
	s := err.Error()
	prefix := ErrAuthFailed.Error() + ": "
	if i := strings.Index(s, prefix); i >= 0 {
		s = s[i+len(prefix):]
	}
	// A hint added by Error() is ours, not the provider's.
	var be *Error
	if errors.As(err, &be) && be.Hint != "" {
		s = strings.TrimSuffix(s, " ("+be.Hint+")")
	}
	if strings.HasPrefix(s, "[") {
		if end := strings.IndexByte(s, ']'); end > 0 {
			code, s = s[1:end], strings.TrimSpace(s[end+1:])
			if sp := strings.IndexByte(code, ' '); sp > 0 {
				code = code[:sp]
			}
		}
	}
	return code, s
}

// causeText is err's text without the provider's name prefix.
func causeText(err error) string {
	var be *Error
	if errors.As(err, &be) && be.Err != nil {
		return be.Op + ": " + be.Err.Error()
	}
	return err.Error()
}

// loginAdvice says what an operator does about a refusal on p.
func (p *Provider) loginAdvice(r LoginRefusal) string {
	name := p.Name
	if ps, ok := config.Presets[p.cfg.Preset]; ok {
		name = fmt.Sprintf("%s (%s)", p.Name, ps.Description)
	}
	auth := p.cfg.Auth
	if auth == "" {
		auth = config.AuthPassthrough
	}
	switch r {
	case RefusalCredentials:
		switch auth {
		case config.AuthMaster:
			return fmt.Sprintf("the master login on %s was refused: check master_user %s and master_password_file, and that the account exists there (the provider may not have created it yet)", name, p.cfg.MasterUser)
		case config.AuthVault:
			return fmt.Sprintf("the vault's credentials for %s were refused: import the member's current username and password with pecgate vault import (or let the member set them on the self-service page)", name)
		}
		s := fmt.Sprintf("the member's password was refused by %s: ask the member for the current password, check it by logging in to the provider's webmail", name)
		if p.cfg.AppPasswords {
			s += "; if two-factor login is on for this account, the member must create an app password in the webmail and use it instead"
		}
		return s
	case RefusalSecondFactor:
		return fmt.Sprintf("%s wants an app password for IMAP because the account has two-factor login: the member creates one in the provider's webmail (security settings) and gives it instead of the usual password; do not turn two-factor login off", name)
	case RefusalDisabled:
		return fmt.Sprintf("IMAP access is not enabled for this account at %s (or the account is disabled): the member or the Order's administrator enables IMAP/POP access in the provider's webmail or control panel", name)
	case RefusalExpired:
		return fmt.Sprintf("the password expired at %s: the member sets a new one in the provider's webmail; pecgate then needs the new one", name)
	case RefusalContactAdmin:
		return fmt.Sprintf("%s says to contact its administrator: the account is probably blocked or suspended; open a ticket with the provider", name)
	case RefusalPrivacy:
		return fmt.Sprintf("%s refuses logins without TLS: use imaps:// (or imap:// with STARTTLS) in providers.%s.imap", name, p.Name)
	case RefusalUnavailable:
		return fmt.Sprintf("%s could not be reached or was busy: check the network and the provider's status, then run preflight again", name)
	case RefusalNoCredential:
		return fmt.Sprintf("%s uses vault credentials and the vault holds none for this member: import them with pecgate vault import", name)
	}
	return fmt.Sprintf("the login to %s failed: read the error; for a certificate error check providers.%s.ca", name, p.Name)
}
