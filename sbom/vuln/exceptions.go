package vuln

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/anchore/grype/grype/match"
)

// Exception suppresses a finding until it expires. Vulnerability is
// required (an ID or alias: GO-…, CVE-…, GHSA-…); Package, Repository (a
// glob over host/repo) and Digest narrow it. Owner, Reason and Expires are
// required: an exception nobody owns or that never ends is not accepted.
type Exception struct {
	Vulnerability string    `yaml:"vulnerability" json:"vulnerability"`
	Package       string    `yaml:"package,omitempty" json:"package,omitempty"`
	Repository    string    `yaml:"repository,omitempty" json:"repository,omitempty"`
	Digest        string    `yaml:"digest,omitempty" json:"digest,omitempty"`
	Owner         string    `yaml:"owner" json:"owner"`
	Reason        string    `yaml:"reason" json:"reason"`
	Ticket        string    `yaml:"ticket,omitempty" json:"ticket,omitempty"`
	Expires       time.Time `yaml:"expires" json:"expires"`
}

func (e Exception) validate() error {
	var missing []string
	if e.Vulnerability == "" {
		missing = append(missing, "vulnerability")
	}
	if e.Owner == "" {
		missing = append(missing, "owner")
	}
	if e.Reason == "" {
		missing = append(missing, "reason")
	}
	if e.Expires.IsZero() {
		missing = append(missing, "expires")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: missing %s", e.Vulnerability, strings.Join(missing, ", "))
	}
	if e.Repository != "" {
		if _, err := path.Match(e.Repository, ""); err != nil {
			return fmt.Errorf("%s: repository pattern %q: %w", e.Vulnerability, e.Repository, err)
		}
	}
	if e.Digest != "" && !strings.HasPrefix(e.Digest, "sha256:") {
		return errors.New(e.Vulnerability + ": digest must be sha256:…")
	}
	return nil
}

// Active reports whether e still applies at now.
func (e Exception) Active(now time.Time) bool { return now.Before(e.Expires) }

// matches reports whether e covers m in the image in.
func (e Exception) matches(m match.Match, in Input) bool {
	ids := []string{m.Vulnerability.ID}
	for _, r := range m.Vulnerability.RelatedVulnerabilities {
		ids = append(ids, r.ID)
	}
	if !slices.ContainsFunc(ids, func(id string) bool { return strings.EqualFold(id, e.Vulnerability) }) {
		return false
	}
	if e.Package != "" && e.Package != m.Package.Name {
		return false
	}
	if e.Repository != "" {
		if ok, _ := path.Match(e.Repository, in.Repository); !ok {
			return false
		}
	}
	return e.Digest == "" || e.Digest == in.Digest
}

// applyExceptions moves findings an active exception covers to the ignored
// list (recorded in the report); expired exceptions no longer apply.
func (s *Scanner) applyExceptions(ms *match.Matches, in Input, now time.Time, rep *Report) (*match.Matches, []match.IgnoredMatch) {
	if len(s.o.Exceptions) == 0 {
		return ms, nil
	}
	kept := match.NewMatches()
	var ignored []match.IgnoredMatch
	for _, m := range ms.Sorted() {
		var hit *Exception
		for i := range s.o.Exceptions {
			e := &s.o.Exceptions[i]
			if !e.matches(m, in) {
				continue
			}
			if !e.Active(now) {
				s.log.Warn("vulnerability exception expired: the finding counts again",
					"vulnerability", e.Vulnerability, "owner", e.Owner, "ticket", e.Ticket, "expired", e.Expires, "digest", in.Digest)
				continue
			}
			hit = e
			break
		}
		if hit == nil {
			kept.Add(m)
			continue
		}
		if hit.Expires.Sub(now) < s.o.WarnBefore {
			s.log.Warn("vulnerability exception expires soon", "vulnerability", hit.Vulnerability, "owner", hit.Owner,
				"ticket", hit.Ticket, "expires", hit.Expires, "digest", in.Digest)
			if s.o.OnExpiring != nil {
				s.o.OnExpiring(*hit)
			}
		}
		reason := fmt.Sprintf("attestd exception (owner %s, ticket %s, expires %s): %s", hit.Owner, hit.Ticket, hit.Expires.Format(time.RFC3339), hit.Reason)
		ignored = append(ignored, match.IgnoredMatch{Match: m, AppliedIgnoreRules: []match.IgnoreRule{{
			Vulnerability: hit.Vulnerability, Reason: reason, Namespace: "attestd",
		}}})
		rep.Suppressed = append(rep.Suppressed, Suppression{
			Vulnerability: m.Vulnerability.ID, Package: m.Package.Name, Version: m.Package.Version, By: "exception",
			Reason: hit.Reason, Owner: hit.Owner, Ticket: hit.Ticket, Expires: hit.Expires.Format(time.RFC3339),
		})
	}
	return &kept, ignored
}
