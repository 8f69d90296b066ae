package admin

import (
	"encoding/json"
	"fmt"
)

// The JSON documents of the API, shared by the handlers and Client. Field
// names are part of the contract (DESIGN.md): they may grow, not change.

// Error is the one error document every failing call answers with, and
// the error Client returns for one.
type Error struct {
	// Status is the HTTP status; not in the document.
	Status int `json:"-"`
	// Message says what went wrong, for an operator.
	Message string `json:"error"`
	// Uncopied, on a 409, is how many messages are not yet in new when that
	// is why the change was refused; absent (0) otherwise.
	Uncopied int `json:"uncopied,omitempty"`
	// Forceable is true on a 409 that the same call with "force": true
	// would get through.
	Forceable bool `json:"forceable,omitempty"`
}

func (e *Error) Error() string {
	return e.Message
}

func errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// Domain is a served domain: GET /api/v1/domains lists them, GET
// /api/v1/domains/{domain} returns one with its user overrides.
type Domain struct {
	Name string `json:"name"`
	// State is the effective state; ConfigState the config file's.
	State       string `json:"state"`
	ConfigState string `json:"config_state"`
	// Overridden is true when a run-time change (route) sets State.
	Overridden bool `json:"overridden"`
	// Old and New are provider names; New is absent when the domain has none.
	Old string `json:"old"`
	New string `json:"new,omitempty"`
	// UserOverrides is how many users of the domain have their own state.
	UserOverrides int `json:"user_overrides"`
	// Users lists them (GET /api/v1/domains/{domain} only).
	Users []UserOverride `json:"users,omitempty"`
	// Progress is the domain's copy progress when the gateway keeps one
	// (Options.Store), absent otherwise.
	Progress *DomainProgress `json:"progress,omitempty"`
}

// UserOverride is one user with its own state.
type UserOverride struct {
	User  string `json:"user"`
	State string `json:"state"`
}

// DomainList is the answer to GET /api/v1/domains.
type DomainList struct {
	Domains []Domain `json:"domains"`
}

// User is a user's route: GET /api/v1/users/{user}.
type User struct {
	User   string `json:"user"` // lower-cased
	Domain string `json:"domain"`
	// State is the user's effective state; DomainState its domain's.
	State       string `json:"state"`
	DomainState string `json:"domain_state"`
	// Overridden says where State comes from: "" the config file, "domain"
	// the domain's run-time state, "user" the user's own.
	Overridden string `json:"overridden,omitempty"`
	Old        string `json:"old"`
	New        string `json:"new,omitempty"`
	// Progress is the user's copy progress when the gateway keeps one
	// (Options.Progress; a UserProgress when read from Options.Store, see
	// ProgressDoc), absent otherwise.
	Progress json.RawMessage `json:"progress,omitempty"`
}

// StateRequest is the body of PUT /api/v1/domains/{domain} and PUT
// /api/v1/users/{user}.
type StateRequest struct {
	// State is old, migrating or new; for a user, "" removes the user's own
	// state (it follows its domain again). Required.
	State *string `json:"state"`
	// Force lifts the transition rules (old -> new, new -> old, migrating ->
	// new while messages are not yet in new).
	Force bool `json:"force,omitempty"`
}

// ChangeResult is the answer to a successful PUT.
type ChangeResult struct {
	Kind string `json:"kind"` // "domain" or "user"
	Name string `json:"name"`
	// From and To are the effective states before and after; equal when
	// nothing moved.
	From string `json:"from"`
	To   string `json:"to"`
	// Cleared is true when a user's own state was removed.
	Cleared bool `json:"cleared,omitempty"`
	// Forced is true when force lifted a rule that would have refused the
	// change.
	Forced bool `json:"forced,omitempty"`
	// Uncopied, for a forced change to new, is how many messages were not
	// yet in new; -1 when nobody could count them; absent otherwise.
	Uncopied int `json:"uncopied,omitempty"`
	// Domain or User is the state after the change.
	Domain *Domain `json:"domain,omitempty"`
	User   *User   `json:"user,omitempty"`
}
