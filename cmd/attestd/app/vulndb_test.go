package app

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	vulnArchiveOnce sync.Once
	vulnArchive     string
	vulnArchiveErr  string
)

// installVulnDB installs a database built (once per test binary, with the
// vulndb build command) from the real Go vulnerability records into dir's
// default location.
func installVulnDB(t *testing.T, dir string) {
	t.Helper()
	vulnArchiveOnce.Do(func() {
		out, err := os.MkdirTemp("", "attestd-app-vulndb-")
		if err != nil {
			vulnArchiveErr = err.Error()
			return
		}
		code, stdout, stderr := run(t, "vulndb", "build", "--osv", "../../../sbom/vuln/testdata/osv-go/all.zip", "-o", out)
		if code != 0 {
			vulnArchiveErr = stderr
			return
		}
		m, _ := filepath.Glob(filepath.Join(out, "vulnerability-db_v6*.tar.zst"))
		if len(m) != 1 || !strings.Contains(stdout, "4291 records") {
			vulnArchiveErr = "build wrote " + strings.Join(m, ", ") + ": " + stdout
			return
		}
		vulnArchive = m[0]
	})
	if vulnArchiveErr != "" {
		t.Fatal(vulnArchiveErr)
	}
	if code, _, stderr := run(t, "vulndb", "import", "--data-dir", dir, vulnArchive); code != 0 {
		t.Fatalf("vulndb import: exit %d: %s", code, stderr)
	}
}

func TestVulnDBCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	code, _, stderr := run(t, "vulndb", "status", "--data-dir", dir)
	if code != ExitError || !strings.Contains(stderr, "no vulnerability database installed") || !strings.Contains(stderr, "attestd vulndb import") {
		t.Fatalf("no database: exit %d: %s", code, stderr)
	}
	installVulnDB(t, dir)
	code, out, stderr := run(t, "vulndb", "status", "--data-dir", dir)
	if code != 0 || !strings.Contains(out, "schema:  v6.") || !strings.Contains(out, "digest:  xxh64:") {
		t.Fatalf("status: exit %d\n%s%s", code, out, stderr)
	}
	// scan: an SBOM file, as the analysis stage matches it.
	sbomFile := writeFile(t, `{"bomFormat":"CycloneDX","specVersion":"1.6","version":1,"components":[{"type":"library","name":"golang.org/x/text","version":"v0.3.5","purl":"pkg:golang/golang.org/x/text@v0.3.5"}]}`)
	code, out, stderr = run(t, "vulndb", "scan", "--data-dir", dir, sbomFile)
	if code != 0 || !strings.Contains(out, "3 findings:") || !strings.Contains(out, "GO-2022-1059 golang.org/x/text@v0.3.5") {
		t.Fatalf("scan: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, "vulndb", "scan", "--data-dir", dir, "--format", "predicate", sbomFile)
	if code != 0 || !strings.Contains(out, `"scanner":{"uri":"pkg:golang/github.com/anchore/grype@v0.121.3"`) {
		t.Fatalf("scan predicate: exit %d\n%s", code, out)
	}
	// Stale by configuration: status says so and fails.
	cfg := writeFile(t, "analysis:\n  vulnerabilities:\n    max_db_age: 1ns\n")
	code, _, stderr = run(t, "vulndb", "status", "--data-dir", dir, "--config", cfg)
	if code != ExitError || !strings.Contains(stderr, "stale") {
		t.Fatalf("stale: exit %d: %s", code, stderr)
	}
	// Bad input names the file and leaves nothing behind.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "GO-X.json"), []byte("{"), 0o644)
	out2 := t.TempDir()
	code, _, stderr = run(t, "vulndb", "build", "--osv", bad, "-o", out2)
	if code != ExitError || !strings.Contains(stderr, "GO-X.json") {
		t.Fatalf("bad record: exit %d: %s", code, stderr)
	}
	if des, _ := os.ReadDir(out2); len(des) != 0 {
		t.Fatalf("bad build left %v", des)
	}
	// An exception without an owner or expiry is a configuration error.
	cfg = writeFile(t, "analysis:\n  vulnerabilities:\n    exceptions:\n      - vulnerability: CVE-2026-1\n")
	code, _, stderr = run(t, "vulndb", "status", "--data-dir", dir, "--config", cfg)
	if code != ExitUsage || !strings.Contains(stderr, "exceptions[0].owner") || !strings.Contains(stderr, "exceptions[0].expires") {
		t.Fatalf("exception without owner: exit %d: %s", code, stderr)
	}
}

// TestVulnDBUpdateFromMirror: update uses grype's own client against a
// mirror (a directory served over HTTP holding latest.json and the
// archive), installs the database once, and then says it is current.
func TestVulnDBUpdateFromMirror(t *testing.T) {
	t.Parallel()
	installVulnDB(t, t.TempDir()) // builds the archive
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(vulnArchive))))
	defer srv.Close()
	dir := t.TempDir()
	cfg := writeFile(t, "analysis:\n  vulnerabilities:\n    latest_url: "+srv.URL+"/latest.json\n")
	code, out, stderr := run(t, "vulndb", "update", "--data-dir", dir, "--config", cfg)
	if code != 0 || !strings.Contains(out, "schema:  v6.") {
		t.Fatalf("update: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = run(t, "vulndb", "update", "--data-dir", dir, "--config", cfg)
	if code != 0 || !strings.Contains(out, "already up to date") {
		t.Fatalf("second update: exit %d\n%s%s", code, out, stderr)
	}
	// An unreachable mirror is an error, not a silent "up to date".
	cfg = writeFile(t, "analysis:\n  vulnerabilities:\n    latest_url: http://127.0.0.1:1/latest.json\n")
	code, _, stderr = run(t, "vulndb", "update", "--data-dir", t.TempDir(), "--config", cfg)
	if code != ExitError || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("unreachable mirror: exit %d: %s", code, stderr)
	}
}
