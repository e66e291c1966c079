package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/test/stack"
)

// TestAuditHTMLReportInChromium: the HTML compliance report of a real run
// (one image promoted, one denied) renders in Debian's headless Chromium;
// the test reads the rendered text (innerText, not the HTML source) and
// takes a screenshot.
func TestAuditHTMLReportInChromium(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	chromium, err := stack.Chromium(ctx, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	const identity = "attestd@example.test"
	cfg := signingConfigWith(t, identity, stk.SigningConfig, fmt.Sprintf(
		"gate:\n  policy: %s\n  signed_timestamps: 1\n  promotion:\n    - from: %s/report/*\n      to: %s/report-prod/{name}\n",
		gatePolicy(t, identity), stk.RegistryHost, stk.RegistryHost))
	dataDir := t.TempDir()
	fx := allFixtures(t)
	good := pushFixture(t, fx["static-go"], "report/good:v1.0.0")
	bad := pushFixture(t, fx["old-x-text"], "report/vulnerable:v1.0.0")
	for _, ref := range []string{good.Context().Tag("v1.0.0").String(), bad.Context().Tag("v1.0.0").String()} {
		t.Run("process", func(t *testing.T) { processed(t, cfg, dataDir, ref) }) // the store closes after each
	}
	report := filepath.Join(t.TempDir(), "report.html")
	var out bytes.Buffer
	if code := app.Run(ctx, []string{"audit", "export", "--format", "html", "-o", report, "-c", cfg, "--data-dir", dataDir}, &out, &out); code != 0 {
		t.Fatalf("export: %s", out.String())
	}
	start := time.Now()
	page, err := stack.Render(ctx, chromium, "file://"+report, 1400, 900)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rendered in %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{
		"attestd compliance report",
		"Audit log: intact",
		stk.RegistryHost + "/report/good", stk.RegistryHost + "/report/vulnerable",
		"promoted", "denied",
		stk.RegistryHost + "/report-prod/good:v1.0.0",
		"vulnerabilities.max_severity",         // the denial's reason, in the table and the reasons list
		"0/1/0/0/0/2", "unknown gates as high", // x/text v0.3.5: 1 high + 2 unknown (C/H/M/L/N/U)
		"Decisions over time", "Denial reasons",
	} {
		if !strings.Contains(page.Text, want) {
			t.Errorf("the rendered report does not show %q:\n%s", want, page.Text)
		}
	}
	img, err := png.Decode(bytes.NewReader(page.PNG))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 400 {
		t.Errorf("screenshot is %v", b)
	}
	shot := filepath.Join(runDir, "audit-report.png")
	if err := os.WriteFile(shot, page.PNG, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes, %v)", shot, len(page.PNG), img.Bounds())
}
