package app

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"gopkg.in/yaml.v3"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// HTTP server limits.
const (
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds reading a whole request: a webhook body is at most
	// intake.max_body_bytes, and a sender that trickles it is cut off.
	readTimeout     = 30 * time.Second
	writeTimeout    = 5 * time.Minute // backups stream through the API
	idleTimeout     = 2 * time.Minute
	shutdownTimeout = 5 * time.Second
)

func timeDuration(d configs.Duration) time.Duration { return time.Duration(d) }

// gcPercent is the collector's target when GOGC is not set. The daemon's
// live heap is small and its garbage large and short-lived (SBOM
// statements of megabytes encoded, signed, decoded and verified per
// bundle): at Go's default of 100 the collector took about 14 % of the
// CPU of a fleet (marking, assists, barriers, sweeping), on a fleet that
// is CPU-bound. 200 halves the collections for at most half again the
// peak heap. GOGC, and GOMEMLIMIT, still decide when set.
const gcPercent = 200

// tuneGC applies gcPercent unless the operator set GOGC, and says which
// target is in force.
func tuneGC() string {
	if v, ok := os.LookupEnv("GOGC"); ok {
		return "GOGC=" + v
	}
	debug.SetGCPercent(gcPercent)
	return fmt.Sprintf("%d (GOGC unset)", gcPercent)
}

func (r *runner) serveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon: HTTP API and webhooks, job workers",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.serve(cmd.Context(), cfg)
		},
	}
	cmd.Flags().IntVar(&r.workers, "workers", 0, "concurrent jobs (overrides config and ATTESTD_WORKERS)")
	return cmd
}

// serve runs until ctx ends (SIGINT/SIGTERM), then drains: stop accepting
// HTTP, let in-flight stages reach a checkpoint (jobs.shutdown_grace), close
// the store.
func (r *runner) serve(ctx context.Context, cfg *configs.Config) error {
	log := r.logger(cfg, r.stderr)
	gc := tuneGC()
	if cfg.Intake.Journal != nil {
		log.Warn("intake.journal is deprecated and ignored: events are acknowledged once committed to the database; remove it from the configuration", "value", *cfg.Intake.Journal)
	}
	db, err := store.Open(dbPath(cfg), store.WithLogger(log))
	if err != nil {
		return err
	}
	defer db.Close()
	warnDiskSize(cfg.DataDir, int64(cfg.Analysis.LayerCache), log)
	rc, err := registryClient(cfg, log)
	if err != nil {
		return err
	}
	p, err := r.newPipeline(cfg, db, rc, log)
	if err != nil {
		return err
	}
	// The effective configuration (file, env and flags; it holds no secret
	// values, only paths to them) is audited by digest before work starts.
	if raw, err := yaml.Marshal(cfg); err != nil {
		return err
	} else if err := db.Audit(ctx, store.AuditEntry{Actor: "attestd", Action: "config.loaded", Details: map[string]string{
		"digest": fmt.Sprintf("sha256:%x", sha256.Sum256(raw)), "file": r.configFile, "version": version,
	}}); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if err := auditExceptions(ctx, db, cfg, time.Now()); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	guard, err := guardFor(cfg, log)
	if err != nil {
		return err
	}
	var ready atomic.Bool
	stats := watch.NewStats()
	mux, handler := newAPI(&api{db: db, rc: rc, wake: p.Wake, ready: &ready, log: log, deps: dependencyCheck(cfg, rc)}, guard, cfg.API.Pprof)
	mux.Handle("GET /metrics", metricsHandler(db, stats, rc, &r.vulnMetrics, &r.stageMetrics))
	sink := &intakeSink{db: db, rc: rc, wake: p.Wake, log: log, recordExisting: cfg.Intake.Existing == "record"}
	if err := mountSources(mux, cfg, rc, sink, stats, log); err != nil {
		return err
	}
	var poller *watch.Poller
	if cfg.Intake.PollInterval > 0 && len(cfg.Watch) > 0 {
		if poller, err = watch.NewPoller(registryLister{rc}, sink, watchFilter(cfg, rc), timeDuration(cfg.Intake.PollInterval), log, stats); err != nil {
			return err
		}
	}
	// Everything that can fail is built; only now take the port.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another attestd running? set listen or --listen)", cfg.Listen, err)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	log.Info("attestd serving", "listen", ln.Addr().String(), "data_dir", cfg.DataDir, "workers", cfg.Workers, "api_token_file", guard.tokens.path, "pprof", cfg.API.Pprof, "gc_percent", gc, "version", version)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		ready.Store(false)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), shutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	if poller != nil {
		g.Go(func() error { return poller.Run(gctx) })
	}
	g.Go(func() error { return newIntakeAuditor(db, stats, log).run(gctx, time.Minute) })
	if ret := retention(cfg); ret != (store.Retention{}) {
		g.Go(func() error { return pruneLoop(gctx, db, ret, pruneInterval, log) })
	}
	if r.vulnScanner != nil && cfg.Analysis.Vulnerabilities.RescanInterval > 0 {
		g.Go(func() error { return rescanLoop(gctx, cfg, db, r.vulnScanner, &r.vulnMetrics, log) })
	}
	g.Go(func() error {
		if err := r.analyzer.Warm(); err != nil {
			log.Warn("analysis not fully prepared before the first image", "err", err)
		}
		ready.Store(true)
		defer ready.Store(false)
		return p.Run(gctx)
	})
	err = g.Wait()
	log.Info("attestd stopped", "err", err)
	return err
}

// api is the daemon's HTTP surface.
type api struct {
	deps  func(context.Context) error // /readyz?deep=1
	db    *store.DB
	rc    *registry.Client
	wake  func()
	ready *atomic.Bool
	log   *slog.Logger
}

// newAPI mounts the API's routes on a new mux (serve mounts /metrics and
// the webhook receivers on it too) and returns the handler to serve: the
// mux behind g.
//
// Open: /healthz, /readyz and /metrics (probes and Prometheus), and
// /api/v1/stats, counts as /metrics has them. Behind the token: whatever
// changes state (submit, requeue), hands out the store (backup) or tells
// what it holds — the records (images, image) name private repositories
// and tags, and the documents (blob) are the SBOMs, vulnerability reports
// and provenance of private images, a map for an attacker. The profiler
// only when enabled (api.pprof), and then behind the token too: a profile
// shows command lines and memory.
func newAPI(a *api, g *guard, pprofOn bool) (*http.ServeMux, http.Handler) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /api/v1/stats", a.stats)
	mux.HandleFunc("GET /api/v1/images", g.auth(a.images))
	mux.HandleFunc("GET /api/v1/image", g.auth(a.image))
	mux.HandleFunc("GET /api/v1/blob", g.auth(a.blob))
	mux.HandleFunc("POST /api/v1/requeue", g.auth(a.requeue))
	mux.HandleFunc("POST /api/v1/submit", g.auth(a.submit))
	mux.HandleFunc("GET /api/v1/backup", g.auth(a.backup))
	if pprofOn {
		// Go's profiler, for measuring the daemon under load (e.g. curl -H
		// "Authorization: Bearer $(tail -1 data/api.token)" -o cpu.pprof
		// '127.0.0.1:8080/debug/pprof/profile?seconds=10').
		mux.HandleFunc("GET /debug/pprof/", g.auth(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/cmdline", g.auth(pprof.Cmdline))
		mux.HandleFunc("GET /debug/pprof/profile", g.auth(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/symbol", g.auth(pprof.Symbol))
		mux.HandleFunc("GET /debug/pprof/trace", g.auth(pprof.Trace))
	}
	return mux, g.handler(mux)
}

// readyz: the pipeline runs and the store answers (a read of the audit
// head: cheap, and it goes through bbolt). With ?deep=1 the configured
// registries and the signer's CA must answer too; not by default: an
// outage there is retried per job, and intake must keep accepting events
// meanwhile.
func (a *api) readyz(w http.ResponseWriter, req *http.Request) {
	if !a.ready.Load() {
		writeError(w, http.StatusServiceUnavailable, "not ready")
		return
	}
	if _, _, err := a.db.AuditHead(req.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	if err := diskSpace(filepath.Dir(a.db.Path())); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if req.URL.Query().Get("deep") == "1" && a.deps != nil {
		if err := a.deps(req.Context()); err != nil {
			writeError(w, http.StatusServiceUnavailable, "dependencies: "+err.Error())
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

func (a *api) stats(w http.ResponseWriter, req *http.Request) {
	st, err := a.db.Stats(req.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) images(w http.ResponseWriter, req *http.Request) {
	recs, err := a.db.Images(req.Context(), req.URL.Query().Get("prefix"))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if recs == nil {
		recs = []store.Record{}
	}
	writeJSON(w, http.StatusOK, recs)
}

func (a *api) image(w http.ResponseWriter, req *http.Request) {
	rec, err := a.db.Image(req.Context(), req.URL.Query().Get("ref"))
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

// blob serves a document analysis stored (content-addressed, verified on read).
func (a *api) blob(w http.ResponseWriter, req *http.Request) {
	b, err := a.db.Blob(req.Context(), req.URL.Query().Get("digest"))
	if err != nil {
		writeStoreError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(b)
}

func (a *api) requeue(w http.ResponseWriter, req *http.Request) {
	j, err := a.db.Requeue(req.Context(), req.URL.Query().Get("ref"), "api")
	if err != nil {
		writeStoreError(w, err)
		return
	}
	a.wake()
	writeJSON(w, http.StatusAccepted, j)
}

// submit queues one image by reference (tag or digest), the manual
// counterpart of a registry webhook. The 2xx is written only after the job is
// durable.
func (a *api) submit(w http.ResponseWriter, req *http.Request) {
	image := req.URL.Query().Get("image")
	if image == "" {
		writeError(w, http.StatusBadRequest, "missing query parameter image (e.g. ?image=registry.example.com/team/app:v1)")
		return
	}
	sub, err := submit(req.Context(), a.rc, a.db, image, "api")
	var u usageError
	switch {
	case errors.As(err, &u):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case registry.IsNotFound(err):
		writeError(w, http.StatusNotFound, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	if !sub.Duplicate {
		a.wake()
	}
	writeJSON(w, http.StatusAccepted, sub)
}

func (a *api) backup(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	if _, err := a.db.Backup(req.Context(), w); err != nil {
		// Headers are gone; the client sees a short body and fails the copy.
		a.log.Error("backup over API failed", "err", err)
	}
}

func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
