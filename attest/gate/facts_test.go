package gate

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/policy"
)

// TestFactsWorstCase: two verified hardening reports combine to the worst
// case; a finding an exception suppressed counts again once the exception
// expired; an unreadable report fails its type.
func TestFactsWorstCase(t *testing.T) {
	var s policy.Subject
	for _, r := range []string{
		`{"checks":[{"id":"nonroot-user","status":"pass"},{"id":"healthcheck","status":"pass"}]}`,
		`{"checks":[{"id":"nonroot-user","status":"fail"},{"id":"healthcheck","status":"pass"}]}`,
	} {
		if err := (&Gate{}).addFacts(&s, attest.PredicateHardening, verify.Evidence{Predicate: json.RawMessage(r)}); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(s.Hardening.Failed, []string{"nonroot-user"}) || !slices.Equal(s.Hardening.Passed, []string{"healthcheck"}) {
		t.Fatalf("hardening = %+v", s.Hardening)
	}

	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	v, err := readVulnPredicate(json.RawMessage(`{"invocation":{"parameters":{"counts":{"high":1,"unknownAs":"high"},"suppressed":[
	  {"vulnerability":"CVE-1","package":"p","version":"1","severity":"critical","by":"exception","expires":"2026-11-20T00:00:00Z"},
	  {"vulnerability":"CVE-2","package":"p","version":"1","severity":"critical","by":"exception","expires":"2026-12-20T00:00:00Z"}]}},
	 "scanner":{"result":{"matches":[{"vulnerability":{"id":"CVE-3"},"artifact":{"name":"p","version":"1"}}]}},
	 "metadata":{"scanFinishedOn":"2026-11-10T00:00:00Z"}}`), now)
	if err != nil {
		t.Fatal(err)
	}
	if v.High != 1 || v.Critical != 1 || len(v.Findings) != 2 {
		t.Fatalf("vulns = %+v", v)
	}
	if _, err := readVulnPredicate(json.RawMessage(`{"invocation":{}}`), now); err == nil {
		t.Fatal("a vuln predicate without counts was accepted")
	}
	if err := (&Gate{}).addFacts(&s, attest.PredicateHardening, verify.Evidence{Predicate: json.RawMessage(`{"checks":[{"id":"x","status":"maybe"}]}`)}); err == nil {
		t.Fatal("a hardening report with an unknown status was accepted")
	}
}

// An SPDX package count is remembered by the digest of the signed
// statement (which fixes the predicate's bytes); an unreadable predicate
// is not remembered.
func TestSPDXPackagesRemembered(t *testing.T) {
	g := &Gate{}
	ev := func(stmt, pred string) verify.Evidence {
		return verify.Evidence{Statement: stmt, Predicate: json.RawMessage(pred)}
	}
	if n, err := g.spdxPackages(ev("sha256:a", `{"packages":[{},{}]}`)); n != 2 || err != nil {
		t.Fatalf("count = %d, %v", n, err)
	}
	// The same statement digest is the same bytes: the count is not read again.
	if n, _ := g.spdxPackages(ev("sha256:a", `{"packages":[]}`)); n != 2 {
		t.Errorf("remembered count = %d, want 2", n)
	}
	if n, _ := g.spdxPackages(ev("", `{"packages":[{}]}`)); n != 1 {
		t.Errorf("without a statement digest: %d, want 1", n)
	}
	if _, err := g.spdxPackages(ev("sha256:b", `{"packages":`)); err == nil {
		t.Error("an unreadable predicate was counted")
	}
	if n, err := g.spdxPackages(ev("sha256:b", `{"packages":[{},{},{}]}`)); n != 3 || err != nil {
		t.Errorf("after an unreadable predicate: %d, %v (an error is not remembered)", n, err)
	}
}
