// Package app is attestd's composition root: the cobra commands, config →
// options, and the wiring of every package. It is the only package that
// knows them all; main.go calls Main and nothing else.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/configs"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1 // the operation failed
	ExitUsage = 2 // bad flags, arguments or configuration
)

// Build information, set with -ldflags "-X …/app.version=… -X …/app.commit=…".
var (
	version = "dev"
	commit  = ""
)

// Option adjusts a Run (tests drive the real commands through it).
type Option func(*runner)

// WithLookupEnv replaces os.LookupEnv for ATTESTD_* overrides.
func WithLookupEnv(f func(string) (string, bool)) Option {
	return func(r *runner) { r.lookupEnv = f }
}

// WithStages lets a caller wrap or replace the stages app wires (tests that
// need a slow or failing stage inside the real daemon).
func WithStages(f func(pipeline.Stages) pipeline.Stages) Option {
	return func(r *runner) { r.wrapStages = f }
}

// WithJobDone observes every job outcome after it is durable.
func WithJobDone(f func(ref string, id uint64, err error)) Option {
	return func(r *runner) { r.jobDone = f }
}

type runner struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
	wrapStages     func(pipeline.Stages) pipeline.Stages
	jobDone        func(ref string, id uint64, err error)
	vulnMetrics    vulnMetrics
	stageMetrics   stageMetrics
	vulnScanner    analyze.VulnScanner // set by newPipeline; nil when the scan is off
	analyzer       *analyze.Analyzer   // set by newPipeline

	// flags shared by commands
	configFile string
	listen     string
	dataDir    string
	workers    int
	logLevel   string
	server     string
}

// usageError marks errors that exit with ExitUsage.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// Main runs attestd with the process's arguments and signals.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// Run executes one attestd command line and returns its exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, opts ...Option) int {
	r := &runner{stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv}
	for _, o := range opts {
		o(r)
	}
	root := r.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if r.vulnScanner != nil {
		closeScanner(r.vulnScanner)
	}
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(stderr, "attestd:", err)
	var u usageError
	var ce *configs.Error
	if errors.As(err, &u) || errors.As(err, &ce) {
		return ExitUsage
	}
	return ExitError
}

func (r *runner) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "attestd",
		Short: "Supply-chain gate between a staging registry and production",
		Long: `attestd watches a staging registry, analyses every new image digest
(SBOMs, hardening facts, vulnerabilities, provenance), signs the results
keylessly with Sigstore, and promotes only what verifies against policy.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVarP(&r.configFile, "config", "c", "", "config file (YAML; see configs/attestd.yaml). Env: ATTESTD_CONFIG")
	pf.StringVar(&r.dataDir, "data-dir", "", "data directory (overrides config and ATTESTD_DATA_DIR)")
	pf.StringVar(&r.listen, "listen", "", "daemon HTTP address: serve listens there, other commands reach a running daemon there (overrides config and ATTESTD_LISTEN)")
	pf.StringVar(&r.logLevel, "log-level", "", "debug, info, warn or error (overrides config and ATTESTD_LOG_LEVEL)")
	root.AddCommand(
		r.serveCommand(), r.processCommand(), r.submitCommand(), r.statusCommand(), r.docCommand(), r.requeueCommand(), r.auditCommand(),
		r.vulndbCommand(), r.policyCommand(), r.promoteCommand(), r.storeCommand(), r.healthcheckCommand(), r.versionCommand(),
	)
	return root
}

// loadConfig applies defaults < file < env < flags, then validates.
func (r *runner) loadConfig(cmd *cobra.Command) (*configs.Config, error) {
	file := r.configFile
	if file == "" {
		file, _ = r.lookupEnv(configs.EnvPrefix + "CONFIG")
	}
	cfg := configs.Default()
	if file != "" {
		var err error
		if cfg, err = configs.LoadFile(file); err != nil {
			return nil, err
		}
	}
	if err := cfg.ApplyEnv(r.lookupEnv); err != nil {
		return nil, err
	}
	f := cmd.Flags()
	if f.Changed("listen") {
		cfg.Listen = r.listen
	}
	if f.Changed("data-dir") {
		cfg.DataDir = r.dataDir
	}
	if f.Changed("workers") {
		cfg.Workers = r.workers
	}
	if f.Changed("log-level") {
		cfg.Log.Level = r.logLevel
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (r *runner) logger(cfg *configs.Config, w io.Writer) *slog.Logger {
	lvl, _ := configs.ParseLevel(cfg.Log.Level) // validated
	o := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "text" {
		return slog.New(slog.NewTextHandler(w, o))
	}
	return slog.New(slog.NewJSONHandler(w, o))
}

// dbPath is the database file inside the data dir.
func dbPath(cfg *configs.Config) string { return filepath.Join(cfg.DataDir, "attestd.db") }

func (r *runner) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, c, goV := buildInfo()
			fmt.Fprintf(cmd.OutOrStdout(), "attestd %s\ncommit: %s\ngo: %s\n", v, c, goV)
			return nil
		},
	}
}

func buildInfo() (ver, rev, goVersion string) {
	ver, rev = version, commit
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ver, rev, "unknown"
	}
	if ver == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		ver = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && rev == "" {
			rev = s.Value
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev, bi.GoVersion
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("usage: %s %s", cmd.CommandPath(), what)}
		}
		return nil
	}
}
