package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync"
	"sync/atomic"
)

// Incoming is one parsed event with what the filter needs beyond it.
type Incoming struct {
	Event     Event
	UserAgent string   // of the client that caused it, when the format says
	RefTypes  []string // media types of config and layers, when listed
}

// Parser turns a request body into events. Errors are the sender's fault
// (400) and should say what was wrong.
type Parser interface {
	Parse(r *http.Request, body []byte) ([]Incoming, error)
	// ContentTypes lists the accepted media types (415 otherwise).
	ContentTypes() []string
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
}

// ReceiverOptions configure NewReceiver.
type ReceiverOptions struct {
	MaxBody int64 // bytes; 413 above
	Logger  *slog.Logger
	Stats   *Stats
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
	return &Receiver{name: name, parser: p, auth: a, filter: f, sink: s, maxBody: o.MaxBody, log: o.Logger, stats: o.Stats}, nil
}

// Response is the JSON body of every answer.
type Response struct {
	Error    string         `json:"error,omitempty"`
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

// ServeHTTP implements http.Handler. Order: method, header authentication,
// size cap, body authentication, content type, parse, filter, durable
// accept — so nothing is written for any rejected delivery.
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
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || !contains(h.parser.ContentTypes(), mt) {
		h.reject(w, http.StatusUnsupportedMediaType, "content_type", fmt.Sprintf("content type %q not accepted; want one of %v", r.Header.Get("Content-Type"), h.parser.ContentTypes()))
		return
	}
	in, err := h.parser.Parse(r, body)
	if err != nil {
		h.reject(w, http.StatusBadRequest, "malformed", err.Error())
		return
	}
	resp := Response{Received: len(in), Ignored: map[string]int{}}
	var keep []Event
	for _, x := range in {
		if reason := h.filter.Classify(x.Event, x.UserAgent, x.RefTypes); reason != "" {
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
			writeJSON(w, http.StatusServiceUnavailable, Response{Error: "not stored, retry: " + err.Error(), Received: len(in)})
			return
		}
		resp.Accepted, resp.Result = len(keep), acc
		h.stats.add(h.name, "accepted", "", len(keep))
	}
	writeJSON(w, http.StatusAccepted, resp)
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
