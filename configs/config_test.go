package configs

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestExampleConfigIsValid(t *testing.T) {
	t.Parallel()
	c, err := LoadFile("attestd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("configs/attestd.yaml does not validate: %v", err)
	}
	want := Default()
	if c.Jobs != want.Jobs || c.Intake != want.Intake || c.Retention != want.Retention || c.Workers != want.Workers || c.Log != want.Log ||
		!cmp.Equal(c.Analysis, want.Analysis) || !cmp.Equal(c.Signing, want.Signing) {
		t.Errorf("the example's documented defaults drifted from Default():\n%s", cmp.Diff(want.Jobs, c.Jobs))
	}
}

func TestProductionExampleIsValid(t *testing.T) {
	t.Parallel()
	c, err := LoadFile("attestd-production.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("configs/attestd-production.yaml does not validate: %v", err)
	}
	if !c.Signing.PublicGood || c.Signing.TokenFile == "" {
		t.Errorf("the production example should sign keylessly with the public-good instance: %+v", c.Signing)
	}
}

// TestDeprecatedIntakeJournal: intake.journal (an intake path that was
// removed) still loads, true or false, so older files keep working; serve
// warns that it is ignored.
func TestDeprecatedIntakeJournal(t *testing.T) {
	t.Parallel()
	for _, v := range []bool{true, false} {
		c, err := Load(strings.NewReader(fmt.Sprintf("intake:\n  journal: %v\n", v)), "old.yaml")
		if err != nil {
			t.Fatalf("journal: %v: %v", v, err)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("journal: %v: %v", v, err)
		}
		if c.Intake.Journal == nil || *c.Intake.Journal != v {
			t.Errorf("journal: %v read as %v", v, c.Intake.Journal)
		}
	}
	if Default().Intake.Journal != nil {
		t.Error("the default sets the deprecated intake.journal")
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       []string // substrings of the error
	}{
		{"unknown field", "listn: :8080\n", []string{"cfg.yaml", "line 1", "listn"}},
		{"bad duration", "jobs:\n  backoff: soon\n", []string{"line 2", "not a duration"}},
		{"bad type", "workers: many\n", []string{"line 1", "many", "into int"}},
		{"inline password", "registries:\n- host: r.example\n  auth: {username: u, password: hunter2}\n", []string{"registries[0].auth.password", "password_file"}},
		{"empty host", "registries:\n- rate_limit: 3\n", []string{"registries[0].host", "must be set"}},
		{"public good plus key and token", "signing:\n  public_good: true\n  key: k\n  token_env: T\n", []string{"signing.key", "no identity token"}},
		{"public good without token", "signing:\n  public_good: true\n", []string{"exactly one of token_file"}},
		{"two token sources", "signing:\n  public_good: true\n  token_github_actions: true\n  token_command: [print-token]\n", []string{"exactly one of token_file"}},
		{"public good plus files", "signing:\n  public_good: true\n  trusted_root: tr.json\n  token_file: t\n", []string{"signing.public_good", "TUF"}},
		{"signing half set", "signing:\n  signing_config: sc.json\n  token_file: t\n", []string{"signing", "trusted_root"}},
		{"signing two tokens", "signing:\n  signing_config: sc.json\n  trusted_root: tr.json\n  token_file: t\n  token_env: T\n", []string{"exactly one of token_file, token_env"}},
		{"bad format", "signing:\n  signing_config: sc.json\n  trusted_root: tr.json\n  token_file: t\n  format: cosign\n", []string{"signing.format", "bundle or classic"}},
		{"classic with public good", "signing:\n  public_good: true\n  token_file: t\n  format: classic\n", []string{"signing.format", "public_good"}},
		{"classic behind a log-requiring gate", "signing:\n  signing_config: sc.json\n  trusted_root: tr.json\n  token_file: t\n  format: classic\ngate:\n  policy: p.yaml\n  signed_timestamps: 1\n",
			[]string{"gate", "transparency_log: 0"}},
		{"bad size", "analysis:\n  layer_cache: lots\n", []string{"line 2", "not a size"}},
		{"small cache", "analysis:\n  layer_cache: 1MiB\n", []string{"analysis.layer_cache", "64MiB"}},
		{"bad spdx", "analysis:\n  spdx_version: \"3.0\"\n", []string{"analysis.spdx_version"}},
		{"image limit past the cache", "analysis:\n  layer_cache: 1GiB\n", []string{"analysis.max_image_bytes", "analysis.layer_cache", "held in the cache"}},
		{"layer limit past the image's", "analysis:\n  max_layer_bytes: 9GiB\n", []string{"analysis.max_image_bytes", "at least analysis.max_layer_bytes"}},
		{"tiny compressed layer limit", "analysis:\n  max_compressed_layer_bytes: 1KiB\n", []string{"analysis.max_compressed_layer_bytes", "at least 1MiB"}},
		{"no files", "analysis:\n  max_files: 0\n", []string{"analysis.max_files", "positive"}},
		{"no index entries", "analysis:\n  max_index_manifests: 0\n", []string{"analysis.max_index_manifests", "positive"}},
		{"no layers", "analysis:\n  max_layers: -1\n", []string{"analysis.max_layers", "positive"}},
		{"bad go", "analysis:\n  hardening: {min_go_version: \"1.25\"}\n", []string{"min_go_version", "go1.25"}},
		{"builder without uri", "analysis:\n  builders: [{repository: \"r/*\", id: ci}]\n", []string{"analysis.builders[0].id", "URI"}},
		{"insecure with auth", "registries:\n- host: 10.0.0.5:5000\n  insecure: true\n  auth: {username: u, password_file: pw}\n", []string{"registries[0].insecure", "in the clear", "TLS", "anonymously"}},
		{"scheme in host", "registries:\n- host: https://r.example\n", []string{"bare host"}},
		{"watch unknown registry", "watch:\n- registry: nope\n  repositories: [a]\n", []string{"watch[0].registry", "add it there"}},
		{"bad listen", "listen: 8080\n", []string{"listen", "host:port"}},
		{"several at once", "workers: 0\nlog: {level: loud}\n", []string{"workers", "log.level"}},
		{"retention too short", "retention: {events: 10m}\n", []string{"retention.events", "at least 1h"}},
		{"negative retention", "retention: {records: -1h}\n", []string{"retention.records", "0 (keep forever)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(strings.NewReader(tc.yaml), "cfg.yaml")
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	t.Parallel()
	c, err := Load(strings.NewReader("listen: 127.0.0.1:9000\nworkers: 2\n"), "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ATTESTD_WORKERS": "7", "ATTESTD_DATA_DIR": "/tmp/x"}
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || c.Workers != 7 || c.DataDir != "/tmp/x" {
		t.Fatalf("got listen=%s workers=%d data=%s", c.Listen, c.Workers, c.DataDir)
	}
	env["ATTESTD_WORKERS"] = "lots"
	if err := c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err == nil || !strings.Contains(err.Error(), "ATTESTD_WORKERS") {
		t.Fatalf("bad env: %v", err)
	}
}

func TestEmptyFileIsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load(strings.NewReader(""), "empty.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Jobs.Timeout != Duration(30*time.Minute) {
		t.Fatalf("defaults not applied: %+v", c.Jobs)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	s := Secret("hunter2")
	var b strings.Builder
	slog.New(slog.NewJSONHandler(&b, nil)).Info("x", "password", s)
	out := b.String() + fmt.Sprint(s) + fmt.Sprintf("%v %s", s, s)
	if strings.Contains(out, "hunter2") {
		t.Fatalf("secret printed: %s", out)
	}
	if s.Reveal() != "hunter2" {
		t.Fatal("Reveal")
	}
}

func TestMissingFile(t *testing.T) {
	t.Parallel()
	_, err := LoadFile(os.DevNull + "/nope.yaml")
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("err = %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	if b, err := os.ReadFile("attestd.yaml"); err == nil {
		f.Add(string(b))
	}
	f.Add("workers: 3\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Load(strings.NewReader(s), "fuzz.yaml")
		if err != nil {
			return
		}
		_ = c.Validate()
	})
}

// TestInsecureAuth: credentials and plain HTTP go together only on
// loopback; an insecure registry elsewhere is anonymous.
func TestInsecureAuth(t *testing.T) {
	t.Parallel()
	for host, ok := range map[string]bool{
		"127.0.0.1:5000": true, "localhost:5000": true, "[::1]:5000": true, "localhost": true,
		"10.0.0.5:5000": false, "192.168.1.2": false, "[fd00::1]:5000": false, "registry.example.com": false,
	} {
		c := Default()
		c.Registries = []Registry{{Host: host, Insecure: true, Auth: Auth{Username: "u", PasswordFile: "pw"}}}
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("%s insecure with auth: %v, want accepted %v", host, err, ok)
		}
		c.Registries[0].Auth = Auth{}
		if err := c.Validate(); err != nil {
			t.Errorf("%s insecure, anonymous: %v", host, err)
		}
	}
}
