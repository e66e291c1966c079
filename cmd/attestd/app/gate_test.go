package app

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
)

// TestFactsWorstCase: two verified hardening reports combine to the worst
// case; of two vulnerability reports the newest scan decides; a finding an
// exception suppressed counts again once the exception expired.
func TestFactsWorstCase(t *testing.T) {
	var s policy.Subject
	for _, r := range []string{
		`{"checks":[{"id":"nonroot-user","status":"pass"},{"id":"healthcheck","status":"pass"}]}`,
		`{"checks":[{"id":"nonroot-user","status":"fail"},{"id":"healthcheck","status":"pass"}]}`,
	} {
		if err := addFacts(&s, attest.PredicateHardening, json.RawMessage(r), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(s.Hardening.Failed, []string{"nonroot-user"}) || !slices.Equal(s.Hardening.Passed, []string{"healthcheck"}) {
		t.Fatalf("hardening = %+v", s.Hardening)
	}

	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	old := `{"invocation":{"parameters":{"counts":{"unknownAs":"high"}}},"metadata":{"scanFinishedOn":"2026-11-01T00:00:00Z"}}`
	newer := `{"invocation":{"parameters":{"counts":{"high":1,"unknownAs":"high"},"suppressed":[
	  {"vulnerability":"CVE-1","package":"p","version":"1","severity":"critical","by":"exception","expires":"2026-11-20T00:00:00Z"},
	  {"vulnerability":"CVE-2","package":"p","version":"1","severity":"critical","by":"exception","expires":"2026-12-20T00:00:00Z"}]}},
	 "scanner":{"result":{"matches":[{"vulnerability":{"id":"CVE-3"},"artifact":{"name":"p","version":"1"}}]}},
	 "metadata":{"scanFinishedOn":"2026-11-10T00:00:00Z"}}`
	for _, r := range []string{newer, old} {
		if err := addFacts(&s, vuln.PredicateType, json.RawMessage(r), now); err != nil {
			t.Fatal(err)
		}
	}
	v := s.Vulnerabilities
	if v.High != 1 || v.Critical != 1 || len(v.Findings) != 2 {
		t.Fatalf("vulns = %+v", v)
	}
	if err := addFacts(&s, vuln.PredicateType, json.RawMessage(`{"invocation":{}}`), now); err == nil {
		t.Fatal("a vuln predicate without counts was accepted")
	}
	// The gate then drops the type's facts altogether, so a rule needing
	// them denies rather than trusting the other, readable report.
	dropFacts(&s, vuln.PredicateType)
	if s.Vulnerabilities != nil {
		t.Fatal("vulnerability facts survived an unreadable report")
	}
}

// TestAuditExceptionsOnce: every configured exception is audited once as
// added, and once more when it has expired, however often it is checked.
func TestAuditExceptionsOnce(t *testing.T) {
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	cfg := configs.Default()
	cfg.Analysis.Vulnerabilities.Exceptions = []configs.VulnException{
		{Vulnerability: "CVE-1", Owner: "a@x", Reason: "r", Expires: now.Add(time.Hour)},
		{Vulnerability: "CVE-2", Owner: "b@x", Reason: "r", Ticket: "T-2", Expires: now.Add(-time.Hour)},
	}
	for range 3 {
		if err := auditExceptions(context.Background(), db, cfg, now); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	_ = db.AuditEntries(context.Background(), 1, func(e store.AuditEntry, _ []byte) error {
		got = append(got, e.Action+" "+e.Details["vulnerability"])
		return nil
	})
	want := []string{"exception.added CVE-1", "exception.added CVE-2", "exception.expired CVE-2"}
	if !slices.Equal(got, want) {
		t.Fatalf("audit = %v, want %v", got, want)
	}
}

// TestStageHistogram: observations land in cumulative buckets per stage
// and result, in Prometheus' text format.
func TestStageHistogram(t *testing.T) {
	var m stageMetrics
	m.observe("sign", nil, 300*time.Millisecond)
	m.observe("sign", nil, 3*time.Second)
	m.observe("sign", errors.New("fulcio"), time.Second)
	var b strings.Builder
	m.write(&b)
	for _, want := range []string{
		`attestd_stage_duration_seconds_bucket{stage="sign",result="ok",le="0.5"} 1`,
		`attestd_stage_duration_seconds_bucket{stage="sign",result="ok",le="5"} 2`,
		`attestd_stage_duration_seconds_bucket{stage="sign",result="ok",le="+Inf"} 2`,
		`attestd_stage_duration_seconds_count{stage="sign",result="error"} 1`,
		`attestd_stage_duration_seconds_sum{stage="sign",result="ok"} 3.3`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lacks %s\n%s", want, b.String())
		}
	}
}
