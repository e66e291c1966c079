package configs

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAPIConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		env        map[string]string
		want       API
		err        string // a substring of the error; "" valid
	}{
		{name: "default", want: API{}},
		{name: "all set", yaml: "api: {token_file: /etc/attestd/api.tokens, pprof: true, hosts: [attestd.example.com, attestd.ns.svc.cluster.local.]}\n",
			want: API{TokenFile: "/etc/attestd/api.tokens", Pprof: true, Hosts: []string{"attestd.example.com", "attestd.ns.svc.cluster.local."}}},
		{name: "env", env: map[string]string{"ATTESTD_API_TOKEN_FILE": "/run/secrets/api"}, yaml: "api: {token_file: /etc/x}\n",
			want: API{TokenFile: "/run/secrets/api"}},
		{name: "unknown field", yaml: "api: {token: abc}\n", err: "field token not found"},
		{name: "host with port", yaml: "api: {hosts: [\"attestd.example.com:8080\"]}\n", err: "api.hosts[0]: \"attestd.example.com:8080\": write the name alone"},
		{name: "URL", yaml: "api: {hosts: [\"https://attestd.example.com\"]}\n", err: "api.hosts[0]"},
		{name: "IP", yaml: "api: {hosts: [ok.example, 10.0.0.1, \"[::1]\"]}\n", err: "api.hosts[1]: \"10.0.0.1\" is an IP address"},
		{name: "wildcard", yaml: "api: {hosts: [\"*.example.com\"]}\n", err: "is not a DNS name"},
		{name: "empty", yaml: "api: {hosts: [\"\"]}\n", err: "api.hosts[0]"},
	} {
		c, err := Load(strings.NewReader(tc.yaml), "t.yaml")
		if err == nil {
			err = c.ApplyEnv(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
		}
		if err == nil {
			err = c.Validate()
		}
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.err)
			}
			var ce *Error
			if err != nil && !errors.As(err, &ce) {
				t.Errorf("%s: %T is not a *configs.Error", tc.name, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		default:
			if d := cmp.Diff(tc.want, c.API); d != "" {
				t.Errorf("%s: (-want +got)\n%s", tc.name, d)
			}
		}
	}
}

func TestAPITokenFile(t *testing.T) {
	t.Parallel()
	c := Default()
	c.DataDir = "/var/lib/attestd"
	if got, want := c.APITokenFile(), filepath.Join("/var/lib/attestd", "api.token"); got != want {
		t.Errorf("default: %s, want %s", got, want)
	}
	c.API.TokenFile = "/etc/attestd/api.tokens"
	if got := c.APITokenFile(); got != "/etc/attestd/api.tokens" {
		t.Errorf("configured: %s", got)
	}
}

// TestExampleDocumentsAPIDefaults: the documented example's api section is
// the default.
func TestExampleDocumentsAPIDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadFile("attestd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(Default().API, c.API, cmpEmptyNil); d != "" {
		t.Errorf("configs/attestd.yaml's api section is not the default: (-want +got)\n%s", d)
	}
}

var cmpEmptyNil = cmp.FilterValues(func(a, b []string) bool { return len(a) == 0 && len(b) == 0 }, cmp.Ignore())
