package gate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// Override is a person promoting against (or without) the gate's decision.
type Override struct {
	Reason string
	Actor  string // who: a verified identity or what --actor said
}

// Promote is the pipeline's promote stage: the stored decision must allow,
// and must still hold — the digest is verified and decided again now, with
// the policy in force (a deleted or replaced attestation, a rescan's new
// findings, a changed policy all count); a decision whose policy changed or
// whose summary expired gets a new signed summary. Then exactly the
// verified closure is copied, checked in the destination, and tagged last.
func (g *Gate) Promote(ctx context.Context, t *pipeline.Target) error {
	// Flooded with referrers: a retry would meet the same list.
	return pipeline.PermanentIf(g.promote(ctx, t), registry.ErrTooManyReferrers, "delete the stray referrers, then attestd requeue")
}

func (g *Gate) promote(ctx context.Context, t *pipeline.Target) error {
	if g.o.Store == nil {
		return errors.New("gate: no store")
	}
	rec, err := g.o.Store.Image(ctx, t.Ref)
	if err != nil {
		return err
	}
	if rec.Decision == nil || !rec.Decision.Allow {
		return pipeline.Permanent(errors.New("promotion without an allow decision"))
	}
	edges, why := promote.Plan(g.o.Rules, rec.Registry+"/"+rec.Repository, rec.Digest, rec.Decision.Tags)
	if len(edges) == 0 {
		return pipeline.Permanent(errors.New("nothing to promote: " + why))
	}
	ev, err := g.Recheck(ctx, t, rec)
	if err != nil {
		return err
	}
	plan, err := g.Plan(ctx, ev, edges)
	if err != nil {
		return err
	}
	plan.Job = t.Job
	return g.Run(ctx, plan, nil)
}

// Recheck decides rec's digest again before it is promoted: a deny now
// refuses the promotion (permanently, with the reasons); an allow whose
// stored decision was made under another policy, or whose summary is no
// longer valid, is signed anew. The evaluation returned is the one the
// promotion copies.
func (g *Gate) Recheck(ctx context.Context, t *pipeline.Target, rec *store.Record) (*Evaluation, error) {
	ev, err := g.Check(ctx, t, rec.Decision.Tags)
	if err != nil {
		return nil, err
	}
	g.withRecorded(ctx, ev, rec)
	d := ev.Decision
	if gone := goneInputs(ev, rec.Decision.Inputs); len(gone) > 0 {
		d.Allow = false
		d.Violations = append(d.Violations, policy.Violation{Rule: "inputs", Subject: rec.Digest,
			Message: fmt.Sprintf("attestations the decision rested on are gone or no longer verify: %s (re-evaluate: attestd requeue)", strings.Join(gone, ", "))})
		ev.Decision = d
	}
	if !d.Allow {
		out := decisionOf(d, rec.Decision.Tags, "")
		g.auditRedecided(ctx, rec, ev, "denied at promotion")
		return nil, pipeline.Permanent(fmt.Errorf("the decision no longer holds: %s", strings.Join(out.Reasons, "; ")))
	}
	validity := time.Duration(g.o.Policy.VSA.Validity)
	stale := ""
	switch {
	case rec.Decision.PolicyDigest != d.PolicyDigest:
		stale = fmt.Sprintf("policy changed from %s to %s", rec.Decision.PolicyDigest, d.PolicyDigest)
	case rec.Decision.VSA == "":
		stale = "no verification summary was recorded"
	case g.o.Now().After(rec.Decision.Time.Add(validity)):
		stale = fmt.Sprintf("its verification summary expired at %s", rec.Decision.Time.Add(validity).UTC().Format(time.RFC3339))
	case !hasVSA(ev, rec.Decision.VSA):
		stale = "its verification summary is no longer attached"
	}
	if stale == "" {
		ev.VSA = rec.Decision.VSA
		return ev, nil
	}
	vsa, err := g.signVSA(ctx, ev)
	if err != nil {
		return nil, fmt.Errorf("verification summary: %w", err)
	}
	g.auditRedecided(ctx, rec, ev, stale)
	// The closure must include the summary just attached; and the decision
	// must still allow on what is attached now.
	ev, err = g.Check(ctx, t, rec.Decision.Tags)
	if err != nil {
		return nil, err
	}
	g.withRecorded(ctx, ev, rec)
	if !ev.Decision.Allow {
		out := decisionOf(ev.Decision, rec.Decision.Tags, "")
		return nil, pipeline.Permanent(fmt.Errorf("the decision no longer holds: %s", strings.Join(out.Reasons, "; ")))
	}
	if !hasVSA(ev, vsa) {
		return nil, errors.New("the verification summary just signed does not verify: promotion stopped")
	}
	ev.VSA = vsa
	return ev, nil
}

// hasVSA reports whether the summary whose statement digest is vsa
// verified for ev's digest.
// goneInputs lists the decision's input bundles that did not verify now.
func goneInputs(ev *Evaluation, inputs []string) []string {
	have := map[string]bool{}
	for _, s := range ev.Subjects {
		for _, evs := range s.Result.All {
			for _, e := range evs {
				have[e.Bundle] = true
			}
		}
	}
	var gone []string
	for _, in := range inputs {
		if !have[in] {
			gone = append(gone, in)
		}
	}
	return gone
}

// withRecorded folds what attestd itself recorded since the signed scan
// — a rescan's findings against a newer database (store.RecordRescan) —
// into the input as the worst case of both, and decides again. It can only
// deny more: local records never stand in for a signed report that is
// missing.
func (g *Gate) withRecorded(ctx context.Context, ev *Evaluation, rec *store.Record) {
	changed := false
	for i := range ev.Input.Subjects {
		s := &ev.Input.Subjects[i]
		v := s.Vulnerabilities
		if v == nil {
			continue
		}
		for _, f := range rec.Facts {
			if f.Subject != s.Digest || f.Vulns == nil || !f.Vulns.ScannedAt.After(v.ScannedAt) {
				continue
			}
			r := f.Vulns
			w := *v
			w.Critical, w.High, w.Medium = max(w.Critical, r.Critical), max(w.High, r.High), max(w.Medium, r.Medium)
			w.Low, w.Negligible, w.Unknown = max(w.Low, r.Low), max(w.Negligible, r.Negligible), max(w.Unknown, r.Unknown)
			w.Findings = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(w.Findings), r.Findings...))))
			if w.Critical != v.Critical || w.High != v.High || w.Medium != v.Medium || w.Low != v.Low || w.Negligible != v.Negligible || w.Unknown != v.Unknown {
				s.Vulnerabilities, changed = &w, true
			}
		}
	}
	if changed {
		ev.Decision = g.o.Policy.Evaluate(ctx, ev.Input)
	}
}

func hasVSA(ev *Evaluation, vsa string) bool {
	return vsa != "" && len(ev.Subjects) > 0 && slices.ContainsFunc(ev.Subjects[0].Result.All[slsa.VSAPredicateType],
		func(e verify.Evidence) bool { return e.Statement == vsa })
}

func (g *Gate) auditRedecided(ctx context.Context, rec *store.Record, ev *Evaluation, why string) {
	details := map[string]string{"allow": fmt.Sprint(ev.Decision.Allow), "policy": ev.Decision.PolicyDigest, "why": why}
	for i, v := range ev.Decision.Violations {
		details[fmt.Sprintf("reason.%d", i)] = v.String()
	}
	if err := g.o.Store.Audit(ctx, store.AuditEntry{Actor: "gate", Action: store.AuditDecision, Subject: rec.Ref,
		Repo: rec.Registry + "/" + rec.Repository, Digest: rec.Digest, Details: details}); err != nil {
		g.o.Logger.ErrorContext(ctx, "audit of a re-decision failed", "digest", rec.Ref, "err", err)
	}
}

// Run carries out plan: every planned child, then the digest, its
// verified referrers and classic tags, into each destination repository;
// checks there that what arrived is exactly verified; then writes the
// tags, last. override (nil: the gate's own promotion) is audited before
// anything is copied, and its outcome after.
func (g *Gate) Run(ctx context.Context, plan *Plan, override *Override) error {
	if g.o.Store == nil {
		return errors.New("gate: no store for the audit log")
	}
	rc := g.o.Registry.Writes() // one handshake per repository for the whole promotion
	src, err := rc.ParseRepository(plan.Source)
	if err != nil {
		return pipeline.Permanent(err)
	}
	ref := plan.Source + "@" + plan.Digest
	actor := "pipeline"
	if override != nil {
		actor = override.Actor
		if err := g.audit(ctx, actor, store.AuditOverride, plan, map[string]string{"phase": "intent", "reason": override.Reason, "to": edgesString(plan.Edges)}); err != nil {
			return err // no record of the intent, no promotion
		}
	}
	byRepo := map[string][]string{}
	var repos []string
	for _, e := range plan.Edges {
		dst, tag, ok := cutTag(e.Dst)
		if !ok {
			return pipeline.Permanent(fmt.Errorf("edge %s: destination is not repo:tag", e))
		}
		if _, seen := byRepo[dst]; !seen {
			repos = append(repos, dst)
		}
		byRepo[dst] = append(byRepo[dst], tag)
	}
	for _, dstName := range repos {
		dst, err := rc.ParseRepository(dstName)
		if err != nil {
			return pipeline.Permanent(err)
		}
		if err := copyClosure(ctx, rc, src, dst, plan); err != nil {
			return err
		}
		if err := g.checkDestination(ctx, dst, plan, override != nil); err != nil {
			return err
		}
		// The tag last: only a complete, verified copy is ever visible by tag.
		for _, tag := range byRepo[dstName] {
			// What the tag pointed at before: a redo that finds it on
			// plan.Digest already is not a new move.
			prev := ""
			if _, desc, err := rc.Resolve(ctx, dst.Tag(tag)); err == nil {
				prev = desc.Digest.String()
			}
			if err := rc.Tag(ctx, dst.Digest(plan.Digest), dst.Tag(tag)); err != nil {
				return err
			}
			details := map[string]string{"from": ref, "to": dst.Tag(tag).String(), "digest": plan.Digest}
			if prev != "" && prev != plan.Digest {
				details["replaced"] = prev
			}
			if override != nil {
				details["reason"], details["phase"] = override.Reason, "done"
				if err := g.audit(ctx, actor, store.AuditOverride, plan, details); err != nil {
					return err
				}
			} else if err := g.auditPromotion(ctx, plan, details, prev == plan.Digest); err != nil {
				return err
			}
			g.o.Logger.InfoContext(ctx, "promoted", "digest", ref, "to", dst.Tag(tag).String(), "override", override != nil)
		}
	}
	return nil
}

func (g *Gate) audit(ctx context.Context, actor, action string, plan *Plan, details map[string]string) error {
	return g.o.Store.Audit(ctx, auditEntry(actor, action, plan, details))
}

func auditEntry(actor, action string, plan *Plan, details map[string]string) store.AuditEntry {
	return store.AuditEntry{Actor: actor, Action: action, Subject: plan.Source + "@" + plan.Digest,
		Repo: plan.Source, Digest: plan.Digest, Details: details}
}

// auditPromotion records that plan's job promoted to details["to"]. Every
// move of the tag is logged. A redo that found the tag on plan.Digest
// already (the job was killed after tagging, perhaps after its entry) is
// logged only if this job never logged a promotion to that tag, so a
// crash does not log one promotion twice. (A requeue is a new job, and
// its promotion a new entry; a retry that moves the tag back after another
// job moved it is a move, and logged.)
func (g *Gate) auditPromotion(ctx context.Context, plan *Plan, details map[string]string, already bool) error {
	if plan.Job == 0 {
		return g.audit(ctx, "pipeline", store.AuditPromotion, plan, details)
	}
	details["job"] = strconv.FormatUint(plan.Job, 10)
	key := "promotion/job-" + details["job"] + "/" + details["to"]
	e := auditEntry("pipeline", store.AuditPromotion, plan, details)
	if !already {
		return g.o.Store.AuditMarked(ctx, key, e)
	}
	_, err := g.o.Store.AuditOnce(ctx, key, e)
	return err
}

func edgesString(es []promote.Edge) string {
	var s []string
	for _, e := range es {
		s = append(s, e.Dst)
	}
	return strings.Join(s, ", ")
}

// copyClosure copies the plan into dst: children, then the manifest byte
// for byte (an index refers to exactly the planned children), then the
// referrers (concurrently, a subject's fallback index written once) and
// classic tags by the digests that were verified.
func copyClosure(ctx context.Context, rc *registry.Client, src, dst name.Repository, plan *Plan) error {
	for _, it := range plan.Manifests {
		if _, err := rc.CopyImage(ctx, src.Digest(it.Digest), dst, it.MediaType); err != nil {
			return fmt.Errorf("%s %s: %w", it.Kind, it.Digest, err)
		}
	}
	if plan.MediaType.IsIndex() {
		if err := rc.PutManifest(ctx, dst.Digest(plan.Digest), plan.Raw, plan.MediaType); err != nil {
			return err
		}
	} else if _, err := rc.CopyImage(ctx, src.Digest(plan.Digest), dst, plan.MediaType); err != nil {
		return err
	}
	var subjects []string
	bySubject := map[string][]string{}
	for _, it := range plan.Referrers {
		if _, ok := bySubject[it.Subject]; !ok {
			subjects = append(subjects, it.Subject)
		}
		bySubject[it.Subject] = append(bySubject[it.Subject], it.Digest)
	}
	for _, s := range subjects {
		if err := rc.CopyReferrers(ctx, src, dst, s, bySubject[s]); err != nil {
			return err
		}
	}
	for _, it := range plan.Classic {
		if _, err := rc.CopyImage(ctx, src.Digest(it.Digest), dst, ""); err != nil {
			return fmt.Errorf("%s of %s: %w", it.Tag, it.Subject, err)
		}
		if err := rc.Tag(ctx, dst.Digest(it.Digest), dst.Tag(it.Tag)); err != nil {
			return err
		}
	}
	return nil
}

// checkDestination verifies in dst what the gate verified in staging:
// every required attestation (and the summary) verifies for every subject
// (not for an override), and nothing arrived that did not verify — no
// referrer, classic layer or index child outside the verified closure.
// Everything listed in dst is read in dst; only a bundle blob the verifier
// has judged before (by digest and size: the same bytes) is not read again.
func (g *Gate) checkDestination(ctx context.Context, dst name.Repository, plan *Plan, override bool) error {
	subjects := []string{plan.Digest}
	for _, it := range plan.Manifests {
		if it.Kind == "platform" {
			subjects = append(subjects, it.Digest)
		}
	}
	if _, desc, err := g.o.Registry.Resolve(ctx, dst.Digest(plan.Digest)); err != nil {
		return err
	} else if desc.MediaType != plan.MediaType {
		return fmt.Errorf("%s serves %s as %s, but %s was evaluated: promotion stopped before the tag", dst, plan.Digest, desc.MediaType, plan.MediaType)
	}
	for i, s := range subjects {
		res, err := g.o.Verifier.VerifyFresh(ctx, dst.Digest(s).String())
		if err != nil {
			return err
		}
		if res.Incomplete != "" {
			return fmt.Errorf("%s: %s: promotion stopped before the tag", dst, res.Incomplete)
		}
		verified := map[string]bool{}
		for _, evs := range res.All {
			for _, e := range evs {
				verified[e.Classic+"\x00"+e.Bundle] = true
			}
		}
		refs, err := g.o.Registry.Referrers(ctx, dst.Digest(s), "")
		if err != nil && !registry.IsNotFound(err) {
			return err
		}
		for _, r := range refs {
			if d := r.Digest.String(); !plan.planned(d) && !verified["\x00"+d] {
				return fmt.Errorf("%s holds referrer %s of %s that nobody verified: promotion stopped before the tag", dst, d, short(s))
			}
		}
		for _, ct := range res.Classic {
			for _, l := range ct.Layers {
				if !verified[ct.Tag+"\x00"+l] {
					return fmt.Errorf("%s:%s holds layer %s that did not verify: promotion stopped before the tag", dst, ct.Tag, l)
				}
			}
		}
		if override {
			continue
		}
		want := slices.Clone(g.o.Policy.Require)
		if i == 0 {
			want = append(want, slsa.VSAPredicateType)
			if len(subjects) > 1 { // an index carries signature and provenance
				want = slices.DeleteFunc(want, func(pt string) bool {
					return pt != policy.Aliases["signature"] && pt != policy.Aliases["provenance"] && pt != slsa.VSAPredicateType
				})
			}
		}
		var missing []string
		for _, pt := range want {
			if _, ok := res.Verified[pt]; !ok {
				missing = append(missing, pt)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("the copy in %s does not verify for %s: missing %s", dst, s, strings.Join(missing, ", "))
		}
	}
	return nil
}

func cutTag(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}
