package audit

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/store"
)

// TestHTMLEscapesAndCounts: registry-controlled strings (repository names,
// reasons) are escaped; decisions are counted per day; the file is
// self-contained (no scripts, no external URLs).
func TestHTMLEscapesAndCounts(t *testing.T) {
	db, err := store.Open(filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	ref := "r.test/<script>alert(1)</script>@sha256:" + strings.Repeat("a", 64)
	for _, e := range []store.AuditEntry{
		{Action: store.AuditDecision, Subject: ref, Repo: "r.test/<script>alert(1)</script>", Digest: "sha256:" + strings.Repeat("a", 64),
			Details: map[string]string{"allow": "false", "reason.0": "rego.<img src=x onerror=alert(1)>: bad"}},
		{Action: store.AuditDecision, Subject: ref, Details: map[string]string{"allow": "true"}},
	} {
		if err := db.Audit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	n, err := HTML(ctx, db, &b, Filter{}, time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC))
	if err != nil || n != 2 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	out := b.String()
	for _, bad := range []string{"<script", "<img", "https://", "href=", "url("} {
		if strings.Contains(out, bad) {
			t.Errorf("report contains %q", bad)
		}
	}
	if strings.Count(out, "http://") != strings.Count(out, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Error("report refers to an external URL")
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "rego.&lt;img src=x onerror=alert(1)&gt;", "1 allowed", "1 denied", "intact"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
