package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
)

// RawPoster POSTs to one URL over plain HTTP/1.1 keep-alive connections:
// each request is one write of prebuilt bytes, each response is read with
// a minimal parser (status line, Content-Length, body discarded). It
// spends a fraction of the CPU per request that net/http's client does
// (two goroutines and a transport per connection, header maps, …), which
// on a 2-core machine shared with the server is CPU the server does not
// get: the figures of a load sent this way are nearer to the server's own.
// It speaks only what an HTTP/1.1 server answers a POST with (no 1xx,
// no TLS). Safe for concurrent use: a connection serves one request
// at a time; idle ones are kept for reuse, new ones are dialled on demand.
type RawPoster struct {
	addr string
	head []byte // request line and headers, up to "Content-Length: "
	want int    // status every answer must have

	mu   sync.Mutex
	idle []*rawConn
	all  map[*rawConn]struct{}
}

type rawConn struct {
	c   net.Conn
	r   *bufio.Reader
	buf []byte // request being written
}

// NewRawPoster returns a poster of bodies to rawURL (http only) with the
// given Authorization and Content-Type headers; every answer must be
// status want.
func NewRawPoster(rawURL, auth, contentType string, want int) (*RawPoster, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("raw poster: %q: want an http://host:port/path URL", rawURL)
	}
	var h bytes.Buffer
	fmt.Fprintf(&h, "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: attestd-loadgen\r\nContent-Type: %s\r\n", u.RequestURI(), u.Host, contentType)
	if auth != "" {
		fmt.Fprintf(&h, "Authorization: %s\r\n", auth)
	}
	h.WriteString("Content-Length: ")
	return &RawPoster{addr: u.Host, head: h.Bytes(), want: want, all: map[*rawConn]struct{}{}}, nil
}

// Post sends body and reads the answer; an error for a transport failure
// or an unexpected status (the connection is closed then, not reused).
func (p *RawPoster) Post(body []byte) error {
	c, err := p.get()
	if err != nil {
		return err
	}
	keep, err := c.do(p.head, body, p.want)
	if err != nil || !keep {
		p.drop(c)
		return err
	}
	p.mu.Lock()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
	return nil
}

// Close closes every connection.
func (p *RawPoster) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.all {
		c.c.Close()
	}
	p.idle, p.all = nil, map[*rawConn]struct{}{}
}

func (p *RawPoster) get() (*rawConn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	nc, err := net.Dial("tcp", p.addr)
	if err != nil {
		return nil, err
	}
	c := &rawConn{c: nc, r: bufio.NewReaderSize(nc, 4096)}
	p.mu.Lock()
	p.all[c] = struct{}{}
	p.mu.Unlock()
	return c, nil
}

func (p *RawPoster) drop(c *rawConn) {
	c.c.Close()
	p.mu.Lock()
	delete(p.all, c)
	p.mu.Unlock()
}

// do writes one request and reads its answer; keep says whether the
// connection may serve another.
func (c *rawConn) do(head, body []byte, want int) (keep bool, err error) {
	c.buf = append(append(strconv.AppendInt(append(c.buf[:0], head...), int64(len(body)), 10), "\r\n\r\n"...), body...)
	if _, err := c.c.Write(c.buf); err != nil {
		return false, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return false, fmt.Errorf("reading the status line: %w", err)
	}
	// "HTTP/1.1 202 Accepted\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return false, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return false, fmt.Errorf("bad status line %q", line)
	}
	length, keep, chunked := -1, true, false
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return false, fmt.Errorf("reading headers: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return false, fmt.Errorf("bad header line %q", line)
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil || length < 0 {
				return false, fmt.Errorf("bad Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			if !bytes.EqualFold(v, []byte("chunked")) {
				return false, fmt.Errorf("raw poster: transfer encoding %q not supported", v)
			}
			chunked = true
		case bytes.EqualFold(k, []byte("Connection")) && bytes.EqualFold(v, []byte("close")):
			keep = false
		}
	}
	if chunked {
		if status != want {
			return false, fmt.Errorf("POST: status %d, want %d", status, want)
		}
		return keep, c.discardChunked()
	}
	if length < 0 {
		return false, errors.New("raw poster: answer without Content-Length")
	}
	var msg []byte
	if status != want {
		msg = make([]byte, min(length, 512))
		if _, err := io.ReadFull(c.r, msg); err != nil {
			return false, err
		}
		length -= len(msg)
	}
	if _, err := c.r.Discard(length); err != nil {
		return false, fmt.Errorf("reading the body: %w", err)
	}
	if status != want {
		return false, fmt.Errorf("POST: status %d, want %d: %s", status, want, bytes.TrimSpace(msg))
	}
	return keep, nil
}

// discardChunked reads a chunked body and its trailer.
func (c *rawConn) discardChunked() error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reading a chunk size: %w", err)
		}
		hex, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseInt(string(hex), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			break
		}
		if _, err := c.r.Discard(int(n) + 2); err != nil {
			return fmt.Errorf("reading a chunk: %w", err)
		}
	}
	for { // trailer, up to the empty line
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reading the trailer: %w", err)
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}
