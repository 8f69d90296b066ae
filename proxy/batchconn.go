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

func (c *batchConn) flushLocked() {
	if len(c.buf) == 0 || c.err != nil {
		return
	}
	_, c.err = c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
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
	// imapserver clears its write deadline after each response; the held
	// bytes still get one, so a stalled client cannot block the session.
	if len(c.buf) > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(literalWriteTimeout))
		c.flushLocked()
		c.Conn.SetWriteDeadline(time.Time{})
	}
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
