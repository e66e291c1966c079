package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/cmd/attestd/app"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/test/fixture"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

var (
	fixturesOnce sync.Once
	fixtures     map[string]fixture.Fixture
	fixturesErr  error
)

// pushedFixtures builds the fixture images once per run.
func allFixtures(t *testing.T) map[string]fixture.Fixture {
	t.Helper()
	fixturesOnce.Do(func() {
		all, err := fixture.All(context.Background(), fixture.Options{Logf: t.Logf})
		if err != nil {
			fixturesErr = err
			return
		}
		fixtures = map[string]fixture.Fixture{}
		for _, f := range all {
			fixtures[f.Name] = f
		}
	})
	if fixturesErr != nil {
		t.Fatal(fixturesErr)
	}
	return fixtures
}

// pushFixture pushes a fixture as repo:tag and returns its digest ref.
func pushFixture(t *testing.T, f fixture.Fixture, repoTag string) name.Digest {
	t.Helper()
	tag, err := name.NewTag(stk.RegistryHost + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	var dig string
	if f.Index != nil {
		if err := remote.WriteIndex(tag, f.Index); err != nil {
			t.Fatal(err)
		}
		d, _ := f.Index.Digest()
		dig = d.String()
	} else {
		if err := remote.Write(tag, f.Image); err != nil {
			t.Fatal(err)
		}
		d, _ := f.Image.Digest()
		dig = d.String()
	}
	return tag.Context().Digest(dig)
}

// processed runs `attestd process` on ref and returns the stored record and
// a loader for its documents.
func processed(t *testing.T, cfg, dataDir, ref string) (*store.Record, func(store.Artifact) []byte) {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := app.Run(context.Background(), []string{"process", "-c", cfg, "--data-dir", dataDir, ref}, &out, &errOut); code != 0 {
		t.Fatalf("process %s: exit %d\n%s\n%s", ref, code, out.String(), errOut.String())
	}
	db := openStore(t, dataDir)
	d, err := name.NewDigest(ref)
	if err != nil { // a tag: find the digest in the output
		m := regexp.MustCompile(`image:\s+(\S+@sha256:[0-9a-f]{64})`).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no digest in process output:\n%s", out.String())
		}
		d, _ = name.NewDigest(m[1])
	}
	rec, err := db.Image(context.Background(), d.String())
	if err != nil {
		t.Fatal(err)
	}
	load := func(a store.Artifact) []byte {
		b, err := db.Blob(context.Background(), a.Digest)
		if err != nil {
			t.Fatalf("blob %s of %s: %v", a.Kind, a.Subject, err)
		}
		return b
	}
	return rec, load
}

func artifact(t *testing.T, rec *store.Record, subject, kind string) store.Artifact {
	t.Helper()
	for _, a := range rec.Artifacts {
		if a.Subject == subject && a.Kind == kind {
			return a
		}
	}
	t.Fatalf("%s: no %s document for %s (have %+v)", rec.Ref, kind, subject, rec.Artifacts)
	return store.Artifact{}
}

// TestAnalysisFixtures runs the analysis stage through `attestd process`
// on every fixture image pushed to the real registry: golden documents
// (times, UUIDs and the registry port redacted) for the reproducible
// fixtures, the hardening verdicts, and SBOM package counts equal to the
// stock syft CLI's on the same registry image.
func TestAnalysisFixtures(t *testing.T) {
	fx := allFixtures(t)
	cfg := writeConfig(t, 1)
	dataDir := t.TempDir()

	type want struct {
		tag       string
		golden    bool     // SBOM + provenance goldens (reproducible content)
		pass      bool     // every hardening check passes or is not applicable
		fail      []string // hardening checks that must fail
		minPkgs   int
		hasPkg    string // name@version the SBOM must list
		platforms int    // children of an index
	}
	cases := map[string]want{
		"static-go":      {tag: "v1", golden: true, pass: true, minPkgs: 1},
		"old-x-text":     {tag: "v1", golden: true, minPkgs: 2, hasPkg: "golang.org/x/text@v0.3.5"},
		"node":           {tag: "v1", golden: true, minPkgs: 50, hasPkg: "lodash@4.17.20"},
		"multi-platform": {tag: "v1", golden: true, pass: true, platforms: 2},
		"debian":         {tag: "bookworm", minPkgs: 80, fail: []string{"nonroot-user", "no-shell", "no-package-manager", "healthcheck", "no-setuid"}},
		"bad": {tag: "latest", minPkgs: 80, fail: []string{"nonroot-user", "no-shell", "no-package-manager", "no-secrets-in-config",
			"no-secret-files", "healthcheck", "no-setuid", "go-static", "go-stripped", "go-trimpath", "no-privileged-ports", "minimal-base", "no-latest-tag"}},
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		w := cases[n]
		t.Run(n, func(t *testing.T) {
			f, ok := fx[n]
			if !ok {
				t.Fatalf("no fixture %q", n)
			}
			ref := pushFixture(t, f, "fixtures/"+n+":"+w.tag)
			rec, load := processed(t, cfg, dataDir, stk.RegistryHost+"/fixtures/"+n+":"+w.tag)
			if rec.State != store.StateAnalysed || rec.Stages["analyse"].Status != store.StagePassed {
				t.Fatalf("record %s: state %s, analyse %+v", rec.Ref, rec.State, rec.Stages["analyse"])
			}
			if rec.Digest != ref.DigestStr() {
				t.Fatalf("processed %s, pushed %s", rec.Digest, ref.DigestStr())
			}
			subjects := []string{rec.Digest}
			if w.platforms > 0 {
				if len(rec.Children) != w.platforms || len(rec.Facts) != w.platforms {
					t.Fatalf("index: %d children, %d facts; want %d each", len(rec.Children), len(rec.Facts), w.platforms)
				}
				subjects = nil
				for _, c := range rec.Children {
					subjects = append(subjects, c.Digest)
				}
				// Index provenance covers the index and every platform.
				var st struct {
					Subject []struct{ Digest map[string]string }
				}
				if err := json.Unmarshal(load(artifact(t, rec, rec.Digest, analyze.KindProvenance)), &st); err != nil {
					t.Fatal(err)
				}
				if len(st.Subject) != w.platforms+1 {
					t.Errorf("index provenance has %d subjects, want %d", len(st.Subject), w.platforms+1)
				}
				if w.golden {
					golden(t, filepath.Join(n, "index-provenance.json"), load(artifact(t, rec, rec.Digest, analyze.KindProvenance)))
				}
			}
			for _, subj := range subjects {
				var facts store.Facts
				for _, fc := range rec.Facts {
					if fc.Subject == subj {
						facts = fc
					}
				}
				suffix := ""
				if facts.Platform != "" && w.platforms > 0 {
					suffix = "-" + strings.ReplaceAll(facts.Platform, "/", "-")
				}
				var rep harden.Report
				hjson := load(artifact(t, rec, subj, analyze.KindHardening))
				if err := json.Unmarshal(hjson, &rep); err != nil {
					t.Fatal(err)
				}
				if w.pass && len(rep.Failed) > 0 {
					t.Errorf("%s%s: hardening failed %v, want every check to pass:\n%s", n, suffix, rep.Failed, hjson)
				}
				for _, id := range w.fail {
					if !slices.Contains(rep.Failed, id) {
						t.Errorf("%s: hardening check %s did not fail (failed: %v)", n, id, rep.Failed)
					}
				}
				if facts.Packages < w.minPkgs {
					t.Errorf("%s%s: %d packages, want ≥ %d", n, suffix, facts.Packages, w.minPkgs)
				}
				spdx := load(artifact(t, rec, subj, analyze.KindSPDX))
				cdx := load(artifact(t, rec, subj, analyze.KindCycloneDX))
				checkSPDX(t, spdx, facts.Packages, w.hasPkg)
				checkCycloneDX(t, cdx, w.hasPkg)

				// The stock syft CLI, same version, same registry image.
				cli := syftCount(t, ref.Context().Digest(subj).String())
				if cli != facts.Packages {
					t.Errorf("%s%s: attestd found %d packages, syft CLI %d", n, suffix, facts.Packages, cli)
				}
				t.Logf("%s%s: %d packages (syft CLI %d), hardening failed %v", n, suffix, facts.Packages, cli, rep.Failed)

				// Debian-based fixtures are built from the live bookworm suite:
				// their file lists move with point releases, so only verdicts are checked.
				if w.golden {
					golden(t, filepath.Join(n, "hardening"+suffix+".json"), hjson)
					golden(t, filepath.Join(n, "spdx"+suffix+".json"), spdx)
					golden(t, filepath.Join(n, "cyclonedx"+suffix+".json"), cdx)
					golden(t, filepath.Join(n, "provenance"+suffix+".json"), load(artifact(t, rec, subj, analyze.KindProvenance)))
				}
			}
		})
	}

	// The two checks the bad image cannot fail with the defaults (it is
	// built with this Go and is 120 MB) fail under stricter settings.
	t.Run("bad-strict", func(t *testing.T) {
		strict := writeConfigExtra(t, 1, "analysis:\n  hardening:\n    max_image_size: 50MiB\n    min_go_version: go1.99\n")
		rec, load := processed(t, strict, t.TempDir(), stk.RegistryHost+"/fixtures/bad:latest")
		var rep harden.Report
		if err := json.Unmarshal(load(artifact(t, rec, rec.Digest, analyze.KindHardening)), &rep); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"image-size", "go-supported"} {
			if !slices.Contains(rep.Failed, id) {
				t.Errorf("strict: %s did not fail: %v", id, rep.Failed)
			}
		}
		if len(rep.Failed) != len(harden.Checks()) {
			t.Errorf("the bad image fails %d of %d checks under strict settings: %v", len(rep.Failed), len(harden.Checks()), rep.Failed)
		}
	})
}

func checkSPDX(t *testing.T, doc []byte, pkgs int, hasPkg string) {
	t.Helper()
	var d struct {
		SPDXVersion string `json:"spdxVersion"`
		Packages    []struct {
			Name, VersionInfo string
		} `json:"packages"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("SPDX: %v", err)
	}
	if d.SPDXVersion != "SPDX-2.3" {
		t.Errorf("spdxVersion %q, want SPDX-2.3", d.SPDXVersion)
	}
	if len(d.Packages) < pkgs {
		t.Errorf("SPDX lists %d packages, want ≥ %d", len(d.Packages), pkgs)
	}
	if hasPkg != "" {
		n, v, _ := strings.Cut(hasPkg, "@")
		if !slices.ContainsFunc(d.Packages, func(p struct{ Name, VersionInfo string }) bool { return p.Name == n && p.VersionInfo == v }) {
			t.Errorf("SPDX does not list %s", hasPkg)
		}
	}
}

func checkCycloneDX(t *testing.T, doc []byte, hasPkg string) {
	t.Helper()
	var d struct {
		BOMFormat   string `json:"bomFormat"`
		SpecVersion string `json:"specVersion"`
		Components  []struct{ Name, Version string }
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("CycloneDX: %v", err)
	}
	if d.BOMFormat != "CycloneDX" || d.SpecVersion != "1.6" {
		t.Errorf("CycloneDX header %q %q, want CycloneDX 1.6", d.BOMFormat, d.SpecVersion)
	}
	if hasPkg != "" {
		n, v, _ := strings.Cut(hasPkg, "@")
		if !slices.ContainsFunc(d.Components, func(c struct{ Name, Version string }) bool { return c.Name == n && c.Version == v }) {
			t.Errorf("CycloneDX does not list %s", hasPkg)
		}
	}
}

// syftCount runs the stock syft CLI on a registry image and counts packages.
func syftCount(t *testing.T, ref string) int {
	t.Helper()
	out, err := stk.Syft(context.Background(), "scan", "registry:"+ref, "-o", "json", "-q")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Artifacts []json.RawMessage `json:"artifacts"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("syft CLI output: %v", err)
	}
	return len(d.Artifacts)
}

var redactions = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`127\.0\.0\.1(%3A|[-:_])\d+`), "REGISTRY"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "TIME"},
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "UUID"},
}

// golden compares doc, redacted and indented, with testdata/golden/path.
func golden(t *testing.T, path string, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	v = redact(v)
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	file := filepath.Join("testdata", "golden", path)
	if *update {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./test/e2e -run TestAnalysisFixtures -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (rerun with -update if the change is intended):\n%s", path, firstDiff(string(want), string(got)))
	}
}

func redact(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = redact(e)
		}
	case []any:
		for i, e := range x {
			x[i] = redact(e)
		}
	case string:
		for _, r := range redactions {
			x = r.re.ReplaceAllString(x, r.with)
		}
		return x
	}
	return v
}

func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, w, g)
		}
	}
	return "(same lines, different bytes)"
}
