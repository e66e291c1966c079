// Package gate is the promotion gate: it evaluates a digest (verify every
// signature and attestation → build the policy input from what verified →
// apply the policy → sign a verification summary) and promotes an allowed
// one (plan the verified closure → copy exactly that → verify it in the
// destination → write the tag last).
//
// Its trust rule: a fact counts only when it came from a bundle that
// verified for a signer allowed for that predicate type and that subject
// digest (attest/verify enforces both). Anything the image author declares
// (labels) is a claim and named so in the policy input. Promotion copies
// nothing that was not verified, and a stored decision is acted on only
// while it still holds.
package gate

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// Verifier verifies every signature and attestation attached to a digest
// reference (attest/verify.Verifier).
type Verifier interface {
	Verify(ctx context.Context, ref string) (verify.Result, error)
	// VerifyFresh is Verify reading every referrer manifest anew (the
	// destination check: what is in prod is read in prod).
	VerifyFresh(ctx context.Context, ref string) (verify.Result, error)
}

// Attester signs an in-toto statement about ref's digest and attaches it
// (the verification summary), recording what it wrote.
type Attester interface {
	AttestStatement(ctx context.Context, ref, predicateType string, statement []byte) error
}

// Store is the state the gate reads and the audit log it writes
// (*store.DB). Check and Plan need none.
type Store interface {
	Image(ctx context.Context, ref string) (*store.Record, error)
	Audit(ctx context.Context, e store.AuditEntry) error
	// AuditOnce appends e unless an entry was appended under key before;
	// AuditMarked appends e and marks key in any case.
	AuditOnce(ctx context.Context, key string, e store.AuditEntry) (bool, error)
	AuditMarked(ctx context.Context, key string, e store.AuditEntry) error
}

// Options configure a Gate.
type Options struct {
	Policy   *policy.Policy
	Verifier Verifier
	// Attester signs the verification summary; nil: Evaluate fails (a
	// decision without its signed summary is not made).
	Attester Attester
	Store    Store
	Registry *registry.Client
	// Rules are the promotion rules (validated by New).
	Rules []promote.Rule
	// Timeout bounds one evaluation (verification and policy); when it
	// runs out the decision is a deny.
	Timeout time.Duration
	// Own reports whether a signer is attestd itself: among several
	// verified vulnerability reports, attestd's own newest scan decides.
	Own func(issuer, subject string) bool
	// Version is attestd's version, written in the verification summary.
	Version string
	Logger  *slog.Logger
	Now     func() time.Time
}

// Gate is the evaluate and promote stages.
type Gate struct {
	o Options
	// packages remembers SPDX package counts by signed statement digest
	// (see spdxPackages).
	packagesMu sync.Mutex
	packages   map[string]int
}

// New checks o and builds a Gate.
func New(o Options) (*Gate, error) {
	switch {
	case o.Policy == nil:
		return nil, errors.New("gate: no policy")
	case o.Verifier == nil:
		return nil, errors.New("gate: no verifier")
	}
	if err := promote.Validate(o.Rules); err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Own == nil {
		o.Own = func(string, string) bool { return false }
	}
	return &Gate{o: o}, nil
}
