// Package vuln matches attestd's SBOMs against a grype v6 vulnerability
// database offline, with the grype library at the version the grype CLI
// v0.121.3 uses and the CLI's default matcher settings, so the library and
// the CLI find the same vulnerabilities in the same SBOM and database.
//
// It owns the database's lifecycle (Build from OSV records and vunnel
// workspaces, Import, Update through grype's own client, Status), the
// severity rules attestd gates on (Unknown counts as configured, HIGH by
// default — fail closed), exceptions with owners and expiry, OpenVEX, and
// the cosign vulnerability predicate.
//
// A database older than the configured maximum age fails every scan: a
// stale database must not let an image pass silently.
package vuln

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anchore/clio"
	"github.com/anchore/grype/cmd/grype/cli/options"
	"github.com/anchore/grype/grype"
	v6 "github.com/anchore/grype/grype/db/v6"
	"github.com/anchore/grype/grype/distro"
	"github.com/anchore/grype/grype/match"
	"github.com/anchore/grype/grype/matcher"
	"github.com/anchore/grype/grype/matcher/dotnet"
	"github.com/anchore/grype/grype/matcher/dpkg"
	"github.com/anchore/grype/grype/matcher/golang"
	"github.com/anchore/grype/grype/matcher/hex"
	"github.com/anchore/grype/grype/matcher/java"
	"github.com/anchore/grype/grype/matcher/javascript"
	"github.com/anchore/grype/grype/matcher/python"
	"github.com/anchore/grype/grype/matcher/rpm"
	"github.com/anchore/grype/grype/matcher/ruby"
	"github.com/anchore/grype/grype/matcher/rust"
	"github.com/anchore/grype/grype/matcher/stock"
	"github.com/anchore/grype/grype/pkg"
	"github.com/anchore/grype/grype/presenter/models"
	"github.com/anchore/grype/grype/vex"
	"github.com/anchore/grype/grype/vulnerability"
	syftPkg "github.com/anchore/syft/syft/pkg"
)

// GrypeVersion is the grype library version linked (go.mod).
const GrypeVersion = "v0.121.3"

// ScannerURI names the scanner in the vuln predicate.
const ScannerURI = "pkg:golang/github.com/anchore/grype@" + GrypeVersion

// Options configure a Scanner.
type Options struct {
	DB Installation
	// MaxAge fails scans with a database built longer ago. Required.
	MaxAge time.Duration
	// UnknownAs is the severity a finding with Unknown severity counts as
	// for gating: "critical", "high" (default), "medium", "low",
	// "negligible", or "unknown" to keep it apart.
	UnknownAs string
	// Exceptions suppress findings until they expire.
	Exceptions []Exception
	// WarnBefore is how long before an exception's expiry a warning is
	// logged on every scan it applies to. Default 14 days.
	WarnBefore time.Duration
	// VEX are OpenVEX documents (files) applied to every scan;
	// not_affected and fixed statements suppress findings.
	VEX     []string
	Version string // attestd's version, for the predicate
	Logger  *slog.Logger
	Now     func() time.Time
	// OnExpiring is called for each exception near expiry that applied to
	// a scan (for the metric).
	OnExpiring func(Exception)
}

// Scanner matches SBOMs against the installed database. It reopens the
// database when its content changes (an import or update) and is safe for
// concurrent use.
type Scanner struct {
	o   Options
	log *slog.Logger

	mu     sync.RWMutex
	vp     vulnerability.Provider
	status *Status
}

// NewScanner validates o and returns a Scanner; the database is opened by
// Open or on first use, so a daemon starts (and reports the problem per
// job) without one.
func NewScanner(o Options) (*Scanner, error) {
	if o.MaxAge <= 0 {
		return nil, errors.New("vuln: max database age must be positive")
	}
	if o.DB.Root == "" {
		return nil, errors.New("vuln: no database directory")
	}
	if o.UnknownAs == "" {
		o.UnknownAs = "high"
	}
	if _, ok := severityRank[strings.ToLower(o.UnknownAs)]; !ok {
		return nil, fmt.Errorf("vuln: unknown_as %q: want critical, high, medium, low, negligible or unknown", o.UnknownAs)
	}
	o.UnknownAs = strings.ToLower(o.UnknownAs)
	if o.WarnBefore <= 0 {
		o.WarnBefore = 14 * 24 * time.Hour
	}
	for i, e := range o.Exceptions {
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("vuln: exception %d: %w", i+1, err)
		}
	}
	for _, p := range o.VEX {
		if _, err := vex.NewProcessor(vex.ProcessorOptions{Documents: []string{p}}); err != nil {
			return nil, fmt.Errorf("vuln: VEX document %s: %w", p, err)
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := o.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &Scanner{o: o, log: l}, nil
}

// Open opens the installed database now (checksum verified) instead of on
// the first scan, and reports what a scan would: ErrNoDatabase, a
// StaleError. A daemon calls it before its pipeline starts, so the first
// image does not wait for the checksum of a database of hundreds of MB.
func (s *Scanner) Open() error {
	_, _, release, err := s.provider(s.o.Now())
	if err != nil {
		return err
	}
	release()
	return nil
}

// Close releases the database.
func (s *Scanner) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vp != nil {
		err := s.vp.Close()
		s.vp, s.status = nil, nil
		return err
	}
	return nil
}

// provider returns the open database, (re)opening it — checksum verified —
// when the installed one changed, and refuses a stale or missing one. The caller holds
// s.mu.RLock until it is done with the provider.
func (s *Scanner) provider(now time.Time) (vulnerability.Provider, *Status, func(), error) {
	digest, err := s.o.DB.Digest() // cheap; reopen verifies the whole file
	if err != nil {
		return nil, nil, nil, err
	}
	s.mu.RLock()
	if s.vp == nil || s.status.Digest != digest {
		s.mu.RUnlock()
		if err := s.reopen(now); err != nil {
			return nil, nil, nil, err
		}
		s.mu.RLock()
	}
	st := *s.status
	st.Age = now.Sub(st.Built)
	if st.Age > s.o.MaxAge {
		s.mu.RUnlock()
		return nil, nil, nil, &StaleError{Built: st.Built, Age: st.Age, MaxAge: s.o.MaxAge, Path: st.Path}
	}
	if st.Age < -time.Hour {
		s.mu.RUnlock()
		return nil, nil, nil, fmt.Errorf("vulnerability database %s claims to be built in the future (%s); check the clock", st.Path, st.Built.Format(time.RFC3339))
	}
	return s.vp, &st, s.mu.RUnlock, nil
}

// reopen closes the open database and opens the installed one. The old
// connection must be closed first: grype opens databases with SQLite's
// shared cache, so while any connection to the path is open, a new one
// reads the replaced file's stale pages.
func (s *Scanner) reopen(now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vp != nil {
		if d, err := s.o.DB.Digest(); err == nil && d == s.status.Digest {
			return nil // another scan reopened it meanwhile
		}
		_ = s.vp.Close()
		s.vp, s.status = nil, nil
	}
	st, err := s.o.DB.Status(now)
	if err != nil {
		return err
	}
	r, err := v6.NewReader(v6.Config{DBDirPath: filepath.Dir(st.Path)})
	if err != nil {
		return fmt.Errorf("vulnerability database %s: %w", st.Path, err)
	}
	s.vp, s.status = v6.NewVulnerabilityProvider(r), st
	s.log.Info("vulnerability database opened", "path", st.Path, "built", st.Built, "digest", st.Digest)
	return nil
}

// StaleError is returned when the database is older than allowed.
type StaleError struct {
	Built       time.Time
	Age, MaxAge time.Duration
	Path        string
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("vulnerability database %s was built %s (%s ago), older than the allowed %s: update it (`attestd vulndb update`, or `attestd vulndb import ARCHIVE` offline) — images are not scanned against stale data",
		e.Path, e.Built.Format(time.RFC3339), e.Age.Round(time.Minute), e.MaxAge)
}

// Input is one SBOM to match.
type Input struct {
	// SBOM is a CycloneDX, SPDX or syft JSON document.
	SBOM       []byte
	Repository string // host/repo, for exception scopes
	Digest     string // sha256:…, for exception scopes
}

// Report is the outcome of one scan.
type Report struct {
	// Document is grype's JSON report (what `grype -o json` prints).
	Document models.Document
	Counts   Counts
	DB       Status
	Started  time.Time
	Finished time.Time
	// Suppressed lists findings exceptions or VEX suppressed, with why.
	Suppressed []Suppression
}

// Counts are findings by severity, after exceptions and VEX. Unknown holds
// the findings with Unknown severity; they are also counted in the
// severity configured by UnknownAs (Gate*), which is what policies use.
type Counts struct {
	Critical   int    `json:"critical"`
	High       int    `json:"high"`
	Medium     int    `json:"medium"`
	Low        int    `json:"low"`
	Negligible int    `json:"negligible"`
	Unknown    int    `json:"unknown"`
	UnknownAs  string `json:"unknownAs"`
	Suppressed int    `json:"suppressed"`
	// MaxSeverity is the highest gating severity found ("" when none).
	MaxSeverity string `json:"maxSeverity,omitempty"`
}

// Total is the number of unsuppressed findings.
func (c Counts) Total() int {
	return c.Critical + c.High + c.Medium + c.Low + c.Negligible + c.Unknown
}

// Gate returns the count at a gating severity, Unknown folded in as
// configured.
func (c Counts) Gate(sev string) int {
	n := map[string]int{"critical": c.Critical, "high": c.High, "medium": c.Medium, "low": c.Low, "negligible": c.Negligible}[sev]
	if sev == c.UnknownAs {
		n += c.Unknown
	}
	return n
}

var severityRank = map[string]int{"unknown": 0, "negligible": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}

// Suppression records a finding an exception or VEX statement hid.
type Suppression struct {
	Vulnerability string `json:"vulnerability"`
	Package       string `json:"package"`
	Version       string `json:"version"`
	Severity      string `json:"severity,omitempty"`
	By            string `json:"by"` // "exception" or "vex"
	Reason        string `json:"reason"`
	Owner         string `json:"owner,omitempty"`
	Ticket        string `json:"ticket,omitempty"`
	Expires       string `json:"expires,omitempty"`
}

// Scan matches in.SBOM. Any failure — no database, a stale one, an SBOM
// that does not decode — is an error: there is no partial result.
func (s *Scanner) Scan(ctx context.Context, in Input) (*Report, error) {
	started := s.o.Now().UTC()
	vp, st, release, err := s.provider(started)
	if err != nil {
		return nil, err
	}
	defer release()

	packages, pctx, _, err := pkg.ProvideFromReader(bytes.NewReader(in.SBOM), providerConfig())
	if err != nil {
		return nil, fmt.Errorf("vuln: reading the SBOM: %w", err)
	}
	ignore := append([]match.IgnoreRule(nil), ignoreLinuxKernelHeaders...)
	if len(s.o.VEX) > 0 {
		ignore = append(ignore, ignoreVEXFixedNotAffected...)
	}
	vexp, err := vex.NewProcessor(vex.ProcessorOptions{Documents: s.o.VEX, IgnoreRules: ignore})
	if err != nil {
		return nil, fmt.Errorf("vuln: %w", err)
	}
	m := grype.VulnerabilityMatcher{
		VulnerabilityProvider: vp,
		IgnoreRules:           ignore,
		Matchers:              matcher.NewDefaultMatchers(matcherConfig()),
		VexProcessor:          vexp,
	}
	remaining, ignored, err := m.FindMatchesContext(ctx, packages, pctx)
	if err != nil {
		return nil, fmt.Errorf("vuln: matching: %w", err)
	}
	rep := &Report{DB: *st, Started: started}
	for _, im := range ignored {
		for _, r := range im.AppliedIgnoreRules {
			if r.VexStatus != "" {
				rep.Suppressed = append(rep.Suppressed, Suppression{Vulnerability: im.Vulnerability.ID,
					Package: im.Package.Name, Version: im.Package.Version, By: "vex", Reason: r.VexStatus + " " + r.VexJustification})
			}
		}
	}
	now := s.o.Now().UTC()
	kept, moreIgnored := s.applyExceptions(remaining, in, now, rep)
	ignored = append(ignored, moreIgnored...)

	doc, err := models.NewDocument(clio.Identification{Name: "attestd-grype", Version: GrypeVersion}, packages, pctx,
		*kept, ignored, vp, nil, dbInfo(st), models.DefaultSortStrategy, true, nil)
	if err != nil {
		return nil, fmt.Errorf("vuln: report: %w", err)
	}
	rep.Document = doc
	sev := map[string]string{}
	for _, im := range doc.IgnoredMatches {
		sev[im.Vulnerability.ID+" "+im.Artifact.Name+"@"+im.Artifact.Version] = strings.ToLower(im.Vulnerability.Severity)
	}
	for i, sp := range rep.Suppressed {
		rep.Suppressed[i].Severity = sev[sp.Vulnerability+" "+sp.Package+"@"+sp.Version]
	}
	rep.Counts = s.count(doc)
	rep.Counts.Suppressed = len(rep.Suppressed)
	rep.Finished = s.o.Now().UTC()
	return rep, nil
}

// Findings are the unsuppressed findings as "ID package@version", sorted
// and unique.
func (r *Report) Findings() []string {
	out := make([]string, 0, len(r.Document.Matches))
	for _, m := range r.Document.Matches {
		out = append(out, m.Vulnerability.ID+" "+m.Artifact.Name+"@"+m.Artifact.Version)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (s *Scanner) count(doc models.Document) Counts {
	c := Counts{UnknownAs: s.o.UnknownAs}
	max := -1
	for _, m := range doc.Matches {
		sev := strings.ToLower(m.Vulnerability.Severity)
		switch sev {
		case "critical":
			c.Critical++
		case "high":
			c.High++
		case "medium":
			c.Medium++
		case "low":
			c.Low++
		case "negligible":
			c.Negligible++
		default:
			c.Unknown++
			sev = s.o.UnknownAs
		}
		if r := severityRank[sev]; r > max {
			max, c.MaxSeverity = r, sev
		}
	}
	return c
}

func dbInfo(st *Status) any {
	return struct {
		Path   string    `json:"path"`
		Schema string    `json:"schemaVersion"`
		Built  time.Time `json:"built"`
		From   string    `json:"from,omitempty"`
		Digest string    `json:"digest"`
	}{st.Path, st.Schema, st.Built, st.From, st.Digest}
}

// The grype CLI's default rules (cmd/grype/cli/commands/root.go).
var ignoreLinuxKernelHeaders = []match.IgnoreRule{
	{Package: match.IgnoreRulePackage{Name: "kernel-headers", UpstreamName: "kernel", Type: string(syftPkg.RpmPkg)}, MatchType: match.ExactIndirectMatch},
	{Package: match.IgnoreRulePackage{Name: "linux(-.*)?-headers-.*", UpstreamName: "linux.*", Type: string(syftPkg.DebPkg)}, MatchType: match.ExactIndirectMatch},
	{Package: match.IgnoreRulePackage{Name: "linux-libc-dev", UpstreamName: "linux", Type: string(syftPkg.DebPkg)}, MatchType: match.ExactIndirectMatch},
	{Package: match.IgnoreRulePackage{Name: "linux-kbuild-.*", UpstreamName: "linux.*", Type: string(syftPkg.DebPkg)}, MatchType: match.ExactIndirectMatch},
}

var ignoreVEXFixedNotAffected = []match.IgnoreRule{{VexStatus: "not_affected"}, {VexStatus: "fixed"}}

// matcherConfig is the grype CLI's matcher configuration at its defaults.
func matcherConfig() matcher.Config {
	opts := options.DefaultGrype(clio.Identification{Name: "grype"})
	return matcher.Config{
		Java:       java.MatcherConfig{ExternalSearchConfig: opts.ExternalSources.ToJavaMatcherConfig(), UseCPEs: opts.Match.Java.UseCPEs},
		Ruby:       ruby.MatcherConfig(opts.Match.Ruby),
		Python:     python.MatcherConfig(opts.Match.Python),
		Dotnet:     dotnet.MatcherConfig(opts.Match.Dotnet),
		Javascript: javascript.MatcherConfig(opts.Match.Javascript),
		Golang: golang.MatcherConfig{
			UseCPEs:                                opts.Match.Golang.UseCPEs,
			AlwaysUseCPEForStdlib:                  opts.Match.Golang.AlwaysUseCPEForStdlib,
			AllowMainModulePseudoVersionComparison: opts.Match.Golang.AllowMainModulePseudoVersionComparison,
		},
		Rust:  rust.MatcherConfig(opts.Match.Rust),
		Hex:   hex.MatcherConfig(opts.Match.Hex),
		Stock: stock.MatcherConfig(opts.Match.Stock),
		Dpkg: dpkg.MatcherConfig{
			MissingEpochStrategy: opts.Match.Dpkg.MissingEpochStrategy,
			UseCPEsForEOL:        opts.Match.Dpkg.UseCPEsForEOL,
			UseCPEs:              opts.Match.Dpkg.UseCPEs,
		},
		Rpm: rpm.MatcherConfig{
			MissingEpochStrategy: opts.Match.Rpm.MissingEpochStrategy,
			UseCPEsForEOL:        opts.Match.Rpm.UseCPEsForEOL,
			UseCPEs:              opts.Match.Rpm.UseCPEs,
		},
	}
}

// providerConfig is how the grype CLI reads an SBOM, at its defaults.
func providerConfig() pkg.ProviderConfig {
	return pkg.ProviderConfig{SynthesisConfig: pkg.SynthesisConfig{
		Distro: pkg.DistroConfig{FixChannels: distro.DefaultFixChannels()},
	}}
}
