package vuln

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	dbOnce    sync.Once
	dbArchive string
	dbErr     error
	dbBuilt   time.Time
)

// testArchive builds the database from the real Go vulnerability records
// once per test binary.
func testArchive(t *testing.T) string {
	t.Helper()
	dbOnce.Do(func() {
		dir, err := os.MkdirTemp("", "attestd-vulndb-test-")
		if err != nil {
			dbErr = err
			return
		}
		var b *Built
		b, dbErr = Build(context.Background(), BuildOptions{
			OSV:             []string{"testdata/osv-go/all.zip"},
			SeverityOverlay: "testdata/osv-go/severity-overlay.json",
			Out:             dir,
		})
		if dbErr == nil {
			dbArchive, dbBuilt = b.Archive, b.Built
		}
	})
	if dbErr != nil {
		t.Fatal(dbErr)
	}
	return dbArchive
}

func installed(t *testing.T) Installation {
	t.Helper()
	in := Installation{Root: t.TempDir()}
	if _, err := in.Import(testArchive(t)); err != nil {
		t.Fatal(err)
	}
	return in
}

// cdx is a CycloneDX SBOM of Go modules (purls), as syft writes them.
func cdx(mods ...string) []byte {
	var comps []string
	for i, m := range mods {
		name, ver, _ := strings.Cut(m, "@")
		comps = append(comps, fmt.Sprintf(`{"bom-ref":"c%d","type":"library","name":%q,"version":%q,"purl":"pkg:golang/%s@%s"}`, i, name, ver, name, ver))
	}
	return []byte(`{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,"metadata":{"component":{"type":"container","name":"registry.test/app"}},"components":[` + strings.Join(comps, ",") + `]}`)
}

func ids(r *Report) []string {
	var out []string
	for _, m := range r.Document.Matches {
		out = append(out, m.Vulnerability.ID)
	}
	return out
}

func TestBuildImportStatus(t *testing.T) {
	in := installed(t)
	st, err := in.Status(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.Schema, "v6.") || st.Digest == "" || st.Built.IsZero() {
		t.Fatalf("status = %+v", st)
	}
	if !strings.HasSuffix(testArchive(t), ".tar.zst") {
		t.Fatal(testArchive(t))
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(testArchive(t)), "latest.json")); err != nil {
		t.Fatal(err)
	}
}

func TestKnownMatches(t *testing.T) {
	in := installed(t)
	s, err := NewScanner(Options{DB: in, MaxAge: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tc := range []struct {
		mod  string
		want int
	}{
		{"golang.org/x/text@v0.3.5", 3},
		{"golang.org/x/text@v0.3.8", 1},
		{"golang.org/x/net@v0.45.0", 8},
		{"stdlib@go1.20", 88},
	} {
		r, err := s.Scan(context.Background(), Input{SBOM: cdx(tc.mod)})
		if err != nil {
			t.Fatal(err)
		}
		if got := len(r.Document.Matches); got != tc.want {
			t.Errorf("%s: %d matches %v, want %d", tc.mod, got, ids(r), tc.want)
		}
		// No Go record carries a severity: all Unknown, gated as HIGH.
		if r.Counts.Total() != tc.want || r.Counts.Gate("high") < r.Counts.Unknown {
			t.Errorf("%s: counts %+v", tc.mod, r.Counts)
		}
	}
}

func TestSeverityFromOverlay(t *testing.T) {
	in := installed(t)
	s, _ := NewScanner(Options{DB: in, MaxAge: time.Hour, UnknownAs: "unknown"})
	defer s.Close()
	// GO-2022-1059 (x/text < 0.3.8) has a HIGH CVSS vector in the overlay.
	r, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.7")})
	if err != nil {
		t.Fatal(err)
	}
	if r.Counts.High != 1 || r.Counts.MaxSeverity != "high" {
		t.Fatalf("counts = %+v, matches %v", r.Counts, ids(r))
	}
}

func TestStaleDatabaseFails(t *testing.T) {
	in := installed(t)
	now := time.Now().Add(6 * 24 * time.Hour)
	s, _ := NewScanner(Options{DB: in, MaxAge: 5 * 24 * time.Hour, Now: func() time.Time { return now }})
	defer s.Close()
	_, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.5")})
	var se *StaleError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "attestd vulndb update") {
		t.Fatalf("err = %v, want a StaleError telling how to fix it", err)
	}
}

func TestNoDatabase(t *testing.T) {
	s, _ := NewScanner(Options{DB: Installation{Root: t.TempDir()}, MaxAge: time.Hour})
	_, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.5")})
	if !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("err = %v", err)
	}
	if err := s.Open(); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("Open: err = %v", err)
	}
}

// Open opens the database ahead of the first scan, which then finds it
// open; it refuses a stale one as a scan would.
func TestOpenAhead(t *testing.T) {
	in := installed(t)
	var logs bytes.Buffer
	s, _ := NewScanner(Options{DB: in, MaxAge: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer s.Close()
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.5")}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "vulnerability database opened"); n != 1 {
		t.Errorf("database opened %d times, want once:\n%s", n, logs.String())
	}
	later := time.Now().Add(2 * time.Hour)
	stale, _ := NewScanner(Options{DB: in, MaxAge: time.Hour, Now: func() time.Time { return later }})
	defer stale.Close()
	var se *StaleError
	if err := stale.Open(); !errors.As(err, &se) {
		t.Fatalf("Open of a stale database: %v", err)
	}
}

func TestExceptionExpires(t *testing.T) {
	in := installed(t)
	now := time.Now()
	clock := func() time.Time { return now }
	var expiring int
	s, err := NewScanner(Options{DB: in, MaxAge: 30 * 24 * time.Hour, Now: func() time.Time { return clock() },
		Exceptions: []Exception{{Vulnerability: "CVE-2026-56852", Package: "golang.org/x/text", Repository: "registry.test/*",
			Owner: "sec@example.com", Reason: "no untrusted Accept-Language parsing", Ticket: "SEC-1", Expires: now.Add(10 * 24 * time.Hour)}},
		OnExpiring: func(Exception) { expiring++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	in8 := Input{SBOM: cdx("golang.org/x/text@v0.3.8"), Repository: "registry.test/app", Digest: "sha256:" + strings.Repeat("a", 64)}
	r, err := s.Scan(context.Background(), in8)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Document.Matches) != 0 || len(r.Suppressed) != 1 || r.Suppressed[0].Ticket != "SEC-1" || expiring != 1 {
		t.Fatalf("active exception: matches %v, suppressed %+v, expiring warnings %d", ids(r), r.Suppressed, expiring)
	}
	if len(r.Document.IgnoredMatches) != 1 {
		t.Fatalf("ignored = %d", len(r.Document.IgnoredMatches))
	}
	// Another repository: the exception does not apply.
	r, _ = s.Scan(context.Background(), Input{SBOM: in8.SBOM, Repository: "other.test/app"})
	if len(r.Document.Matches) != 1 {
		t.Fatalf("out of scope: matches %v", ids(r))
	}
	// After expiry the finding counts again.
	later := now.Add(11 * 24 * time.Hour)
	clock = func() time.Time { return later }
	r, err = s.Scan(context.Background(), in8)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Document.Matches) != 1 || len(r.Suppressed) != 0 {
		t.Fatalf("expired exception still applies: matches %v suppressed %+v", ids(r), r.Suppressed)
	}
}

func TestExceptionValidation(t *testing.T) {
	_, err := NewScanner(Options{DB: Installation{Root: t.TempDir()}, MaxAge: time.Hour,
		Exceptions: []Exception{{Vulnerability: "CVE-1"}}})
	if err == nil || !strings.Contains(err.Error(), "owner, reason, expires") {
		t.Fatalf("err = %v", err)
	}
}

func TestBuildRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"nope": 1}`), 0o644)
	out := t.TempDir()
	_, err := Build(context.Background(), BuildOptions{OSV: []string{dir}, Out: out})
	if err == nil || !strings.Contains(err.Error(), "bad.json") || !strings.Contains(err.Error(), `no "id"`) {
		t.Fatalf("err = %v", err)
	}
	if des, _ := os.ReadDir(out); len(des) != 0 {
		t.Fatalf("left behind: %v", des)
	}
}

func TestOpenVEXSuppresses(t *testing.T) {
	in := installed(t)
	doc := filepath.Join(t.TempDir(), "app.openvex.json")
	os.WriteFile(doc, []byte(`{
  "@context": "https://openvex.dev/ns/v0.2.0",
  "@id": "https://example.com/vex/attestd-test-1",
  "author": "security@example.com",
  "timestamp": "2026-11-01T00:00:00Z",
  "version": 1,
  "statements": [{
    "vulnerability": {"name": "GO-2026-5970"},
    "products": [{"@id": "pkg:golang/golang.org/x/text@v0.3.8"}],
    "status": "not_affected",
    "justification": "vulnerable_code_not_in_execute_path"
  }]
}`), 0o644)
	s, err := NewScanner(Options{DB: in, MaxAge: time.Hour, VEX: []string{doc}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.8")})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Document.Matches) != 0 || len(r.Suppressed) != 1 || r.Suppressed[0].By != "vex" || r.Counts.Suppressed != 1 {
		t.Fatalf("matches %v, suppressed %+v", ids(r), r.Suppressed)
	}
	// v0.3.5's three findings are not covered by the statement.
	r, _ = s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.5")})
	if len(r.Document.Matches) != 3 {
		t.Fatalf("v0.3.5: %v", ids(r))
	}
	// A malformed VEX document is refused up front.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"statements": 1}`), 0o644)
	if _, err := NewScanner(Options{DB: in, MaxAge: time.Hour, VEX: []string{bad}}); err == nil {
		t.Fatal("malformed VEX accepted")
	}
}

// TestReopensWhenDatabaseReplaced: a running scanner picks up a newly
// imported database on its next scan, and reads the new file, not the
// replaced one's pages from SQLite's shared cache.
func TestReopensWhenDatabaseReplaced(t *testing.T) {
	full := testArchive(t)
	zr, err := zip.OpenReader("testdata/osv-go/all.zip")
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
	without, err := Build(context.Background(), BuildOptions{OSV: []string{recs}, Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	in := Installation{Root: t.TempDir()}
	if _, err := in.Import(without.Archive); err != nil {
		t.Fatal(err)
	}
	s, _ := NewScanner(Options{DB: in, MaxAge: time.Hour})
	defer s.Close()
	sbom := Input{SBOM: cdx("golang.org/x/text@v0.3.8")}
	r, err := s.Scan(context.Background(), sbom)
	if err != nil || len(r.Document.Matches) != 0 {
		t.Fatalf("without GO-2026-5970: %v %v", ids(r), err)
	}
	before := r.DB.Digest
	if _, err := in.Import(full); err != nil {
		t.Fatal(err)
	}
	r, err = s.Scan(context.Background(), sbom)
	if err != nil || len(r.Document.Matches) != 1 || r.DB.Digest == before {
		t.Fatalf("after import: %v %v, db %s (was %s)", ids(r), err, r.DB.Digest, before)
	}
}

// TestPredicateRoundTrip: a real scan's predicate, as Report.Predicate
// writes it, reads back with ReadPredicate to the same counts, findings,
// database and finish time.
func TestPredicateRoundTrip(t *testing.T) {
	in := installed(t)
	s, err := NewScanner(Options{DB: in, MaxAge: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Scan(context.Background(), Input{SBOM: cdx("golang.org/x/text@v0.3.5")})
	if err != nil {
		t.Fatal(err)
	}
	pred, err := r.Predicate("https://attestd.dev/run", "event", "builder")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadPredicate(pred)
	if err != nil {
		t.Fatal(err)
	}
	if got.Counts != r.Counts || !got.Finished.Equal(r.Finished) || got.DB != dbURI(r.DB) || !slices.Equal(got.Findings, r.Findings()) {
		t.Errorf("read back %+v\nwrote counts %+v, finished %s, findings %v", got, r.Counts, r.Finished, r.Findings())
	}
	for _, bad := range []string{`{}`, `{"invocation":{"parameters":{"counts":{"unknownAs":"high"}}}}`, `[`} {
		if _, err := ReadPredicate([]byte(bad)); err == nil {
			t.Errorf("ReadPredicate(%s) accepted", bad)
		}
	}
}
