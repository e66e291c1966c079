// Package promote plans promotions: pure values, no I/O. A Rule maps a
// staging repository (glob) to a production repository and says which
// tags go along; Plan turns an evaluated digest and its tags into Edges
// (src repo@digest → dst repo:tag). The effect — copying by digest with
// every referrer, verifying, tagging last — is app's, on store/registry.
package promote

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
)

// Tag strategies.
const (
	TagsKeep   = "keep"   // every tag the digest carries in staging
	TagsSemver = "semver" // only vMAJOR.MINOR.PATCH tags (optional v, pre-release allowed)
	TagsRename = "rename" // tags matching Match, rewritten to Replace ($1 … groups)
)

// Rule maps staging repositories to a production repository.
type Rule struct {
	From string `yaml:"from" json:"from"` // glob over host/repo, e.g. "staging.example.com/team/*"
	// To is the production repository; "{name}" is replaced by the last
	// path element of the source repository, "{path}" by everything after
	// the source host.
	To      string `yaml:"to" json:"to"`
	Tags    string `yaml:"tags" json:"tags"` // keep (default), semver, rename
	Match   string `yaml:"match" json:"match,omitempty"`
	Replace string `yaml:"replace" json:"replace,omitempty"`

	re *regexp.Regexp
}

// Edge is one promotion: the evaluated digest to a production tag.
type Edge struct {
	Src string `json:"src"` // host/repo@sha256:…
	Dst string `json:"dst"` // host/repo:tag
}

func (e Edge) String() string { return e.Src + " → " + e.Dst }

var semver = regexp.MustCompile(`^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$`)

// Validate checks the rules and compiles their patterns.
func Validate(rules []Rule) error {
	var errs []error
	for i := range rules {
		r := &rules[i]
		f := fmt.Sprintf("promotion.rules[%d]", i)
		if r.From == "" || r.To == "" {
			errs = append(errs, fmt.Errorf("%s: from and to are required", f))
		}
		if _, err := path.Match(r.From, ""); err != nil {
			errs = append(errs, fmt.Errorf("%s.from: %q is not a valid glob", f, r.From))
		}
		if strings.ContainsAny(strings.NewReplacer("{name}", "", "{path}", "").Replace(r.To), "*?[{}@:") && !strings.Contains(hostOf(r.To), ":") {
			errs = append(errs, fmt.Errorf("%s.to: %q must be a repository (host/path, {name} and {path} allowed)", f, r.To))
		}
		if r.Tags == "" {
			r.Tags = TagsKeep
		}
		switch r.Tags {
		case TagsKeep, TagsSemver:
		case TagsRename:
			re, err := regexp.Compile("^(?:" + r.Match + ")$")
			if err != nil || r.Match == "" || r.Replace == "" {
				errs = append(errs, fmt.Errorf("%s: rename needs match (a regular expression) and replace: %v", f, err))
			}
			r.re = re
		default:
			errs = append(errs, fmt.Errorf("%s.tags: %q: use keep, semver or rename", f, r.Tags))
		}
	}
	return errors.Join(errs...)
}

func hostOf(repo string) string {
	h, _, _ := strings.Cut(repo, "/")
	return h
}

// Plan returns the edges for digest of repo (host/repo) carrying tags:
// the first rule whose From matches decides. No rule, or no tag that the
// rule keeps: no edges (and the reason). Edges are sorted and unique.
func Plan(rules []Rule, repo, digest string, tags []string) ([]Edge, string) {
	if !strings.HasPrefix(digest, "sha256:") {
		return nil, "not a digest: " + digest
	}
	for _, r := range rules {
		if ok, _ := path.Match(r.From, repo); !ok {
			continue
		}
		dst := strings.NewReplacer("{name}", path.Base(repo), "{path}", strings.TrimPrefix(repo, hostOf(repo)+"/")).Replace(r.To)
		var out []Edge
		for _, t := range tags {
			nt, ok := r.tag(t)
			if !ok {
				continue
			}
			out = append(out, Edge{Src: repo + "@" + digest, Dst: dst + ":" + nt})
		}
		slices.SortFunc(out, func(a, b Edge) int { return strings.Compare(a.Dst, b.Dst) })
		out = slices.Compact(out)
		if len(out) == 0 {
			return nil, fmt.Sprintf("rule %s → %s keeps none of the tags (%s, strategy %s)", r.From, r.To, strings.Join(tags, ", "), r.Tags)
		}
		return out, ""
	}
	return nil, "no promotion rule matches " + repo
}

func (r Rule) tag(t string) (string, bool) {
	switch r.Tags {
	case TagsSemver:
		return t, semver.MatchString(t)
	case TagsRename:
		if r.re == nil || !r.re.MatchString(t) {
			return "", false
		}
		return r.re.ReplaceAllString(t, r.Replace), true
	default:
		return t, true
	}
}
