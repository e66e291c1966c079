package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Retry policy of the shared transport. Kept as named constants so the
// behaviour under registry outages is reviewable in one place.
const (
	defaultMaxRetries  = 5
	defaultBaseBackoff = 250 * time.Millisecond
	maxBackoff         = 30 * time.Second
	// maxRetryAfter caps a registry's Retry-After: beyond it we give up and let
	// the job queue's own backoff take over instead of pinning a worker.
	maxRetryAfter = 60 * time.Second
	// stallTimeout cuts off a registry that stops sending: no response
	// headers, or no byte of the body, for this long. The attempt fails
	// like a dropped connection (and is retried if it can be); a body
	// already handed to the caller fails its next Read with ErrStalled.
	stallTimeout = 60 * time.Second
)

// retryable lists the statuses that mean "try again later" (OCI distribution
// spec 429, gateway and overload errors).
var retryable = map[int]bool{
	http.StatusRequestTimeout:      true,
	http.StatusTooManyRequests:     true,
	http.StatusInternalServerError: true,
	http.StatusBadGateway:          true,
	http.StatusServiceUnavailable:  true,
	http.StatusGatewayTimeout:      true,
}

// Transport is the one RoundTripper every registry call goes through: a
// per-host token bucket, then retries with exponential backoff and jitter on
// 429/5xx and connection errors, honouring Retry-After. It only retries
// requests it can replay (no body, or GetBody set), and it stops the moment
// the request's context ends.
type Transport struct {
	inner      http.RoundTripper
	rps        rate.Limit
	burst      int
	maxRetries int
	base       time.Duration
	stall      time.Duration
	logger     *slog.Logger
	sleep      func(ctx context.Context, d time.Duration) error

	hostRPS map[string]rate.Limit
	own     ownSet // manifests this process PUT (Client.Own)
	// insecure are the hosts configured for plain HTTP
	// (WithInsecureRegistriesUnsafe); see scheme.
	insecure map[string]bool

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
	codes    map[string]int64 // responses by status code ("error": no response), retries included
}

func newTransport(inner http.RoundTripper, rps float64, burst, maxRetries int, logger *slog.Logger) *Transport {
	lim := rate.Limit(rps)
	if rps <= 0 {
		lim = rate.Inf
	}
	return &Transport{
		inner: inner, rps: lim, burst: max(burst, 1), maxRetries: maxRetries, base: defaultBaseBackoff, stall: stallTimeout,
		logger: logger, sleep: sleepCtx, limiters: map[string]*rate.Limiter{}, hostRPS: map[string]rate.Limit{},
		insecure: map[string]bool{},
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (t *Transport) limiter(host string) *rate.Limiter {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, ok := t.limiters[host]
	if !ok {
		lim := t.rps
		if v, ok := t.hostRPS[host]; ok {
			lim = v
		}
		l = rate.NewLimiter(lim, t.burst)
		t.limiters[host] = l
	}
	return l
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	req, upgraded, err := t.scheme(req)
	if err != nil {
		return nil, err
	}
	if upgraded {
		resp, err := t.roundTrip(ctx, req)
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) {
			return nil, fmt.Errorf("%s %s: the registry %s answers in plain HTTP, and attestd speaks HTTPS to every registry that is not loopback: serve it over TLS, or set insecure: true for it in registries[] (anonymous access only): %w",
				req.Method, req.URL.Redacted(), req.URL.Host, err)
		}
		return resp, err
	}
	return t.roundTrip(ctx, req)
}

// scheme decides how req may travel. Plain HTTP is for loopback hosts
// and hosts configured insecure only: go-containerregistry also picks
// http for RFC 1918 and *.local names, and falls back to it when
// pinging; such a request to any other host is sent over HTTPS instead
// (upgraded). Credentials never travel in plain HTTP beyond loopback: a
// request to an insecure host carrying an Authorization header (basic,
// or a bearer token), or an OAuth2 token form (a refresh token or
// password in its body), is refused.
func (t *Transport) scheme(req *http.Request) (_ *http.Request, upgraded bool, _ error) {
	if req.URL == nil || !strings.EqualFold(req.URL.Scheme, "http") || IsLoopback(req.URL.Host) {
		return req, false, nil
	}
	if !t.insecure[req.URL.Host] {
		r := req.Clone(req.Context())
		r.URL.Scheme = "https"
		return r, true, nil
	}
	what := ""
	switch {
	case req.Header.Get("Authorization") != "":
		what = "an Authorization header"
	case req.Method == http.MethodPost && strings.HasPrefix(req.Header.Get("Content-Type"), "application/x-www-form-urlencoded"):
		what = "a token request (its form carries the credentials)"
	default:
		return req, false, nil
	}
	return nil, false, fmt.Errorf("%s %s: %w: %s would go in the clear to %s, which is not loopback: serve the registry over TLS and drop insecure: true from registries[], or use it anonymously (no credentials for %s in the config or the docker config)",
		req.Method, req.URL.Redacted(), ErrPlainHTTP, what, req.URL.Host, req.URL.Host)
}

func (t *Transport) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	t.own.noteManifestPut(req)
	for attempt := 0; ; attempt++ {
		if err := t.limiter(req.URL.Host).Wait(ctx); err != nil {
			return nil, fmt.Errorf("rate limit %s: %w", req.URL.Host, err)
		}
		r := req
		if attempt > 0 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			r = req.Clone(ctx)
			r.Body = body
		}
		resp, err := t.send(ctx, r)
		t.count(resp, err)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil || !replayable || attempt >= t.maxRetries || errors.Is(err, context.Canceled) || permanentNetErr(err) {
				return nil, err
			}
			wait = t.backoff(attempt)
			t.logger.DebugContext(ctx, "registry request failed, retrying", "host", req.URL.Host, "attempt", attempt+1, "err", err)
		case retryable[resp.StatusCode] && replayable && attempt < t.maxRetries:
			ra, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now())
			if ok && ra > maxRetryAfter {
				return resp, nil // the registry asks for longer than we hold a worker
			}
			wait = t.backoff(attempt)
			if ok {
				wait = ra
			}
			// Drain so the connection can be reused.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			t.logger.DebugContext(ctx, "registry busy, retrying", "host", req.URL.Host, "status", resp.StatusCode, "attempt", attempt+1, "wait", wait)
		default:
			return resp, nil
		}
		if err := t.sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("%s %s: gave up waiting to retry: %w", req.Method, req.URL.Redacted(), err)
		}
	}
}

// send is one attempt, watched for stalls: the response headers must come
// within t.stall, and then the body may not pause longer than that.
func (t *Transport) send(ctx context.Context, r *http.Request) (*http.Response, error) {
	actx, cancel := context.WithCancel(ctx)
	st := &stallBody{cancel: cancel, d: t.stall, what: r.Method + " " + r.URL.Redacted()}
	st.timer = time.AfterFunc(t.stall, st.fire)
	r = r.WithContext(actx)
	if r.Body != nil && r.Body != http.NoBody {
		// An upload is progress too: a registry answers a PATCH or PUT
		// only once it has the whole body, so every chunk sent re-arms
		// the timer (a 2 GiB layer on a slow link is not a stall).
		r.Body = &progressBody{rc: r.Body, timer: st.timer, d: t.stall}
	}
	resp, err := t.inner.RoundTrip(r)
	if err != nil {
		st.timer.Stop()
		cancel()
		if st.stalled.Load() && ctx.Err() == nil {
			return nil, fmt.Errorf("%s: %w: no response for %s", st.what, ErrStalled, t.stall)
		}
		return nil, err
	}
	st.timer.Reset(t.stall)
	st.rc = resp.Body
	resp.Body = st
	return resp, nil
}

// stallBody is a response body that ends the request when the registry
// sends nothing for d.
type stallBody struct {
	rc      io.ReadCloser
	cancel  context.CancelFunc
	timer   *time.Timer
	d       time.Duration
	what    string
	stalled atomic.Bool
}

// progressBody re-arms the stall timer whenever the request body yields
// bytes to the connection.
type progressBody struct {
	rc    io.ReadCloser
	timer *time.Timer
	d     time.Duration
}

func (p *progressBody) Read(b []byte) (int, error) {
	n, err := p.rc.Read(b)
	if n > 0 || err == io.EOF {
		p.timer.Reset(p.d)
	}
	return n, err
}

func (p *progressBody) Close() error { return p.rc.Close() }

func (s *stallBody) fire() {
	s.stalled.Store(true)
	s.cancel()
}

func (s *stallBody) Read(p []byte) (int, error) {
	n, err := s.rc.Read(p)
	if err != nil && s.stalled.Load() {
		return n, fmt.Errorf("%s: %w: no data for %s", s.what, ErrStalled, s.d)
	}
	if n > 0 {
		s.timer.Reset(s.d)
	}
	return n, err
}

func (s *stallBody) Close() error {
	s.timer.Stop()
	err := s.rc.Close()
	s.cancel()
	return err
}

func (t *Transport) backoff(attempt int) time.Duration {
	d := t.base << attempt
	if d > maxBackoff || d <= 0 {
		d = maxBackoff
	}
	// Full jitter keeps a burst of workers from retrying in lockstep.
	return d/2 + rand.N(d/2+1)
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// permanentNetErr reports errors a retry cannot fix: TLS spoken to a plain
// HTTP server (ggcr then falls back to http for loopback and insecure
// registries — retrying would only delay that), and certificate failures.
func permanentNetErr(err error) bool {
	var rh tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	return errors.As(err, &rh) || errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn)
}

func (t *Transport) count(resp *http.Response, err error) {
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.codes == nil {
		t.codes = map[string]int64{}
	}
	t.codes[code]++
}

// Responses counts every response by status code ("error" when there was
// none), each retry included: the registry's 429s and 5xx show here.
func (t *Transport) Responses() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int64, len(t.codes))
	for k, v := range t.codes {
		out[k] = v
	}
	return out
}
