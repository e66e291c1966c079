package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/sbom/vuln"
	"github.com/attestd/attestd/store"
)

// vulnInstallation is the configured database directory and update source.
func vulnInstallation(cfg *configs.Config) vuln.Installation {
	v := cfg.Analysis.Vulnerabilities
	dir := v.DBDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "vulndb")
	}
	return vuln.Installation{Root: dir, LatestURL: v.LatestURL, CACert: v.CACert}
}

// vulnMetrics count scans by result and warnings of exceptions near expiry.
type vulnMetrics struct {
	mu        sync.Mutex
	scans     map[string]int // ok, failed
	expiring  map[string]int // vulnerability → warnings
	rescanNew map[string]int // "new" → findings new after a re-scan
}

func (m *vulnMetrics) add(mp *map[string]int, k string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if *mp == nil {
		*mp = map[string]int{}
	}
	(*mp)[k] += n
}

func (m *vulnMetrics) inc(mp *map[string]int, k string) { m.add(mp, k, 1) }

func (m *vulnMetrics) write(b *strings.Builder) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b.WriteString("# HELP attestd_vuln_scans_total Vulnerability scans by result (ok, failed: no or stale database, bad SBOM).\n# TYPE attestd_vuln_scans_total counter\n")
	for _, k := range sortedKeys(m.scans) {
		fmt.Fprintf(b, "attestd_vuln_scans_total{result=%q} %d\n", k, m.scans[k])
	}
	b.WriteString("# HELP attestd_vuln_exceptions_expiring_total Scans where an exception within its warning period before expiry applied.\n# TYPE attestd_vuln_exceptions_expiring_total counter\n")
	for _, k := range sortedKeys(m.expiring) {
		fmt.Fprintf(b, "attestd_vuln_exceptions_expiring_total{vulnerability=%q} %d\n", k, m.expiring[k])
	}
	fmt.Fprintf(b, "# HELP attestd_vuln_rescan_new_findings_total Findings that appeared in signed images when their SBOMs were re-matched against a new database.\n# TYPE attestd_vuln_rescan_new_findings_total counter\nattestd_vuln_rescan_new_findings_total %d\n", m.rescanNew["new"])
}

// countingScanner records each scan's result in the metrics.
type countingScanner struct {
	s *vuln.Scanner
	m *vulnMetrics
}

// Close releases the database.
func (c countingScanner) Close() error { return c.s.Close() }

func (c countingScanner) Scan(ctx context.Context, in vuln.Input) (*vuln.Report, error) {
	rep, err := c.s.Scan(ctx, in)
	res := "ok"
	if err != nil {
		res = "failed"
	}
	c.m.inc(&c.m.scans, res)
	return rep, err
}

// newVulnScanner is the configured scanner, or nil when the scan is off.
func newVulnScanner(cfg *configs.Config, m *vulnMetrics, log *slog.Logger) (analyze.VulnScanner, error) {
	v := cfg.Analysis.Vulnerabilities
	if v.Disabled {
		return nil, nil
	}
	o := vuln.Options{
		DB: vulnInstallation(cfg), MaxAge: time.Duration(v.MaxDBAge), UnknownAs: v.UnknownSeverityAs,
		WarnBefore: time.Duration(v.ExceptionWarning), VEX: v.VEX, Logger: log,
		OnExpiring: func(e vuln.Exception) { m.inc(&m.expiring, e.Vulnerability) },
	}
	for _, e := range v.Exceptions {
		o.Exceptions = append(o.Exceptions, vuln.Exception{
			Vulnerability: e.Vulnerability, Package: e.Package, Repository: e.Repository, Digest: e.Digest,
			Owner: e.Owner, Reason: e.Reason, Ticket: e.Ticket, Expires: e.Expires,
		})
	}
	s, err := vuln.NewScanner(o)
	if err != nil {
		return nil, err
	}
	return countingScanner{s, m}, nil
}

// Open opens the database ahead of the first scan.
func (c countingScanner) Open() error { return c.s.Open() }

// closeScanner releases a scanner's database connection.
func closeScanner(sc analyze.VulnScanner) {
	if c, ok := sc.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}

func (r *runner) vulndbCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vulndb",
		Short: "Build, install, update and inspect the offline vulnerability database",
		Long: `attestd matches every SBOM against a grype v6 database installed under
analysis.vulnerabilities.db_dir (default <data_dir>/vulndb). A database older
than analysis.vulnerabilities.max_db_age fails every scan (fail closed).`,
	}
	var osv, vunnel []string
	var overlay, out string
	build := &cobra.Command{
		Use:   "build --osv DIR|ZIP [--vunnel DIR] -o DIR",
		Short: "Build a grype v6 database offline from OSV records (and vunnel provider workspaces)",
		Example: `  attestd vulndb build --osv go-vulndb.zip --severity-overlay overlay.json -o dist/
  attestd vulndb import dist/vulnerability-db_v6*.tar.zst`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{fmt.Errorf("-o DIR is required")}
			}
			start := time.Now()
			b, err := vuln.Build(cmd.Context(), vuln.BuildOptions{OSV: osv, Vunnel: vunnel, SeverityOverlay: overlay, Out: out})
			if err != nil {
				return err
			}
			fmt.Fprintf(r.stdout, "built %s (schema %s, %d records, built %s) in %s\nlisting: %s\n",
				b.Archive, b.Schema, b.Records, b.Built.Format(time.RFC3339), time.Since(start).Round(time.Millisecond), b.Latest)
			return nil
		},
	}
	build.Flags().StringSliceVar(&osv, "osv", nil, "directory or zip of OSV records (repeatable)")
	build.Flags().StringSliceVar(&vunnel, "vunnel", nil, "vunnel provider workspace directory (repeatable)")
	build.Flags().StringVar(&overlay, "severity-overlay", "", `JSON {"ID": {"cvss_v3": "CVSS:3.1/…"}} adding severities to records without one`)
	build.Flags().StringVarP(&out, "output", "o", "", "output directory for the archive and latest.json")

	imp := &cobra.Command{
		Use:   "import ARCHIVE",
		Short: "Install a database archive from a file (the air-gapped path)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := vulnInstallation(cfg).Import(args[0])
			if err != nil {
				return err
			}
			return r.printVulnStatus(st, cfg, false)
		},
	}
	update := &cobra.Command{
		Use:   "update",
		Short: "Install the newest database from analysis.vulnerabilities.latest_url (grype's update client)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			in := vulnInstallation(cfg)
			updated, err := in.Update()
			if err != nil {
				return err
			}
			if !updated {
				fmt.Fprintln(r.stdout, "already up to date")
			}
			st, err := in.Status(time.Now())
			if err != nil {
				return err
			}
			return r.printVulnStatus(st, cfg, false)
		},
	}
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Print the installed database's schema, build date and age; exit 1 when missing or stale",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			st, err := vulnInstallation(cfg).Status(time.Now())
			if err != nil {
				return err
			}
			return r.printVulnStatus(st, cfg, asJSON)
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rescanCmd := &cobra.Command{
		Use:   "rescan",
		Short: "Re-match the stored SBOMs of signed digests against the installed database; print new findings",
		Long: `Re-matches the stored CycloneDX SBOM of every attested, evaluated or promoted digest
whose findings came from another database, and records the new counts and which
findings are new (store and audit log). A running daemon does this by itself
when the database changes (analysis.vulnerabilities.rescan_interval).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			log := r.logger(cfg, r.stderr)
			sc, err := newVulnScanner(cfg, &r.vulnMetrics, log)
			if err != nil {
				return err
			}
			if sc == nil {
				return usageError{fmt.Errorf("analysis.vulnerabilities.disabled is set: nothing to re-scan with")}
			}
			defer closeScanner(sc)
			db, err := store.Open(dbPath(cfg), store.WithLockTimeout(500*time.Millisecond))
			if errors.Is(err, store.ErrLocked) {
				return fmt.Errorf("%w: the running daemon re-scans by itself when the database changes (every %s)", err, time.Duration(cfg.Analysis.Vulnerabilities.RescanInterval))
			}
			if err != nil {
				return err
			}
			defer db.Close()
			sum, err := analyze.Rescan(cmd.Context(), db, sc, vulnInstallation(cfg), func(n int) { r.vulnMetrics.add(&r.vulnMetrics.rescanNew, "new", n) }, log)
			if err != nil {
				return err
			}
			fmt.Fprintf(r.stdout, "re-scanned %d (already current %d) against %s: %d new findings, %d resolved\n",
				sum.Subjects, sum.Current, sum.DB, sum.New, sum.Resolved)
			return nil
		},
	}
	var format, repo, digest string
	scan := &cobra.Command{
		Use:   "scan SBOM-FILE",
		Short: "Match an SBOM file (CycloneDX, SPDX or syft JSON) against the installed database",
		Long: `Matches an SBOM the way the analysis stage does — same database, severity rule,
exceptions and VEX — and prints the counts (or grype's JSON report, or the cosign
vuln predicate). Exit 1 when the database is missing or stale.`,
		Example: `  attestd vulndb scan app.cdx.json
  attestd vulndb scan app.cdx.json --format json | jq '.matches[].vulnerability.id'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			if format != "table" && format != "json" && format != "predicate" {
				return usageError{fmt.Errorf("--format %q: use table, json or predicate", format)}
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			sc, err := newVulnScanner(cfg, &r.vulnMetrics, r.logger(cfg, r.stderr))
			if err != nil {
				return err
			}
			if sc == nil {
				return usageError{fmt.Errorf("analysis.vulnerabilities.disabled is set")}
			}
			defer closeScanner(sc)
			rep, err := sc.Scan(cmd.Context(), vuln.Input{SBOM: b, Repository: repo, Digest: digest})
			if err != nil {
				return err
			}
			switch format {
			case "json":
				return json.NewEncoder(r.stdout).Encode(rep.Document)
			case "predicate":
				p, err := rep.Predicate("https://attestd.dev/vulndb-scan", args[0], "https://attestd.dev/attestd@"+version)
				if err != nil {
					return err
				}
				_, err = r.stdout.Write(append(p, '\n'))
				return err
			}
			c := rep.Counts
			fmt.Fprintf(r.stdout, "%d findings: critical=%d high=%d medium=%d low=%d negligible=%d unknown=%d (gated as %s), suppressed=%d; database %s built %s\n",
				c.Total(), c.Critical, c.High, c.Medium, c.Low, c.Negligible, c.Unknown, c.UnknownAs, c.Suppressed, rep.DB.Digest, rep.DB.Built.Format(time.RFC3339))
			for _, f := range rep.Findings() {
				fmt.Fprintln(r.stdout, "  "+f)
			}
			return nil
		},
	}
	scan.Flags().StringVar(&format, "format", "table", "table, json (grype's report) or predicate (cosign vuln/v1)")
	scan.Flags().StringVar(&repo, "repo", "", "host/repo the SBOM is of (exception scopes)")
	scan.Flags().StringVar(&digest, "digest", "", "sha256:… the SBOM is of (exception scopes)")
	cmd.AddCommand(build, imp, update, status, rescanCmd, scan)
	return cmd
}

func (r *runner) printVulnStatus(st *vuln.Status, cfg *configs.Config, asJSON bool) error {
	maxAge := time.Duration(cfg.Analysis.Vulnerabilities.MaxDBAge)
	stale := st.Age > maxAge
	if asJSON {
		b, _ := json.MarshalIndent(struct {
			*vuln.Status
			AgeSeconds int64 `json:"ageSeconds"`
			Stale      bool  `json:"stale"`
		}{st, int64(st.Age.Seconds()), stale}, "", "  ")
		fmt.Fprintln(r.stdout, string(b))
	} else {
		fmt.Fprintf(r.stdout, "path:    %s\nschema:  %s\nbuilt:   %s\nage:     %s (max %s)\ndigest:  %s\nfrom:    %s\n",
			st.Path, st.Schema, st.Built.Format(time.RFC3339), st.Age.Round(time.Second), maxAge, st.Digest, st.From)
	}
	if stale {
		return fmt.Errorf("the vulnerability database is stale (built %s ago, max_db_age %s): scans fail until it is updated", st.Age.Round(time.Minute), maxAge)
	}
	return nil
}
