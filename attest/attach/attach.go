// Package attach is the sign stage: for each subject of a job (the image,
// or an index and each platform) it signs the image and every analysis
// document — inline, or as a document reference when a document is too
// large to sign inline — attaches them, and confirms they are attached
// before the stage counts as done. Signing and attaching are attest/sign's.
package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// Stage signs one job: the image signature and every analysis
// document, per subject (the image, or the index and each platform), in one
// signing session (one key, one Fulcio certificate while it lasts). Any
// failure fails the stage: nothing is marked attested unless every
// signature is attached.
type Stage struct {
	k           *sign.Keyless
	db          Store
	rc          *registry.Client
	concurrency int
	maxPayload  int64
	log         *slog.Logger
}

// Store holds the analysis documents and the audit log (*store.DB).
type Store interface {
	Blob(ctx context.Context, digest string) ([]byte, error)
	Auditor
}

// Auditor appends to the audit log.
type Auditor interface {
	Audit(ctx context.Context, e store.AuditEntry) error
}

// Options configure the sign stage.
type Options struct {
	// Concurrency bounds the signatures made at once (≥ 1).
	Concurrency int
	// MaxPayload is the largest document signed inline; a larger one is
	// pushed as its own artifact and a document reference is signed (0:
	// no limit).
	MaxPayload int64
	Logger     *slog.Logger
}

// New builds the sign stage on signer k.
func New(k *sign.Keyless, db Store, rc *registry.Client, o Options) *Stage {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Stage{k: k, db: db, rc: rc, concurrency: max(1, o.Concurrency), maxPayload: o.MaxPayload, log: o.Logger}
}

// predicateFor is the predicate type an artifact is attested as: its own,
// or a document-ref when it is too large to sign inline.
func (s *Stage) predicateFor(a store.Artifact) string {
	if s.maxPayload > 0 && a.Size > s.maxPayload && a.MediaType != analyze.MediaTypeInToto {
		return attest.DocumentRefType(a.Kind)
	}
	return a.PredicateType
}

func (s *Stage) Sign(ctx context.Context, t *pipeline.Target) error {
	// A digest flooded with referrers fails for good: they stay until
	// someone deletes them, so a retry would meet the same list.
	return pipeline.PermanentIf(s.sign(ctx, t), registry.ErrTooManyReferrers, "delete the stray referrers, then attestd requeue")
}

func (s *Stage) sign(ctx context.Context, t *pipeline.Target) error {
	if len(t.Artifacts) == 0 {
		return errors.New("nothing to sign: the record has no analysis documents")
	}
	host, repo, _, err := store.SplitRef(t.Ref)
	if err != nil {
		return pipeline.Permanent(err)
	}
	repoName := host + "/" + repo
	sess, err := s.k.Session()
	if err != nil {
		return err
	}
	sess.Batch() // a subject's attestations are listed at once, after signing
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, s.concurrency))
	subjects := map[string]bool{}
	var pushedMu sync.Mutex
	pushed := map[string][]string{} // subject → document artifacts pushed for it
	for _, a := range t.Artifacts {
		if !subjects[a.Subject] {
			subjects[a.Subject] = true
			ref := repoName + "@" + a.Subject
			g.Go(func() error { return sess.SignImage(gctx, ref) })
		}
		g.Go(func() error {
			body, err := s.db.Blob(gctx, a.Digest)
			if err != nil {
				return fmt.Errorf("%s of %s: %w", a.Kind, a.Subject, err)
			}
			pt := s.predicateFor(a)
			payload := body
			switch {
			case pt != a.PredicateType:
				// Too large to sign inline: the document becomes its own
				// artifact, the signed statement carries its digest.
				art, err := sess.PushDocument(gctx, repoName+"@"+a.Subject, a.MediaType, a.MediaType, body,
					map[string]string{"dev.attestd.predicateType": a.PredicateType})
				if err != nil {
					return err
				}
				pushedMu.Lock()
				pushed[a.Subject] = append(pushed[a.Subject], art.DigestStr())
				pushedMu.Unlock()
				ref, _ := json.Marshal(attest.DocumentRef{PredicateType: a.PredicateType, MediaType: a.MediaType,
					Digest: a.Digest, Size: a.Size, URI: "oci://" + art.String()})
				if payload, err = attest.Statement(repoName, a.Subject, pt, ref); err != nil {
					return err
				}
			case a.MediaType != analyze.MediaTypeInToto: // provenance is a statement already
				if payload, err = attest.Statement(repoName, a.Subject, pt, body); err != nil {
					return err
				}
			}
			return sess.AttestStatement(gctx, repoName+"@"+a.Subject, pt, payload)
		})
	}
	err = g.Wait()
	if ferr := sess.Flush(context.WithoutCancel(ctx)); ferr != nil {
		err = errors.Join(err, ferr)
	}
	// What was attached is audited whether or not the rest succeeded: a
	// retry finds those signatures attached and makes (and audits) no new
	// ones, so this is their only record.
	if aerr := AuditWritten(context.WithoutCancel(ctx), s.db, t.Ref, repoName, sess.Written()); aerr != nil {
		return errors.Join(err, aerr)
	}
	if err != nil {
		if errors.Is(err, sign.ErrOtherFormat) {
			return pipeline.Permanent(err) // a retry cannot help: the config or the image must change
		}
		return err
	}
	// Done only when every signature and attestation is really attached.
	want := map[string][]string{}
	for _, a := range t.Artifacts {
		if len(want[a.Subject]) == 0 {
			want[a.Subject] = append(want[a.Subject], sign.PredicateSignature)
		}
		want[a.Subject] = append(want[a.Subject], s.predicateFor(a))
	}
	for subj, pts := range want {
		missing, err := sess.Missing(ctx, repoName+"@"+subj, pts)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return fmt.Errorf("after attaching, %s lacks %v", subj, missing)
		}
	}
	for subj, arts := range pushed {
		d, err := name.NewDigest(repoName + "@" + subj)
		if err != nil {
			return err
		}
		refs, err := s.rc.Referrers(ctx, d, "")
		if err != nil {
			return err
		}
		for _, a := range arts {
			if !slices.ContainsFunc(refs, func(r v1.Descriptor) bool { return r.Digest.String() == a }) {
				return fmt.Errorf("after pushing, document artifact %s is not among the referrers of %s", a, subj)
			}
		}
	}
	if err := s.db.Audit(ctx, store.AuditEntry{Actor: "pipeline", Action: "attestations.attached", Subject: t.Ref, Repo: repoName,
		Digest: t.Ref[strings.LastIndex(t.Ref, "@")+1:], Details: map[string]string{
			"subjects": fmt.Sprint(len(subjects)), "documents": fmt.Sprint(len(t.Artifacts)), "certificates": fmt.Sprint(sess.Certificates()),
		}}); err != nil {
		return err
	}
	s.log.InfoContext(ctx, "signed", "digest", t.Ref, "subjects", len(subjects), "documents", len(t.Artifacts), "certificates", sess.Certificates())
	return nil
}

// AuditWritten records each signature a session attached, with its
// transparency-log entries and timestamps.
func AuditWritten(ctx context.Context, db Auditor, ref, repo string, ws []sign.Written) error {
	for _, w := range ws {
		d := map[string]string{"subject": w.Subject, "predicateType": w.PredicateType, "bundle": w.Bundle, "timestamps": fmt.Sprint(w.Timestamps)}
		for i, e := range w.LogEntries {
			d[fmt.Sprintf("log.%d", i)] = e
		}
		if err := db.Audit(ctx, store.AuditEntry{Actor: "pipeline", Action: store.AuditSignature, Subject: ref, Repo: repo,
			Digest: ref[strings.LastIndex(ref, "@")+1:], Details: d}); err != nil {
			return err
		}
	}
	return nil
}

// Attester signs one statement in a session of its own and audits what it
// attached: the gate's verification summary.
type Attester struct {
	Signer *sign.Keyless
	Audit  Auditor
}

// AttestStatement signs statement (about ref's digest) and attaches it.
func (a Attester) AttestStatement(ctx context.Context, ref, predicateType string, statement []byte) error {
	sess, err := a.Signer.Session()
	if err != nil {
		return err
	}
	if err := sess.AttestStatement(ctx, ref, predicateType, statement); err != nil {
		return err
	}
	host, repo, _, err := store.SplitRef(ref)
	if err != nil {
		return err
	}
	return AuditWritten(ctx, a.Audit, ref, host+"/"+repo, sess.Written())
}
