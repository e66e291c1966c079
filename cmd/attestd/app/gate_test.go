package app

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
)

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
