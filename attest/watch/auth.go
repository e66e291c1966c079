package watch

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Authenticator checks one delivery. body is nil for authenticators whose
// NeedsBody is false: they run before the body is read.
type Authenticator interface {
	Authenticate(r *http.Request, body []byte) error
}

// bodyAuthenticator is implemented by authenticators that sign the body.
type bodyAuthenticator interface{ needsBody() }

// ErrUnauthenticated is wrapped by every authentication failure.
var ErrUnauthenticated = errors.New("unauthenticated")

// Header names of the HMAC scheme (GitHub-style signature over the timestamp
// and the body, so a captured delivery cannot be replayed outside the window).
const (
	HeaderSignature = "X-Attestd-Signature" // "sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))
	HeaderTimestamp = "X-Attestd-Timestamp" // Unix seconds
)

// HMAC authenticates deliveries signed with a shared secret.
type HMAC struct {
	secret []byte
	window time.Duration
	now    func() time.Time
}

// NewHMAC returns an HMAC authenticator accepting timestamps within ±window.
func NewHMAC(secret []byte, window time.Duration) (*HMAC, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("hmac secret must be at least 16 bytes, got %d", len(secret))
	}
	if window <= 0 {
		return nil, fmt.Errorf("hmac replay window must be positive")
	}
	return &HMAC{secret: secret, window: window, now: time.Now}, nil
}

func (*HMAC) needsBody() {}

// Sign returns the headers a sender sets for body at t (used by tests and by
// attestd's documentation example).
func (h *HMAC) Sign(body []byte, t time.Time) (timestamp, signature string) {
	ts := strconv.FormatInt(t.Unix(), 10)
	return ts, "sha256=" + hex.EncodeToString(h.mac(ts, body))
}

func (h *HMAC) mac(ts string, body []byte) []byte {
	m := hmac.New(sha256.New, h.secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return m.Sum(nil)
}

// Authenticate implements Authenticator.
func (h *HMAC) Authenticate(r *http.Request, body []byte) error {
	ts, sig := r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature)
	if ts == "" || sig == "" {
		return fmt.Errorf("%w: %s and %s headers are required", ErrUnauthenticated, HeaderTimestamp, HeaderSignature)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s is not Unix seconds", ErrUnauthenticated, HeaderTimestamp)
	}
	if d := h.now().Sub(time.Unix(sec, 0)); d > h.window || d < -h.window {
		return fmt.Errorf("%w: timestamp outside the ±%s replay window", ErrUnauthenticated, h.window)
	}
	got, err := hex.DecodeString(strings.TrimPrefix(sig, "sha256="))
	if err != nil || !strings.HasPrefix(sig, "sha256=") {
		return fmt.Errorf("%w: %s must be sha256=<hex>", ErrUnauthenticated, HeaderSignature)
	}
	if !hmac.Equal(got, h.mac(ts, body)) {
		return fmt.Errorf("%w: signature mismatch", ErrUnauthenticated)
	}
	return nil
}

// Header authenticates by a static header value, e.g. "Authorization:
// Bearer …" that Distribution and Harbor send as configured.
type Header struct {
	name  string
	value []byte
}

// NewHeader returns a static-header authenticator.
func NewHeader(name, value string) (*Header, error) {
	if name == "" || len(value) < 8 {
		return nil, fmt.Errorf("header authentication needs a header name and a value of at least 8 bytes")
	}
	return &Header{name: name, value: []byte(value)}, nil
}

// Authenticate implements Authenticator.
func (h *Header) Authenticate(r *http.Request, _ []byte) error {
	if subtle.ConstantTimeCompare([]byte(r.Header.Get(h.name)), h.value) != 1 {
		return fmt.Errorf("%w: missing or wrong %s header", ErrUnauthenticated, h.name)
	}
	return nil
}

// PathToken authenticates by a secret last path segment
// (/hooks/SOURCE/TOKEN), for registries that can neither sign nor send
// headers.
type PathToken struct{ token []byte }

// NewPathToken returns a path-token authenticator.
func NewPathToken(token string) (*PathToken, error) {
	if len(token) < 16 || strings.Contains(token, "/") {
		return nil, fmt.Errorf("path token must be at least 16 characters without '/'")
	}
	return &PathToken{token: []byte(token)}, nil
}

// Authenticate implements Authenticator.
func (p *PathToken) Authenticate(r *http.Request, _ []byte) error {
	if subtle.ConstantTimeCompare([]byte(r.PathValue("token")), p.token) != 1 {
		return fmt.Errorf("%w: wrong or missing path token", ErrUnauthenticated)
	}
	return nil
}

// NoAuthUnsafe accepts every delivery. Only for sources on a trusted network
// that the configuration marks explicitly.
type NoAuthUnsafe struct{}

// Authenticate implements Authenticator.
func (NoAuthUnsafe) Authenticate(*http.Request, []byte) error { return nil }

var (
	_ Authenticator = (*HMAC)(nil)
	_ Authenticator = (*Header)(nil)
	_ Authenticator = (*PathToken)(nil)
	_ Authenticator = NoAuthUnsafe{}
)
