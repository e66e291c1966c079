package test

import (
	"bufio"
	"bytes"
	"os/exec"
	"path"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/attestd/attestd"

// allowed lists, per package of the module, the module packages it may
// import (ARCHITECTURE.md, "Import direction"). A package missing here fails
// the test: place every new package in a layer on purpose.
var allowed = map[string][]string{
	"cmd/attestd":     {"cmd/attestd/app"},
	"cmd/attestd/app": {"*"},

	// L2
	"attest/gate":     {"attest", "attest/pipeline", "attest/slsa", "attest/verify", "policy", "policy/promote", "sbom/harden", "sbom/vuln", "store", "store/registry"},
	"attest/attach":   {"attest", "attest/analyze", "attest/pipeline", "attest/sign", "attest/sign/signtest", "store", "store/registry"},
	"attest/analyze":  {"attest", "attest/pipeline", "attest/slsa", "sbom", "sbom/harden", "sbom/vuln", "store", "store/layers", "store/registry"},
	"attest/pipeline": {"attest", "attest/watch", "sbom", "sbom/harden", "sbom/vuln", "policy", "policy/promote", "store"},
	// L1
	"attest/slsa":    {"attest"},
	"attest/sign":    {"attest", "attest/sign/signtest", "store/registry"},
	"attest/verify":  {"attest", "store/registry"},
	"store/audit":    {"store"},
	"policy/promote": {"policy"},
	// L1 test support: an offline Sigstore; it does not import attest/sign,
	// so that package's own tests can use it.
	"attest/sign/signtest": {"store/registry"},
	// L0
	"attest": {}, "attest/watch": {}, "sbom": {}, "sbom/harden": {}, "sbom/vuln": {},
	"policy": {}, "store": {}, "store/registry": {}, "store/layers": {}, "configs": {},
}

// forbidden external imports, by package prefix: only attest/sign and
// attest/verify touch cosign (not even app: it wires, the stages live
// beside their domain); the pipeline never talks to a registry itself.
var forbidden = []struct {
	pkgs     []string // module packages the rule applies to ("*" = all but exempt)
	exempt   []string
	prefixes []string
}{
	{pkgs: []string{"*"}, exempt: []string{"attest/sign", "attest/verify"},
		prefixes: []string{"github.com/sigstore/cosign"}},
	{pkgs: []string{"attest/pipeline", "policy", "policy/promote"},
		prefixes: []string{"github.com/google/go-containerregistry/pkg/v1/remote", "github.com/sigstore/", module + "/store/registry"}},
	{pkgs: []string{"store", "store/registry", "store/audit"}, prefixes: []string{module + "/attest"}},
}

func TestLayering(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		pkg := strings.TrimPrefix(strings.TrimPrefix(fields[0], module), "/")
		if pkg == "test" || strings.HasPrefix(pkg, "test/") {
			continue // test/ may import anything
		}
		rules, ok := allowed[pkg]
		if !ok {
			t.Errorf("package %s has no layer: add it to allowed in test/layering_test.go (and to ARCHITECTURE.md)", pkg)
			continue
		}
		checked++
		for _, imp := range dedupe(fields[1:]) {
			if imp == fields[0] {
				continue // external test package importing its own package
			}
			if strings.HasPrefix(imp, module+"/") {
				dep := strings.TrimPrefix(imp, module+"/")
				if !allowedImport(rules, dep) {
					t.Errorf("%s imports %s: not allowed by the layering (allowed: %v)", pkg, dep, rules)
				}
			}
			for _, f := range forbidden {
				if !matches(f.pkgs, pkg) || contains(f.exempt, pkg) {
					continue
				}
				for _, p := range f.prefixes {
					if imp == p || strings.HasPrefix(imp, strings.TrimSuffix(p, "/")+"/") || strings.HasPrefix(imp, p) && strings.HasSuffix(p, "/") {
						t.Errorf("%s imports %s: forbidden for this package", pkg, imp)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d packages checked; go list output looks wrong:\n%s", checked, out)
	}
}

func allowedImport(rules []string, dep string) bool {
	for _, r := range rules {
		if r == "*" || r == dep {
			return true
		}
		if ok, _ := path.Match(r, dep); ok {
			return true
		}
	}
	return false
}

func matches(pkgs []string, pkg string) bool { return contains(pkgs, "*") || contains(pkgs, pkg) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func dedupe(in []string) []string {
	m := map[string]bool{}
	for _, s := range in {
		m[s] = true
	}
	out := make([]string, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}
