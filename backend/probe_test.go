package backend

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/config"
)

// TestClassifyRefusal: providers' answers to a refused LOGIN, as servers
// send them (Dovecot's own, RFC 5530 codes, and the wording of mail and
// PEC providers), each with the refusal an operator must be told.
func TestClassifyRefusal(t *testing.T) {
	for _, tc := range []struct {
		name          string
		code          imap.ResponseCode
		text          string
		loginDisabled bool
		want          LoginRefusal
	}{
		{"dovecot wrong password", "AUTHENTICATIONFAILED", "Authentication failed.", false, RefusalCredentials},
		{"bare NO", "", "LOGIN failed.", false, RefusalCredentials},
		{"italian wrong password", "", "Credenziali non valide", false, RefusalCredentials},
		{"unavailable code", "UNAVAILABLE", "Temporary authentication failure. [host:2026-11-23 18:00:00]", false, RefusalUnavailable},
		{"unavailable lower case", "unavailable", "try later", false, RefusalUnavailable},
		{"privacy required", "PRIVACYREQUIRED", "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.", false, RefusalPrivacy},
		{"expired", "EXPIRED", "Password expired", false, RefusalExpired},
		{"contact admin", "CONTACTADMIN", "Account locked", false, RefusalContactAdmin},
		{"contact admin about imap", "CONTACTADMIN", "IMAP access is disabled for this account", false, RefusalDisabled},
		{"logindisabled capability", "", "Plaintext authentication disallowed", true, RefusalDisabled},
		{"aruba app password", "AUTHENTICATIONFAILED", "Autenticazione fallita: per l'accesso da client è necessaria una password per le app", false, RefusalSecondFactor},
		{"italian two factor", "", "Accesso negato: autenticazione a due fattori attiva", false, RefusalSecondFactor},
		{"italian OTP", "", "Codice OTP richiesto", false, RefusalSecondFactor},
		{"gmail app password", "ALERT", "Application-specific password required: https://support.google.com/accounts/answer/185833 (Failure)", false, RefusalSecondFactor},
		{"gmail web login", "ALERT", "Please log in via your web browser: https://support.google.com/mail/accounts/answer/78754 (Failure)", false, RefusalSecondFactor},
		{"two-factor english", "AUTHENTICATIONFAILED", "Two-factor authentication is enabled; use an app password", false, RefusalSecondFactor},
		{"gmail imap disabled", "ALERT", "Your account is not enabled for IMAP use. Please visit your Gmail settings page and enable your account for IMAP access. (Failure)", false, RefusalDisabled},
		{"microsoft not connected", "", "User is authenticated but not connected.", false, RefusalDisabled},
		{"italian imap disabled", "", "Accesso IMAP disabilitato per questa casella", false, RefusalDisabled},
		{"italian service not enabled", "", "Servizio non abilitato", false, RefusalDisabled},
		{"dovecot nologin", "CONTACTADMIN", "Login disabled for this user", false, RefusalDisabled},
		{"dovecot nologin with a reason", "CONTACTADMIN", "Two-factor-authentication-is-on,-use-an-app-password", false, RefusalSecondFactor},
		{"suspended mailbox", "", "Casella sospesa", false, RefusalDisabled},
		{"otp inside a word is not otp", "", "hotpot failed", false, RefusalCredentials},
		{"mfa as a word", "", "MFA required", false, RefusalSecondFactor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ClassifyRefusal(tc.code, tc.text, tc.loginDisabled); got != tc.want {
				t.Errorf("ClassifyRefusal(%q, %q, %v) = %q, want %q", tc.code, tc.text, tc.loginDisabled, got, tc.want)
			}
		})
	}
}

// TestDiagnoseLogin: the errors LoginUser returns are classified with the
// provider's code and text recovered, and the advice names the provider
// and what to do.
func TestDiagnoseLogin(t *testing.T) {
	aruba := &Provider{Name: "aruba", cfg: config.Provider{Preset: "aruba", AppPasswords: true, Auth: config.AuthPassthrough}}
	master := &Provider{Name: "nuovo", cfg: config.Provider{Auth: config.AuthMaster, MasterUser: "admin"}}
	vault := &Provider{Name: "infocert", cfg: config.Provider{Preset: "infocert", Auth: config.AuthVault}}
	for _, tc := range []struct {
		name        string
		p           *Provider
		err         error
		want        LoginRefusal
		code, text  string
		adviceWants []string
	}{
		{"aruba wrong password", aruba,
			aruba.loginError(&imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "Authentication failed."}),
			RefusalCredentials, "", "Authentication failed.", []string{"Aruba PEC", "app password", "current password"}},
		{"aruba app password wording", aruba,
			aruba.loginError(&imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "Serve una password per le app"}),
			RefusalSecondFactor, "", "Serve una password per le app", []string{"Aruba PEC", "app password", "webmail"}},
		{"unavailable code", aruba,
			aruba.loginError(&imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable, Text: "Temporary failure"}),
			RefusalUnavailable, "UNAVAILABLE", "Temporary failure", []string{"run preflight again"}},
		{"master refused", master,
			master.masterError(master.loginError(&imap.Error{Type: imap.StatusResponseTypeNo, Text: "Authentication failed."}), "a@b.example"),
			RefusalCredentials, "", "Authentication failed.", []string{"master_user admin", "exists there"}},
		{"vault refused", vault,
			vault.vaultError(vault.loginError(&imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeContactAdmin, Text: "Utenza bloccata"}), "a@b.example"),
			RefusalContactAdmin, "CONTACTADMIN", "Utenza bloccata", []string{"InfoCert", "ticket"}},
		{"vault without credentials", vault,
			&Error{Provider: "infocert", Op: "vault", Permanent: true, Err: fmt.Errorf("wrapped: %w", ErrNoCredential)},
			RefusalNoCredential, "", "no vault credentials", []string{"pecgate vault import"}},
		{"BAD to LOGIN", aruba,
			aruba.loginError(&imap.Error{Type: imap.StatusResponseTypeBad, Text: "LOGIN disabled"}),
			RefusalDisabled, "", "login: backend: provider unavailable: imap: BAD LOGIN disabled", []string{"IMAP access is not enabled"}},
		{"dial failure", aruba,
			&Error{Provider: "aruba", Op: "dial", Err: fmt.Errorf("%w: connection refused", ErrUnavailable)},
			RefusalUnavailable, "", "dial: backend: provider unavailable: connection refused", []string{"could not be reached"}},
		{"certificate", aruba,
			&Error{Provider: "aruba", Op: "tls", Permanent: true, Err: errors.New("x509: certificate signed by unknown authority")},
			RefusalOther, "", "tls: x509: certificate signed by unknown authority", []string{"providers.aruba.ca"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lp := tc.p.DiagnoseLogin(tc.err)
			if lp.Refusal != tc.want || lp.Code != tc.code || lp.Text != tc.text || lp.Provider != tc.p.Name {
				t.Errorf("DiagnoseLogin(%v) = %+v; want refusal %q, code %q, text %q", tc.err, lp, tc.want, tc.code, tc.text)
			}
			for _, w := range tc.adviceWants {
				if !strings.Contains(lp.Advice, w) {
					t.Errorf("advice %q lacks %q", lp.Advice, w)
				}
			}
		})
	}
}
