package configs

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultAPITokenFile is the token file under data_dir that serve creates
// (a random token, mode 0600) when api.token_file is unset.
const DefaultAPITokenFile = "api.token"

// API configures the daemon's HTTP API: who may call the endpoints that
// change state or read what the store holds, and from which names. The
// webhook receivers under /hooks/ are not part of it: each source
// authenticates its sender (sources[].auth).
type API struct {
	// TokenFile holds the bearer tokens the API accepts, one per line
	// (# starts a comment), re-read when it changes: add the new token,
	// move clients over, remove the old one — no restart. Unset: serve
	// creates data_dir/api.token with a random token once and never
	// overwrites it; the CLI on the same host reads it from there.
	TokenFile string `yaml:"token_file"`
	// Pprof serves Go's profiler under /debug/pprof/ (behind the token).
	Pprof bool `yaml:"pprof"`
	// Hosts are the DNS names clients address the API by (the Host header).
	// IP addresses and localhost are always accepted; any other name is
	// refused on /api/ and /debug/, so that a web page cannot rebind its
	// own name to the daemon's address (DNS rebinding).
	Hosts []string `yaml:"hosts"`
}

// APITokenFile is the token file in effect: api.token_file, or the one
// serve creates under data_dir.
func (c *Config) APITokenFile() string {
	if c.API.TokenFile != "" {
		return c.API.TokenFile
	}
	return filepath.Join(c.DataDir, DefaultAPITokenFile)
}

// hostname is a DNS name as a Host header carries it, without the port.
var hostname = regexp.MustCompile(`^(?i)[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$`)

func (a API) validate(file string) []error {
	var errs []error
	for i, h := range a.Hosts {
		f := fmt.Sprintf("api.hosts[%d]", i)
		switch {
		case strings.Contains(h, ":") && !isAddr(h):
			errs = append(errs, &Error{File: file, Field: f, Msg: fmt.Sprintf("%q: write the name alone, without scheme or port (e.g. attestd.example.com)", h)})
		case isAddr(h):
			errs = append(errs, &Error{File: file, Field: f, Msg: fmt.Sprintf("%q is an IP address: those are always accepted, list DNS names only", h)})
		case !hostname.MatchString(h):
			errs = append(errs, &Error{File: file, Field: f, Msg: fmt.Sprintf("%q is not a DNS name (e.g. attestd.example.com)", h)})
		}
	}
	return errs
}

func isAddr(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}
