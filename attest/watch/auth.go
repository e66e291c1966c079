package watch

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
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

// Header names of senders' own signature schemes.
const (
	// HeaderGitHubSignature is "sha256=" + hex(HMAC-SHA256(secret, body)).
	HeaderGitHubSignature = "X-Hub-Signature-256"
	// HeaderJFrogAuth is JFrog's secret token, or with "Use secret for
	// payload signing" hex(HMAC-SHA256(secret, body)).
	HeaderJFrogAuth = "X-JFrog-Event-Auth"
	// Standard Webhooks (standardwebhooks.com): the message ID, Unix
	// seconds, and space-separated "v1,<base64 HMAC-SHA256(key,
	// id.timestamp.body)>" signatures.
	HeaderWebhookID        = "Webhook-Id"
	HeaderWebhookTimestamp = "Webhook-Timestamp"
	HeaderWebhookSignature = "Webhook-Signature"
)

// BodySignature authenticates deliveries whose header carries prefix +
// hex(HMAC-SHA256(secret, raw body)): GitHub's X-Hub-Signature-256 and
// JFrog's X-JFrog-Event-Auth with payload signing. Neither sender signs a
// timestamp, so a captured delivery verifies forever: the delivery ID
// (GitHub) and the sink's (registry, repository, digest) dedupe are what
// make a replay a no-op.
type BodySignature struct {
	header, prefix string
	secret         []byte
}

// NewGitHubSignature authenticates GitHub webhooks (X-Hub-Signature-256)
// signed with the webhook's secret.
func NewGitHubSignature(secret []byte) (*BodySignature, error) {
	return newBodySignature(HeaderGitHubSignature, "sha256=", secret)
}

// NewJFrogSignature authenticates JFrog Platform webhooks created with
// "Use secret for payload signing" (X-JFrog-Event-Auth).
func NewJFrogSignature(secret []byte) (*BodySignature, error) {
	return newBodySignature(HeaderJFrogAuth, "", secret)
}

func newBodySignature(header, prefix string, secret []byte) (*BodySignature, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("%s secret must be at least 16 bytes, got %d", header, len(secret))
	}
	return &BodySignature{header: header, prefix: prefix, secret: secret}, nil
}

func (*BodySignature) needsBody() {}

// LogValue keeps the secret out of logs.
func (*BodySignature) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Sign returns the header value the sender sets for body.
func (b *BodySignature) Sign(body []byte) string {
	return b.prefix + hex.EncodeToString(b.mac(body))
}

func (b *BodySignature) mac(body []byte) []byte {
	m := hmac.New(sha256.New, b.secret)
	m.Write(body)
	return m.Sum(nil)
}

// Authenticate implements Authenticator.
func (b *BodySignature) Authenticate(r *http.Request, body []byte) error {
	sig := r.Header.Get(b.header)
	if sig == "" {
		return fmt.Errorf("%w: %s header is required", ErrUnauthenticated, b.header)
	}
	hx, ok := strings.CutPrefix(sig, b.prefix)
	got, err := hex.DecodeString(hx)
	if !ok || err != nil {
		return fmt.Errorf("%w: %s must be %s<hex HMAC-SHA256 of the body>", ErrUnauthenticated, b.header, b.prefix)
	}
	if !hmac.Equal(got, b.mac(body)) {
		return fmt.Errorf("%w: %s does not match the body", ErrUnauthenticated, b.header)
	}
	return nil
}

// StandardWebhooks authenticates deliveries signed as the Standard Webhooks
// specification says (symmetric "v1" signatures; asymmetric "v1a" ones are
// skipped, so a sender that also sends them still verifies by its v1).
type StandardWebhooks struct {
	key    []byte
	window time.Duration
	now    func() time.Time
}

// standardWebhooksPrefix marks a serialized symmetric secret.
const standardWebhooksPrefix = "whsec_"

// NewStandardWebhooks takes the secret as the sender shows it,
// "whsec_<base64>", and accepts timestamps within ±window.
func NewStandardWebhooks(secret string, window time.Duration) (*StandardWebhooks, error) {
	b64, ok := strings.CutPrefix(secret, standardWebhooksPrefix)
	if !ok {
		return nil, fmt.Errorf("standard webhooks secret must be %s<base64> as the sender shows it", standardWebhooksPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("standard webhooks secret after %s is not base64: %w", standardWebhooksPrefix, err)
	}
	// The specification's symmetric secrets are 24 to 64 random bytes.
	if len(key) < 24 {
		return nil, fmt.Errorf("standard webhooks secret decodes to %d bytes, the specification requires at least 24", len(key))
	}
	if window <= 0 {
		return nil, fmt.Errorf("standard webhooks replay window must be positive")
	}
	return &StandardWebhooks{key: key, window: window, now: time.Now}, nil
}

func (*StandardWebhooks) needsBody() {}

// LogValue keeps the secret out of logs.
func (*StandardWebhooks) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Sign returns the webhook-signature value for id, t and body.
func (s *StandardWebhooks) Sign(id string, t time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(s.mac(id, strconv.FormatInt(t.Unix(), 10), body))
}

func (s *StandardWebhooks) mac(id, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return m.Sum(nil)
}

// Authenticate implements Authenticator.
func (s *StandardWebhooks) Authenticate(r *http.Request, body []byte) error {
	id, ts, sigs := r.Header.Get(HeaderWebhookID), r.Header.Get(HeaderWebhookTimestamp), r.Header.Get(HeaderWebhookSignature)
	if id == "" || ts == "" || sigs == "" {
		return fmt.Errorf("%w: %s, %s and %s headers are required", ErrUnauthenticated, HeaderWebhookID, HeaderWebhookTimestamp, HeaderWebhookSignature)
	}
	// The signed content is id.timestamp.body: an ID with a '.' (which the
	// specification forbids senders to use) or a timestamp in any form but
	// plain decimal would make that split ambiguous.
	if strings.ContainsFunc(id, func(r rune) bool { return r == '.' || r <= ' ' || r > '~' }) || len(id) > 255 {
		return fmt.Errorf("%w: %s must be at most 255 printable ASCII characters without '.'", ErrUnauthenticated, HeaderWebhookID)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(sec, 10) != ts {
		return fmt.Errorf("%w: %s is not Unix seconds", ErrUnauthenticated, HeaderWebhookTimestamp)
	}
	if d := s.now().Sub(time.Unix(sec, 0)); d > s.window || d < -s.window {
		return fmt.Errorf("%w: timestamp outside the ±%s replay window", ErrUnauthenticated, s.window)
	}
	want := s.mac(id, ts, body)
	for _, vs := range strings.Fields(sigs) {
		v, b64, _ := strings.Cut(vs, ",")
		if v != "v1" {
			continue
		}
		if got, err := base64.StdEncoding.DecodeString(b64); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("%w: no v1 signature in %s matches", ErrUnauthenticated, HeaderWebhookSignature)
}

var (
	_ Authenticator = (*HMAC)(nil)
	_ Authenticator = (*BodySignature)(nil)
	_ Authenticator = (*StandardWebhooks)(nil)
	_ Authenticator = (*Header)(nil)
	_ Authenticator = (*PathToken)(nil)
	_ Authenticator = NoAuthUnsafe{}
)
