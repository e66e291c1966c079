package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Incoming is one parsed event with what the filter needs beyond it.
type Incoming struct {
	Event     Event
	UserAgent string   // of the client that caused it, when the format says (logged, never trusted)
	RefTypes  []string // media types of config and layers, when listed
	// ConfigType and ArtifactType are the manifest's config media type and
	// artifactType, when the delivery says or the manifest was read.
	ConfigType, ArtifactType string
	// Manifest is the manifest the delivery included (Zot); it must hash
	// to Event.Digest.
	Manifest []byte
	// Fields names where the values came from, for error messages.
	Fields Fields
}

// Parser turns a request body into events. Errors are the sender's fault
// (400) and should say what was wrong, where (FieldError).
type Parser interface {
	Parse(r *http.Request, body []byte) ([]Incoming, error)
	// ContentTypes lists the accepted media types (415 otherwise).
	ContentTypes() []string
}

// Bounds of one delivery: events in it, and tag-only events among them
// (each costs a registry request before the answer).
const (
	MaxEvents   = 1000
	MaxResolves = 64
)

// ErrNotFound is wrapped by a Resolver when the tag does not exist.
var ErrNotFound = errors.New("not found")

// Resolver looks up what a tag points at, for senders whose events name no
// digest (Docker Hub, Quay, a CI's "host/repo:tag").
type Resolver interface {
	// Resolve returns the digest and the manifest registry/repository:tag
	// points at now (at most MaxManifestBytes). An error wrapping
	// ErrNotFound answers 422; any other 503, so the sender retries.
	Resolve(ctx context.Context, registry, repository, tag string) (digest string, manifest []byte, err error)
}

// Receiver is the http.Handler of one configured source.
type Receiver struct {
	name    string
	parser  Parser
	auth    Authenticator
	filter  Filter
	sink    Sink
	maxBody int64
	log     *slog.Logger
	stats   *Stats
	resolve Resolver
	slots   chan struct{}
	wait    time.Duration
}

// ReceiverOptions configure NewReceiver.
type ReceiverOptions struct {
	MaxBody int64 // bytes; 413 above
	Logger  *slog.Logger
	Stats   *Stats
	// Resolver resolves tag-only events; without one they are refused
	// (422) — configure one for every sender that sends tags only.
	Resolver Resolver
	// MaxInFlight caps the deliveries of this source handled at once
	// (default 16); one more waits up to BusyWait (default 2s) for a slot,
	// then gets 503 with Retry-After.
	MaxInFlight int
	BusyWait    time.Duration
}

// NewReceiver builds the handler for source name.
func NewReceiver(name string, p Parser, a Authenticator, f Filter, s Sink, o ReceiverOptions) (*Receiver, error) {
	if name == "" || p == nil || a == nil || s == nil {
		return nil, errors.New("receiver: name, parser, authenticator and sink are required")
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Stats == nil {
		o.Stats = NewStats()
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 16
	}
	if o.BusyWait <= 0 {
		o.BusyWait = 2 * time.Second
	}
	return &Receiver{name: name, parser: p, auth: a, filter: f, sink: s, maxBody: o.MaxBody, log: o.Logger, stats: o.Stats,
		resolve: o.Resolver, slots: make(chan struct{}, o.MaxInFlight), wait: o.BusyWait}, nil
}

// Response is the JSON body of every answer.
type Response struct {
	Error    string         `json:"error,omitempty"`
	Field    string         `json:"field,omitempty"` // where in the delivery, for a 400
	Received int            `json:"received"`
	Accepted int            `json:"accepted"`
	Ignored  map[string]int `json:"ignored,omitempty"`
	Result   Accepted       `json:"result"`
}

func (h *Receiver) reject(w http.ResponseWriter, code int, reason, msg string) {
	h.stats.add(h.name, "rejected", reason, 1)
	h.log.Warn("webhook rejected", "source", h.name, "status", code, "reason", msg)
	writeJSON(w, code, Response{Error: msg})
}

// malformed answers 400 for a parse or validation error, naming the field.
func (h *Receiver) malformed(w http.ResponseWriter, err error) {
	h.stats.add(h.name, "rejected", "malformed", 1)
	h.log.Warn("webhook rejected", "source", h.name, "status", http.StatusBadRequest, "reason", err.Error())
	resp := Response{Error: err.Error()}
	var fe *FieldError
	if errors.As(err, &fe) {
		resp.Field = fe.Field
	}
	writeJSON(w, http.StatusBadRequest, resp)
}

// ServeHTTP implements http.Handler. Order: method, header authentication,
// size cap, body authentication, a delivery slot, content type, parse,
// validation, filter, tag resolution, durable accept — so nothing is written
// for any rejected delivery.
func (h *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.reject(w, http.StatusMethodNotAllowed, "method", "use POST")
		return
	}
	_, signsBody := h.auth.(bodyAuthenticator)
	if !signsBody {
		if err := h.auth.Authenticate(r, nil); err != nil {
			h.reject(w, http.StatusUnauthorized, "auth", err.Error())
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.reject(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body exceeds %d bytes (intake.max_body_bytes)", h.maxBody))
			return
		}
		h.reject(w, http.StatusBadRequest, "read", "reading body: "+err.Error())
		return
	}
	if signsBody {
		if err := h.auth.Authenticate(r, body); err != nil {
			h.reject(w, http.StatusUnauthorized, "auth", err.Error())
			return
		}
	}
	// Slots bound the work done for authenticated deliveries (parse,
	// tag resolution, the commit); taken before authentication, slow
	// unsigned bodies could hold them all.
	if !h.acquire(r.Context()) {
		w.Header().Set("Retry-After", "1")
		h.reject(w, http.StatusServiceUnavailable, "busy", fmt.Sprintf("source %s is handling %d deliveries; retry", h.name, cap(h.slots)))
		return
	}
	defer func() { <-h.slots }()
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || !contains(h.parser.ContentTypes(), mt) {
		h.reject(w, http.StatusUnsupportedMediaType, "content_type", fmt.Sprintf("content type %q not accepted; want one of %v", r.Header.Get("Content-Type"), h.parser.ContentTypes()))
		return
	}
	in, err := h.parser.Parse(r, body)
	if err != nil {
		h.malformed(w, err)
		return
	}
	if len(in) > MaxEvents {
		h.malformed(w, fmt.Errorf("%d events in one delivery, more than %d: send them in several", len(in), MaxEvents))
		return
	}
	for i := range in {
		if err := in[i].check(); err != nil {
			h.malformed(w, err)
			return
		}
		if in[i].Manifest != nil {
			if err := in[i].describe(in[i].Manifest); err != nil {
				h.malformed(w, fieldErr(orDefault(in[i].Fields.Manifest, "manifest"), err))
				return
			}
		}
	}
	resp := Response{Received: len(in), Ignored: map[string]int{}}
	var keep []Event
	resolved := map[string]resolution{}
	for i := range in {
		x := &in[i]
		reason := h.filter.Classify(*x)
		if reason == "" && x.Event.Digest == "" && x.Event.Action == ActionPush {
			// Only watched repositories are asked, and only so many per
			// delivery: each is a registry request before the answer.
			key := x.Event.Registry + "/" + x.Event.Repository + ":" + x.Event.Tag
			if _, ok := resolved[key]; !ok && len(resolved) >= MaxResolves {
				h.malformed(w, fmt.Errorf("more than %d tags to resolve in one delivery: send them in several", MaxResolves))
				return
			}
			code, err := h.resolveTag(r.Context(), x, resolved)
			if err != nil {
				if code == http.StatusServiceUnavailable {
					w.Header().Set("Retry-After", "10")
				}
				h.reject(w, code, "unresolvable", err.Error())
				return
			}
			reason = h.filter.Classify(*x)
		}
		if reason != "" {
			resp.Ignored[reason]++
			h.stats.add(h.name, "ignored", reason, 1)
			continue
		}
		keep = append(keep, x.Event)
	}
	h.stats.add(h.name, "received", "", len(in))
	if len(keep) > 0 {
		acc, err := h.sink.Accept(r.Context(), keep)
		var ie *InputError
		if errors.As(err, &ie) {
			h.reject(w, http.StatusUnprocessableEntity, "unresolvable", ie.Error())
			return
		}
		if err != nil {
			// Not durable: make the sender retry.
			h.stats.add(h.name, "failed", "sink", len(keep))
			h.log.Error("webhook not stored", "source", h.name, "err", err)
			w.Header().Set("Retry-After", "10")
			writeJSON(w, http.StatusServiceUnavailable, Response{Error: "not stored, retry: " + err.Error(), Received: len(in)})
			return
		}
		resp.Accepted, resp.Result = len(keep), acc
		h.stats.add(h.name, "accepted", "", len(keep))
	}
	writeJSON(w, http.StatusAccepted, resp)
}

// acquire takes a delivery slot, waiting up to h.wait.
func (h *Receiver) acquire(ctx context.Context) bool {
	select {
	case h.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(h.wait)
	defer t.Stop()
	select {
	case h.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// resolveTag sets x's digest and manifest facts from what its tag points at
// now. The status is 422 when the tag does not exist (or the source cannot
// resolve tags) and 503 when the registry did not answer: the sender retries,
// nothing was acknowledged.
func (h *Receiver) resolveTag(ctx context.Context, x *Incoming, seen map[string]resolution) (int, error) {
	e := &x.Event
	ref := e.Registry + "/" + e.Repository + ":" + e.Tag
	if h.resolve == nil {
		return http.StatusUnprocessableEntity, fmt.Errorf("%s names no digest and source %s cannot resolve tags", ref, h.name)
	}
	r, ok := seen[ref]
	if !ok {
		r.digest, r.manifest, r.err = h.resolve.Resolve(ctx, e.Registry, e.Repository, e.Tag)
		seen[ref] = r
	}
	d, m, err := r.digest, r.manifest, r.err
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusUnprocessableEntity, fmt.Errorf("resolving %s: %w", ref, err)
	case err != nil:
		return http.StatusServiceUnavailable, fmt.Errorf("resolving %s (retry): %w", ref, err)
	}
	if err := ValidDigest(d); err != nil {
		return http.StatusServiceUnavailable, fmt.Errorf("resolving %s: registry answered %w", ref, err)
	}
	if len(m) > MaxManifestBytes {
		return http.StatusUnprocessableEntity, fmt.Errorf("resolving %s: manifest is %d bytes, more than %d", ref, len(m), MaxManifestBytes)
	}
	if err := checkManifest(d, m); err != nil {
		return http.StatusServiceUnavailable, fmt.Errorf("resolving %s: %w", ref, err)
	}
	e.Digest = d
	if err := x.describe(m); err != nil {
		return http.StatusUnprocessableEntity, fmt.Errorf("resolving %s: %w", ref, err)
	}
	return 0, nil
}

// resolution is one tag's answer, asked once per delivery.
type resolution struct {
	digest   string
	manifest []byte
	err      error
}

func orDefault(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// InputError is returned by a Sink when an event names something that does
// not exist (e.g. a tag the registry does not know): 422, not a retry.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// Stats counts deliveries by source, outcome and reason (exported as metrics).
type Stats struct {
	mu sync.Mutex
	m  map[[3]string]*atomic.Int64
}

// NewStats returns empty counters.
func NewStats() *Stats { return &Stats{m: map[[3]string]*atomic.Int64{}} }

func (s *Stats) add(source, outcome, reason string, n int) {
	k := [3]string{source, outcome, reason}
	s.mu.Lock()
	c, ok := s.m[k]
	if !ok {
		c = &atomic.Int64{}
		s.m[k] = c
	}
	s.mu.Unlock()
	c.Add(int64(n))
}

// Counter is one (source, outcome, reason) count.
type Counter struct {
	Source, Outcome, Reason string
	Value                   int64
}

// Snapshot returns every counter.
func (s *Stats) Snapshot() []Counter {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Counter, 0, len(s.m))
	for k, v := range s.m {
		out = append(out, Counter{k[0], k[1], k[2], v.Load()})
	}
	return out
}
