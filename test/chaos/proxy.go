// Package chaos is attestd's reliability campaign: the real daemon against
// the real stack (Debian registry with webhooks, Fulcio, TSA, Rekor v2, the
// OIDC issuer), killed with SIGKILL at random moments, its dependencies
// behind fault-injecting proxies, its data directory on a filesystem that
// fills up, and hostile images pushed to staging. At the end it checks the
// invariants users ask about (nothing acknowledged lost, nothing promoted
// without a verified allow, the audit chain whole, memory bounded) and
// prints them as a table. `make chaos` runs the full campaign
// (test/cmd/chaos); a short one runs in `make test`.
package chaos

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is what the proxy does to one request.
type Fault int

const (
	Pass      Fault = iota
	Status503       // 503 with no body
	Status429       // 429 with Retry-After: 1
	Reset           // the connection is closed with RST before any response
	Stall           // nothing is answered for the stall time, then the connection is reset
	SlowBody        // the response body trickles (a few bytes per tick)
	nFaults
)

var faultNames = [...]string{"pass", "503", "429", "reset", "stall", "slow-body"}

func (f Fault) String() string { return faultNames[f] }

// Proxy is a loopback HTTP reverse proxy in front of one component, with a
// fault mode that can change while it runs:
//   - Set(Pass): every request is forwarded;
//   - Mix(rate): a fraction rate of requests get a random fault;
//   - Down(): an outage, every connection is reset.
//
// It counts what it did per fault.
type Proxy struct {
	Name string
	URL  string // http://127.0.0.1:PORT
	Host string // 127.0.0.1:PORT

	target *url.URL
	rp     *httputil.ReverseProxy
	srv    *http.Server
	stall  time.Duration

	mu   sync.Mutex
	mode string // "pass", "mix", "down"
	rate float64
	rnd  *rand.Rand

	endless map[string]bool // blob digests served as a stream that never ends

	counts [nFaults]atomic.Int64
	down   atomic.Int64 // requests refused during outages
}

// NewProxy listens on a free loopback port and forwards to target
// (http://host:port).
func NewProxy(name, target string, seed uint64) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("proxy %s: target %q is not an http://host:port URL", name, target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", name, err)
	}
	p := &Proxy{Name: name, Host: ln.Addr().String(), target: u, mode: "pass", stall: 3 * time.Second,
		rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	p.URL = "http://" + p.Host
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			// The registry builds upload Locations from Host: keep the
			// proxy's, so every request of a push comes through here.
			r.Out.Host = r.In.Host
		},
		// Flush streamed bodies (blobs) as they come.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, "chaos proxy "+name+": "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the proxy.
func (p *Proxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	_ = p.srv.Close()
}

// Set forwards everything from now on.
func (p *Proxy) Set() { p.setMode("pass", 0) }

// Mix gives a fraction rate (0..1) of requests a random fault.
func (p *Proxy) Mix(rate float64) { p.setMode("mix", rate) }

// Down resets every connection until Set or Mix.
func (p *Proxy) Down() { p.setMode("down", 0) }

func (p *Proxy) setMode(m string, rate float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode, p.rate = m, rate
}

// Endless makes GETs of the blob digest an endless stream: a registry (or
// whatever sits in the path) that never finishes a layer.
func (p *Proxy) Endless(digest string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.endless == nil {
		p.endless = map[string]bool{}
	}
	p.endless[digest] = true
}

func (p *Proxy) isEndless(r *http.Request) bool {
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	if r.Method != http.MethodGet || i < 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.endless[r.URL.Path[i+len("/blobs/"):]]
}

// zeroMember is a gzip member of 1 MiB of zeros (about 1 KiB).
var zeroMember = func() []byte {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	_, _ = zw.Write(make([]byte, 1<<20))
	_ = zw.Close()
	return b.Bytes()
}()

// Counts returns how many requests got each fault, and how many were
// refused by outages.
func (p *Proxy) Counts() (map[Fault]int64, int64) {
	out := map[Fault]int64{}
	for f := range nFaults {
		out[f] = p.counts[f].Load()
	}
	return out, p.down.Load()
}

func (p *Proxy) pick() (Fault, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.mode {
	case "down":
		return Reset, true
	case "mix":
		if p.rnd.Float64() < p.rate {
			return Fault(1 + p.rnd.IntN(int(nFaults)-1)), false
		}
	}
	return Pass, false
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.isEndless(r) {
		// A valid gzip stream that never ends: members of compressed
		// zeros, one after another.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(http.StatusOK)
		for r.Context().Err() == nil {
			if _, err := w.Write(zeroMember); err != nil {
				return
			}
		}
		return
	}
	f, outage := p.pick()
	if outage {
		p.down.Add(1)
	} else {
		p.counts[f].Add(1)
	}
	switch f {
	case Status503:
		drain(r)
		http.Error(w, "chaos: injected 503", http.StatusServiceUnavailable)
	case Status429:
		drain(r)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "chaos: injected 429", http.StatusTooManyRequests)
	case Reset:
		reset(w)
	case Stall:
		select {
		case <-r.Context().Done():
		case <-time.After(p.stall):
		}
		reset(w)
	case SlowBody:
		p.rp.ServeHTTP(&slowWriter{ResponseWriter: w}, r)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

func drain(r *http.Request) { _, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20)) }

// reset closes the client's connection with RST (SO_LINGER 0): the client
// sees "connection reset by peer", as when a component crashes mid-request.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// slowWriter sends the body in small pieces with a pause between them: a
// slow network or an overloaded component. 64 KiB at 4 KiB per 20 ms is a
// third of a second; a 10 MB layer would take 50 s, so it switches to full
// speed after slowBytes.
type slowWriter struct {
	http.ResponseWriter
	sent int
}

const (
	slowChunk = 4 << 10
	slowBytes = 256 << 10
	slowTick  = 20 * time.Millisecond
)

func (s *slowWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		if s.sent >= slowBytes {
			m, err := s.ResponseWriter.Write(b)
			s.sent += m
			return n + m, err
		}
		c := min(len(b), slowChunk)
		m, err := s.ResponseWriter.Write(b[:c])
		n += m
		s.sent += m
		if err != nil {
			return n, err
		}
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		time.Sleep(slowTick)
		b = b[c:]
	}
	return n, nil
}

func (s *slowWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *slowWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// errStatus is an unexpected answer from the daemon or a component.
func errStatus(what string, code int, body []byte) error {
	return errors.New(what + ": " + strconv.Itoa(code) + " " + string(trim(body, 300)))
}

func trim(b []byte, n int) []byte {
	if len(b) > n {
		return append(b[:n:n], "…"...)
	}
	return b
}
