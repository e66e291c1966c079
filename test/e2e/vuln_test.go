package e2e

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

// vulnDBDir is the grype database every attestd run of the package uses
// (ATTESTD_VULNDB_DIR), and the stock grype CLI too (GRYPE_DB_CACHE_DIR).
var vulnDBDir string

// installVulnDB builds a database from real records — the Go vulnerability
// database (sbom/vuln/testdata/osv-go) and the Debian security tracker
// records grype's own module carries — installs it, and points attestd at
// it.
func installVulnDB(ctx context.Context, dir string) error {
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/anchore/grype")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("locating grype's module: %w", err)
	}
	osv := filepath.Join(root, "sbom", "vuln", "testdata", "osv-go")
	start := time.Now()
	b, err := vuln.Build(ctx, vuln.BuildOptions{
		OSV:             []string{filepath.Join(osv, "all.zip")},
		SeverityOverlay: filepath.Join(osv, "severity-overlay.json"),
		Vunnel:          []string{filepath.Join(strings.TrimSpace(string(out)), "grype", "db", "v6", "diff", "testdata", "inputs", "debian")},
		Out:             filepath.Join(dir, "vulndb-dist"),
	})
	if err != nil {
		return err
	}
	vulnDBDir = filepath.Join(dir, "vulndb")
	if _, err := (vuln.Installation{Root: vulnDBDir}).Import(b.Archive); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: vulnerability database of %d records built and installed in %s\n", b.Records, time.Since(start).Round(time.Millisecond))
	return os.Setenv("ATTESTD_VULNDB_DIR", vulnDBDir)
}

// finding is one match, as both grype's JSON and attestd's predicate say.
type finding struct{ ID, Package, Version, Type string }

func findings(t *testing.T, doc []byte) (fs []string, distro string) {
	t.Helper()
	var d struct {
		Matches []struct {
			Vulnerability struct{ ID string } `json:"vulnerability"`
			Artifact      struct{ Name, Version, Type string }
		} `json:"matches"`
		Distro struct{ Name, Version string } `json:"distro"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	for _, m := range d.Matches {
		fs = append(fs, fmt.Sprint(finding{m.Vulnerability.ID, m.Artifact.Name, m.Artifact.Version, m.Artifact.Type}))
	}
	slices.Sort(fs)
	return fs, d.Distro.Name + " " + d.Distro.Version
}

// TestVulnerabilitiesMatchGrypeCLI: for each fixture, the findings attestd
// attests equal the stock grype CLI's (same version) on the same SBOM — the
// CycloneDX document attestd attested — and the same database.
func TestVulnerabilitiesMatchGrypeCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	fx := allFixtures(t)
	xt38, err := fixture.XText(ctx, fixture.Options{Logf: t.Logf}, "v0.3.8")
	if err != nil {
		t.Fatal(err)
	}
	bind9, err := fixture.DebianRecordedBind9(ctx, fixture.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, 1)
	dataDir := t.TempDir()
	for _, tc := range []struct {
		name, repo string
		img        fixture.Fixture
		xtext      int      // findings in golang.org/x/text; -1: don't care
		distro     string   // prefix
		want       []string // findings that must be there
	}{
		{"x-text-v0.3.5", "vuln/xtext:v0.3.5", fx["old-x-text"], 3, " ", nil},
		{"x-text-v0.3.8", "vuln/xtext:v0.3.8", fixture.Fixture{Name: "x-text-v0.3.8", Image: xt38}, 1, " ", []string{"{GO-2026-5970 golang.org/x/text v0.3.8 go-module}"}},
		// Debian's records (bind9, firefox-esr, thunderbird) match nothing in
		// minbase; with bind9 recorded, CVE-2022-38178 through debian:12.
		{"debian", "vuln/debian:12", fx["debian"], -1, "debian 12", nil},
		{"debian-bind9", "vuln/debian-bind9:12", fixture.Fixture{Name: "debian-bind9", Image: bind9}, -1, "debian 12",
			[]string{"{CVE-2022-38178 bind9 1:9.18.4-2 deb}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := pushFixture(t, tc.img, tc.repo)
			start := time.Now()
			rec, load := processed(t, cfg, dataDir, ref.String())
			t.Logf("analyse incl. scan: %s", time.Since(start).Round(time.Millisecond))
			cdx := load(artifact(t, rec, ref.DigestStr(), "cyclonedx"))
			var pred struct {
				Scanner struct {
					URI    string          `json:"uri"`
					Result json.RawMessage `json:"result"`
				} `json:"scanner"`
				Metadata struct {
					ScanStartedOn time.Time `json:"scanStartedOn"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(load(artifact(t, rec, ref.DigestStr(), "vulnerabilities")), &pred); err != nil {
				t.Fatal(err)
			}
			if pred.Scanner.URI != vuln.ScannerURI || pred.Metadata.ScanStartedOn.IsZero() {
				t.Errorf("predicate scanner %q, started %s", pred.Scanner.URI, pred.Metadata.ScanStartedOn)
			}
			ours, ourDistro := findings(t, pred.Scanner.Result)

			sbomFile := filepath.Join(t.TempDir(), "sbom.cdx.json")
			if err := os.WriteFile(sbomFile, cdx, 0o644); err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			out, err := stk.Grype(ctx, vulnDBDir, "sbom:"+sbomFile, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("grype CLI on the same SBOM: %s", time.Since(start).Round(time.Millisecond))
			theirs, theirDistro := findings(t, out)
			if !slices.Equal(ours, theirs) {
				t.Errorf("attestd found %d:\n  %s\ngrype CLI found %d:\n  %s", len(ours), strings.Join(ours, "\n  "), len(theirs), strings.Join(theirs, "\n  "))
			}
			if ourDistro != theirDistro || !strings.HasPrefix(ourDistro, tc.distro) {
				t.Errorf("distro: attestd %q, grype %q, want %q", ourDistro, theirDistro, tc.distro)
			}
			for _, w := range tc.want {
				if !slices.Contains(ours, w) {
					t.Errorf("no %s among %v", w, ours)
				}
			}
			x := 0
			for _, f := range ours {
				if strings.Contains(f, " golang.org/x/text ") {
					x++
				}
			}
			if tc.xtext >= 0 && x != tc.xtext {
				t.Errorf("%d findings in golang.org/x/text, want %d:\n%s", x, tc.xtext, strings.Join(ours, "\n"))
			}
			var facts *store.VulnCounts
			for _, f := range rec.Facts {
				if f.Subject == ref.DigestStr() {
					facts = f.Vulns
				}
			}
			if facts == nil || facts.Critical+facts.High+facts.Medium+facts.Low+facts.Negligible+facts.Unknown != len(ours) || facts.UnknownAs != "high" {
				t.Errorf("stored counts %+v for %d findings", facts, len(ours))
			}
			t.Logf("%d findings (grype CLI: %d), counts %+v", len(ours), len(theirs), facts)
		})
	}
}

// TestVulnStaleDatabaseFailsAnalysis: with a database older than
// max_db_age the scan step fails with a clear error, and the digest is not
// marked analysed.
func TestVulnStaleDatabaseFailsAnalysis(t *testing.T) {
	ref := pushFixture(t, allFixtures(t)["old-x-text"], "vuln/stale:v1")
	cfg := writeConfigExtra(t, 1, "analysis:\n  vulnerabilities:\n    max_db_age: 1s\n")
	time.Sleep(1100 * time.Millisecond)
	dataDir := t.TempDir()
	var out, errOut bytes.Buffer
	code := app.Run(context.Background(), []string{"process", "-c", cfg, "--data-dir", dataDir, ref.String()}, &out, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), "older than the allowed 1s") || !strings.Contains(errOut.String(), "attestd vulndb update") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
	rec, err := openStore(t, dataDir).Image(context.Background(), ref.String())
	if err != nil {
		t.Fatal(err)
	}
	if rec.State == store.StateAnalysed || rec.State == store.StateAttested || len(rec.Artifacts) != 0 || rec.Stages["analyse"].Status == store.StagePassed {
		t.Fatalf("stale database: state %s, stages %+v, %d artifacts", rec.State, rec.Stages, len(rec.Artifacts))
	}
}

// TestVulnRescanOnDatabaseChange: an image analysed against a database
// without GO-2026-5970 has no findings; after a database with it is
// imported, the re-scan of its stored SBOM records the new finding in the
// store and the audit log, without pulling the image again.
func TestVulnRescanOnDatabaseChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	xt38, err := fixture.XText(ctx, fixture.Options{Logf: t.Logf}, "v0.3.8")
	if err != nil {
		t.Fatal(err)
	}
	ref := pushFixture(t, fixture.Fixture{Name: "x-text-v0.3.8", Image: xt38}, "vuln/rescan:v1")

	// Database A: every Go record but GO-2026-5970.
	root, _ := stack.RepoRoot()
	zr, err := zip.OpenReader(filepath.Join(root, "sbom", "vuln", "testdata", "osv-go", "all.zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	recs := t.TempDir()
	for _, f := range zr.File {
		if f.Name == "GO-2026-5970.json" {
			continue
		}
		rc, _ := f.Open()
		b, _ := io.ReadAll(rc)
		rc.Close()
		os.WriteFile(filepath.Join(recs, f.Name), b, 0o644)
	}
	a, err := vuln.Build(ctx, vuln.BuildOptions{OSV: []string{recs}, Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dbDir := t.TempDir()
	if _, err := (vuln.Installation{Root: dbDir}).Import(a.Archive); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfigExtra(t, 1, fmt.Sprintf("analysis:\n  vulnerabilities:\n    db_dir: %s\n", dbDir))
	noEnvDB := app.WithLookupEnv(func(k string) (string, bool) {
		if k == "ATTESTD_VULNDB_DIR" {
			return "", false
		}
		return os.LookupEnv(k)
	})
	dataDir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := app.Run(ctx, append(args, "-c", cfg, "--data-dir", dataDir), &out, &errOut, noEnvDB); code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out.String(), errOut.String())
		}
		return out.String()
	}
	out := run("process", ref.String())
	if !strings.Contains(out, "vulns:  "+ref.DigestStr()+" critical=0 high=0 medium=0 low=0 negligible=0 unknown=0") {
		t.Fatalf("database A should find nothing:\n%s", out)
	}
	if out := run("vulndb", "rescan"); !strings.Contains(out, "re-scanned 0 (already current 1)") {
		t.Fatalf("rescan against the same database: %s", out)
	}
	// Database B: all records. The re-scan finds GO-2026-5970.
	if _, err := (vuln.Installation{Root: dbDir}).Import(mustGlob(t, filepath.Join(runDir, "vulndb-dist", "*.tar.zst"))); err != nil {
		t.Fatal(err)
	}
	out = run("vulndb", "rescan")
	rec, err := openStore(t, dataDir).Image(ctx, ref.String())
	if !strings.Contains(out, "re-scanned 1 (already current 0)") || !strings.Contains(out, ": 1 new findings, 0 resolved") {
		t.Fatalf("rescan against database B: %s\n%+v", out, rec.Facts[0].Vulns)
	}
	if err != nil {
		t.Fatal(err)
	}
	if v := rec.Facts[0].Vulns; v == nil || !slices.Equal(v.Findings, []string{"GO-2026-5970 golang.org/x/text@v0.3.8"}) || v.Unknown != 1 {
		t.Fatalf("facts after rescan: %+v", rec.Facts[0].Vulns)
	}
	exp := run("audit", "export", "--action", "vulnerabilities.rescanned")
	if !strings.Contains(exp, `"new.findings":"GO-2026-5970 golang.org/x/text@v0.3.8"`) || !strings.Contains(exp, `"actor":"rescan"`) {
		t.Fatalf("audit:\n%s", exp)
	}
	if out := run("audit", "verify"); !strings.Contains(out, "intact") {
		t.Fatal(out)
	}
}

func mustGlob(t *testing.T, pattern string) string {
	t.Helper()
	m, _ := filepath.Glob(pattern)
	if len(m) != 1 {
		t.Fatalf("%s: %v", pattern, m)
	}
	return m[0]
}
