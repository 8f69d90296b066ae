package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The hot backup of the embedded store: GET /api/v1/backup streams a
// consistent copy of the store file while the gateway keeps serving
// (`pecgate backup FILE` calls it).

// Backuper is a store that can write a consistent copy of itself while in
// use (store/bolt.DB). GET /api/v1/backup answers 501 when Options.Store
// is not one.
type Backuper interface {
	// Backup writes a complete copy of the store, as one file that the
	// store can open, to w.
	Backup(w io.Writer) error
}

// BackupContentType is the media type of GET /api/v1/backup's body.
const BackupContentType = "application/octet-stream"

// routeBackup registers GET /api/v1/backup on the token-protected mux.
func (s *server) routeBackup(api *http.ServeMux) {
	api.Handle("GET /api/v1/backup", s.serve(s.getBackup))
	api.Handle("/api/v1/backup", s.notAllowed("GET"))
}

// getBackup streams the store. An error before the first byte is answered
// as a JSON Error; after it, the connection is cut, so the client sees a
// truncated body (an error) rather than a short file that looks whole.
func (s *server) getBackup(w http.ResponseWriter, r *http.Request) error {
	b, ok := s.Store.(Backuper)
	if !ok {
		return errorf(http.StatusNotImplemented, "this gateway's store cannot be copied through the admin API (a PostgreSQL store is backed up with pg_dump)")
	}
	// The copy may take longer than the server's write timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", BackupContentType)
	w.Header().Set("Content-Disposition", `attachment; filename="pecgate-`+time.Now().UTC().Format("20060102T150405Z")+`.db"`)
	w.Header().Set("Cache-Control", "no-store")
	cw := &countWriter{w: w}
	start := time.Now()
	if err := b.Backup(cw); err != nil {
		if cw.n == 0 {
			return fmt.Errorf("backup: %w", err)
		}
		s.Log.Error("admin backup failed mid-stream", "remote", r.RemoteAddr, "bytes", cw.n, "err", err)
		panic(http.ErrAbortHandler)
	}
	s.Log.Info("admin backup", "remote", r.RemoteAddr, "bytes", cw.n, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Backup downloads a copy of the running gateway's store into w and
// returns its size. It has no time limit of its own (ctx bounds it, and
// c.HTTP's Timeout when c.HTTP is set); a body cut short is an error.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/api/v1/backup", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{}
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("cannot reach the admin API at %s (is pecgate serve running?): %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
		}
		e.Status = resp.StatusCode
		return 0, e
	}
	if ct := resp.Header.Get("Content-Type"); ct != BackupContentType {
		return 0, fmt.Errorf("GET /api/v1/backup answered %q, want %s (is %s a pecgate admin API?)", ct, BackupContentType, c.BaseURL)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("backup cut short after %d bytes: %w", n, err)
	}
	return n, nil
}
