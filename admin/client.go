package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client calls a running gateway's admin API.
type Client struct {
	// BaseURL is "http://HOST:PORT", without a trailing slash.
	BaseURL string
	// Token is the bearer token.
	Token string
	// HTTP does the requests. nil means a client with a 30s timeout.
	HTTP *http.Client
}

// NewClient returns a Client for the admin listen address addr (the
// config's [server] admin, e.g. "127.0.0.1:8080"). An address that
// listens on every interface (":8080", "0.0.0.0:8080", "[::]:8080") is
// reached on the loopback address.
func NewClient(addr, token string) (*Client, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("admin address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return &Client{BaseURL: "http://" + net.JoinHostPort(host, port), Token: token}, nil
}

// Domains returns every served domain.
func (c *Client) Domains(ctx context.Context) ([]Domain, error) {
	var list DomainList
	if err := c.do(ctx, http.MethodGet, "/api/v1/domains", nil, &list); err != nil {
		return nil, err
	}
	return list.Domains, nil
}

// Domain returns one domain with its user overrides.
func (c *Client) Domain(ctx context.Context, name string) (*Domain, error) {
	d := new(Domain)
	if err := c.do(ctx, http.MethodGet, "/api/v1/domains/"+url.PathEscape(name), nil, d); err != nil {
		return nil, err
	}
	return d, nil
}

// User returns a user's route and progress.
func (c *Client) User(ctx context.Context, user string) (*User, error) {
	u := new(User)
	if err := c.do(ctx, http.MethodGet, "/api/v1/users/"+url.PathEscape(user), nil, u); err != nil {
		return nil, err
	}
	return u, nil
}

// SetDomain changes a domain's state.
func (c *Client) SetDomain(ctx context.Context, name, state string, force bool) (*ChangeResult, error) {
	res := new(ChangeResult)
	if err := c.do(ctx, http.MethodPut, "/api/v1/domains/"+url.PathEscape(name), StateRequest{State: &state, Force: force}, res); err != nil {
		return nil, err
	}
	return res, nil
}

// SetUser changes a user's own state; "" removes it.
func (c *Client) SetUser(ctx context.Context, user, state string, force bool) (*ChangeResult, error) {
	res := new(ChangeResult)
	if err := c.do(ctx, http.MethodPut, "/api/v1/users/"+url.PathEscape(user), StateRequest{State: &state, Force: force}, res); err != nil {
		return nil, err
	}
	return res, nil
}

// do sends body (JSON) and decodes a 2xx answer into out; any other answer
// is returned as an *Error.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("cannot reach the admin API at %s (is pecgate serve running?): %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read the answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
		}
		e.Status = resp.StatusCode
		return e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the answer of %s %s: %w", method, path, err)
	}
	return nil
}
