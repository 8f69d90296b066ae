package proxy

import (
	"crypto/tls"
	"net"
	gosync "sync"
	"time"
)

// batchConn coalesces the writes of one command's many responses into
// fewer TCP writes. imapserver flushes its buffer after every response
// (each FETCH line becomes its own TLS record and write(2)); while a
// session relays a FETCH it turns batching on, and the bytes go out in
// 64 KiB writes and at the end of the command. It sits under TLS, so it
// works for implicit TLS and after STARTTLS alike, and imapserver still
// sees a *tls.Conn.
type batchConn struct {
	net.Conn
	mu       gosync.Mutex
	buf      []byte
	batching bool
	err      error
}

const batchSize = 64 << 10

// literalWriteTimeout matches imapserver's for a literal (conn.go).
const literalWriteTimeout = 5 * time.Minute

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.batching {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= batchSize {
		c.flushLocked()
	}
	return len(p), c.err
}

// flushLocked writes what is held, under a write deadline of its own:
// imapserver's per-response deadlines are skipped while batching.
func (c *batchConn) flushLocked() {
	if len(c.buf) == 0 || c.err != nil {
		return
	}
	c.Conn.SetWriteDeadline(time.Now().Add(literalWriteTimeout))
	_, c.err = c.Conn.Write(c.buf)
	c.Conn.SetWriteDeadline(time.Time{})
	c.buf = c.buf[:0]
}

// SetWriteDeadline passes through, except while batching: imapserver sets
// and clears a deadline around every response (two timer updates per
// FETCH line), but held bytes reach the network only in flushLocked,
// which bounds each write itself.
func (c *batchConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.batching {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// begin starts coalescing; end writes what is held and stops.
func (c *batchConn) begin() {
	c.mu.Lock()
	c.batching = true
	c.mu.Unlock()
}

func (c *batchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The held bytes get a deadline (flushLocked), so a stalled client
	// cannot block the session.
	c.flushLocked()
	c.batching = false
	if cap(c.buf) > 4*batchSize {
		c.buf = nil
	}
	return c.err
}

// batchListener wraps accepted connections in batchConn.
type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &batchConn{Conn: c}, nil
}

// batchOf finds the batchConn under a client connection (under TLS), or nil.
func batchOf(c net.Conn) *batchConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	bc, _ := c.(*batchConn)
	return bc
}
