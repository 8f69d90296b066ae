package demo

// The demo's story (issue 5, item 6): what makes `pecgate demo` more than a
// proxy in front of two servers.
//
//   - Volume: besides the PEC fixtures, every member has ArchiveSize
//     generated receipts in ArchiveFolder, so a copy takes long enough to
//     watch (the old provider's copy_messages_per_second is Options.CopyRate).
//   - The new provider uses vault credentials, as a provider the Order buys
//     mailboxes from in bulk does: the demo imports them into the store
//     before the gateway starts, for every member but the ones whose
//     User.NoVault is set, who must set theirs on the member page (/me).
//   - Phones: the members whose User.Phone is set have a simulated mail
//     client that logs in through the gateway at once and then every
//     PhoneInterval, as a phone checking mail does. A login is what gives
//     the back-fill a passthrough provider's password, so their mail copies
//     as soon as the domain is migrating; the others wait for their first
//     login, as real members do, and the status page says so.

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// ArchiveFolder is the folder of generated receipts every member has on old.
const ArchiveFolder = "Archivio 2024"

// ArchiveSize is how many generated receipts each member has in ArchiveFolder.
const ArchiveSize = 150

// DefaultCopyRate is the old provider's copy_messages_per_second in the
// demo: slow enough to watch the status page fill.
const DefaultCopyRate = 8

// PhoneInterval is how often a simulated phone logs in again.
const PhoneInterval = time.Minute

// Files the demo writes into Demo.Dir besides the certificates.
const (
	ConfigFile   = "pecgate.toml" // the gateway's configuration, for `pecgate route -config`
	TokenFile    = "admin.token"  // the admin API's bearer token
	VaultKeyFile = "vault.key"    // the vault's key
)

// archive returns ArchiveSize PEC acceptance receipts for address, dated
// one a day through 2024, with distinct Message-IDs.
func archive(address string) []Fixture {
	local, _, _ := strings.Cut(address, "@")
	start := time.Date(2024, 1, 2, 9, 0, 0, 0, time.FixedZone("CET", 3600))
	fx := make([]Fixture, 0, ArchiveSize)
	for i := range ArchiveSize {
		date := start.Add(time.Duration(i) * 58 * time.Hour)
		id := fmt.Sprintf("opec%d.%s.%d.1.%d@pec.vecchio.test", 21000+i, date.Format("20060102150405"), 4000+i, i%90)
		subject := fmt.Sprintf("ACCETTAZIONE: Pratica n. %d/2024 - %s", 1000+i, local)
		body := strings.Join([]string{
			"Return-Path: <posta-certificata@pec.vecchio.test>",
			"From: \"per conto di: " + address + "\" <posta-certificata@pec.vecchio.test>",
			"To: " + address,
			"Subject: " + subject,
			"Date: " + date.Format(time.RFC1123Z),
			"Message-ID: <" + id + ">",
			"X-Ricevuta: accettazione",
			"X-Trasporto: posta-certificata",
			"MIME-Version: 1.0",
			"Content-Type: text/plain; charset=utf-8",
			"Content-Transfer-Encoding: 8bit",
			"",
			"Ricevuta di accettazione",
			"",
			"Il giorno " + date.Format("02/01/2006") + " alle ore " + date.Format("15:04:05") + " (+0100) il messaggio",
			"\"Pratica n. " + strconv.Itoa(1000+i) + "/2024\" proveniente da \"" + address + "\"",
			"ed indirizzato a \"protocollo@pec.ente.example\"",
			"è stato accettato dal sistema ed inoltrato.",
			"Identificativo messaggio: " + id,
			"",
		}, "\r\n")
		flags := []imap.Flag{imap.FlagSeen}
		if i%7 == 3 {
			flags = append(flags, imap.FlagFlagged)
		}
		fx = append(fx, Fixture{
			File: fmt.Sprintf("archivio-%03d.eml", i+1), Kind: "accettazione", MessageID: "<" + id + ">",
			Folder: ArchiveFolder, Flags: flags, InternalDate: date, Body: []byte(body),
		})
	}
	return fx
}

// randomToken returns 32 random bytes in hex.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// writeSecrets writes the admin token and the vault key into d.Dir.
func (d *Demo) writeSecrets() error {
	d.Token = randomToken()
	d.TokenFile = filepath.Join(d.Dir, TokenFile)
	if err := os.WriteFile(d.TokenFile, []byte(d.Token+"\n"), 0o600); err != nil {
		return err
	}
	d.vaultKeyFile = filepath.Join(d.Dir, VaultKeyFile)
	return os.WriteFile(d.vaultKeyFile, []byte(randomToken()+"\n"), 0o600)
}

// importVault stores the new provider's credentials of every member but
// those with NoVault, as `pecgate vault import` would, before the gateway
// opens the store.
func (d *Demo) importVault(ctx context.Context) error {
	v, err := store.OpenVault(d.vaultKeyFile)
	if err != nil {
		return err
	}
	st, err := bolt.Open(d.Config.Store.Path)
	if err != nil {
		return err
	}
	defer st.Close()
	return st.Update(ctx, func(tx store.Tx) error {
		for _, u := range Users {
			if u.NoVault {
				continue
			}
			if err := v.Put(tx, NewProvider, u.Address, u.Address, u.NewPassword); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeConfig writes d.Config as TOML with the listen addresses the
// gateway bound, for the commands that reach the running gateway
// (`pecgate route -config DIR/pecgate.toml ...`).
func (d *Demo) writeConfig() error {
	c := *d.Config
	for name, addr := range d.Addrs {
		a := addr
		switch name {
		case "imaps":
			c.Server.IMAPS = &a
		case "imap":
			c.Server.IMAP = &a
		case "smtps":
			c.Server.SMTPS = &a
		case "submission":
			c.Server.Submission = &a
		case "admin":
			c.Server.Admin = &a
		}
	}
	d.ConfigFile = filepath.Join(d.Dir, ConfigFile)
	f, err := os.OpenFile(d.ConfigFile, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "# Written by `pecgate demo`; valid while the demo runs.\n\n")
	if err := toml.NewEncoder(f).Encode(&c); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// startPhones starts a simulated mail client for every member with Phone
// set: it logs in through the gateway's IMAPS listener at once and then
// every PhoneInterval, until ctx ends; it returns after the first logins.
// Close waits for them.
func (d *Demo) startPhones(ctx context.Context, log *slog.Logger) {
	addr := d.Addrs["imaps"]
	if addr == "" {
		return
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.gw.CertPEM)
	tc := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	// The first visits are over before startPhones returns, so that the
	// gateway knows these members' passwords by the time the demo tells
	// what to try: the story does not depend on who types faster.
	var first gosync.WaitGroup
	for _, u := range Users {
		if !u.Phone {
			continue
		}
		d.phones.Add(1)
		first.Add(1)
		go func() {
			defer d.phones.Done()
			t := time.NewTicker(PhoneInterval)
			defer t.Stop()
			for i := 0; ; i++ {
				if err := checkMail(ctx, addr, tc, u.Address, u.OldPassword); err != nil && ctx.Err() == nil {
					log.Warn("demo phone: check failed", "user", u.Address, "err", err)
				}
				if i == 0 {
					first.Done()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	first.Wait()
}

// checkMail is one visit of a phone: LOGIN, SELECT INBOX, LOGOUT.
func checkMail(ctx context.Context, addr string, tc *tls.Config, user, password string) error {
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", addr, tc)
	if err != nil {
		return err
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	// go-imap has no contexts: close the connection when ctx ends.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(time.Minute))
	if err := c.Login(user, password).Wait(); err != nil {
		return err
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// providerConfigs returns the demo's provider configurations: old with the
// members' own passwords and a copy rate, new with vault credentials.
func (d *Demo) providerConfigs(copyRate float64) map[string]*config.Provider {
	provider := func(p *Provider, auth string) *config.Provider {
		return &config.Provider{
			Name:            p.Name,
			IMAP:            "imaps://" + p.IMAPAddr,
			SMTP:            "smtps://" + p.SMTPAddr,
			Auth:            auth,
			CA:              p.CAFile,
			MaxConnections:  config.DefaultMaxConnections,
			ConnectTimeout:  config.Duration(config.DefaultConnectTimeout),
			LoginTimeout:    config.Duration(config.DefaultLoginTimeout),
			MaxMessageSize:  providerMaxMessageSize,
			CopyConnections: 2,
		}
	}
	old := provider(d.Old, config.AuthPassthrough)
	old.CopyMessagesPerSecond = copyRate
	return map[string]*config.Provider{
		OldProvider: old,
		NewProvider: provider(d.New, config.AuthVault),
	}
}

// writeStory prints the walk through a migration: status page, flip to
// migrating, member page, flip to new.
func (d *Demo) writeStory(p func(format string, args ...any)) {
	admin := d.Addrs["admin"]
	if admin == "" {
		return
	}
	_, port, _ := net.SplitHostPort(admin)
	page := "http://localhost:" + port
	route := "pecgate route -config " + shellQuote(d.ConfigFile)
	var phones, waiting, noVault []string
	var novaultUser User
	for _, u := range Users {
		if u.Phone {
			phones = append(phones, u.Address)
		} else {
			waiting = append(waiting, u.Address)
		}
		if u.NoVault {
			noVault = append(noVault, u.Address)
			novaultUser = u
		}
	}
	p("A migration, step by step (in another terminal; \"pecgate\" is `go run ./cmd/pecgate` without a binary):")
	p("  1. Open the status page %s/ and log in with the admin token", page)
	p("       %s", d.Token)
	p("     (also in %s).", d.TokenFile)
	p("  2. Start the move; the gateway copies old to new in the background:")
	p("       %s -y %s %s", route, Domain, config.StateMigrating)
	p("     Simulated phones log in %s every minute, and a login is what", strings.Join(phones, ", "))
	p("     gives the gateway their old password: watch their mail copy on the page.")
	if len(waiting) > 0 {
		p("     %s has not logged in: her copy waits for her first login, the page says so.", strings.Join(waiting, ", "))
	}
	if len(noVault) > 0 {
		p("  3. The new provider has no credentials for %s: open the member page", strings.Join(noVault, ", "))
		p("       %s/me", page)
		p("     log in as %s with %s and set the new provider's password %s.", novaultUser.Address, novaultUser.OldPassword, novaultUser.NewPassword)
	}
	p("  4. Follow it from the command line:")
	p("       pecgate status -config %s %s", shellQuote(d.ConfigFile), Domain)
	p("  5. Finish the move (refused while mail is left behind, with the count):")
	p("       %s -y %s %s", route, Domain, config.StateNew)
	p("     Clients keep their folders, UIDs and passwords throughout.")
	p("")
}
