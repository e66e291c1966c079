package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// apiTimeout bounds one call to a running daemon's API.
const apiTimeout = 30 * time.Second

func (r *runner) processCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "process IMAGE",
		Short: "Run the pipeline once, in the foreground, for one image and print what each stage did",
		Long: `process resolves IMAGE (tag or digest) and runs every stage for it now,
recording the result in the store like the daemon would. Stages that are
not configured are reported as skipped, never as passed. Stop the daemon
first: the store allows one writer.`,
		Example: "  attestd process -c attestd.yaml 127.0.0.1:5000/demo/app:v1",
		Args:    exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.process(cmd.Context(), cfg, args[0])
		},
	}
}

func (r *runner) process(ctx context.Context, cfg *configs.Config, image string) error {
	log := r.logger(cfg, r.stderr)
	rc, err := registryClient(cfg, log)
	if err != nil {
		return err
	}
	// Resolve before opening the store: a missing image leaves nothing behind.
	res, err := resolveImage(ctx, rc, image)
	if err != nil {
		return err
	}
	db, err := store.Open(dbPath(cfg), store.WithLogger(log))
	if err != nil {
		return err
	}
	defer db.Close()
	if err := auditExceptions(ctx, db, cfg, time.Now()); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	sub, err := enqueueResolved(ctx, db, res, "cli")
	if err != nil {
		return err
	}
	ref, jobID := sub.Ref, sub.JobID
	if sub.Duplicate {
		j, err := db.Requeue(ctx, ref, "cli")
		if err != nil {
			return fmt.Errorf("process %s: %w", ref, err)
		}
		jobID = j.ID
	}
	p, err := r.newPipeline(cfg, db, rc, log)
	if err != nil {
		return err
	}
	runErr := p.Process(ctx, jobID)
	rec, err := db.Image(ctx, ref)
	if err != nil {
		return err
	}
	printRecord(r.stdout, rec)
	if runErr != nil {
		return fmt.Errorf("process %s: %w", ref, runErr)
	}
	return nil
}

// submission is what submit did.
type submission struct {
	Ref       string `json:"ref"`
	JobID     uint64 `json:"jobId"`
	Duplicate bool   `json:"duplicate"`
}

// resolved is an image reference resolved to its digest.
type resolved struct {
	parsed name.Reference
	digest name.Digest
}

// resolveImage resolves image (tag or digest) against its registry. A bad
// reference is a usageError.
func resolveImage(ctx context.Context, rc *registry.Client, image string) (resolved, error) {
	parsed, err := rc.ParseReference(image)
	if err != nil {
		return resolved{}, usageError{err}
	}
	dgst, _, err := rc.Resolve(ctx, parsed)
	if err != nil {
		return resolved{}, err
	}
	return resolved{parsed: parsed, digest: dgst}, nil
}

// enqueueResolved enqueues the digest at event priority, with the tag it
// was named by, through the store's intake writer like a webhook delivery.
func enqueueResolved(ctx context.Context, db *store.DB, r resolved, source string) (submission, error) {
	req := store.EnqueueRequest{Ref: r.digest.String(), Source: source}
	if tag, ok := r.parsed.(name.Tag); ok {
		req.Tag = tag.String()
	}
	res, err := db.Enqueue(ctx, req)
	if err != nil {
		return submission{}, err
	}
	return submission{Ref: r.digest.String(), JobID: res.JobID, Duplicate: res.Duplicate}, nil
}

// submit resolves image and enqueues it; nothing is written unless the image
// resolved.
func submit(ctx context.Context, rc *registry.Client, db *store.DB, image, source string) (submission, error) {
	r, err := resolveImage(ctx, rc, image)
	if err != nil {
		return submission{}, err
	}
	return enqueueResolved(ctx, db, r, source)
}

// printRecord writes one image's state and every stage, in pipeline order.
func printRecord(w io.Writer, rec *store.Record) {
	fmt.Fprintf(w, "image:  %s\nstate:  %s\n", rec.Ref, rec.State)
	if rec.MediaType != "" {
		fmt.Fprintf(w, "type:   %s\n", rec.MediaType)
	}
	for _, c := range rec.Children {
		fmt.Fprintf(w, "child:  %s %s\n", c.Digest, c.Platform)
	}
	for _, f := range rec.Facts {
		fmt.Fprintf(w, "facts:  %s %s packages=%d size=%d base=%q hardening_failed=[%s]\n",
			f.Subject, f.Platform, f.Packages, f.Size, f.BaseImage, strings.Join(f.Failed, " "))
		if v := f.Vulns; v != nil {
			fmt.Fprintf(w, "vulns:  %s critical=%d high=%d medium=%d low=%d negligible=%d unknown=%d (gated as %s) suppressed=%d db=%s\n",
				f.Subject, v.Critical, v.High, v.Medium, v.Low, v.Negligible, v.Unknown, v.UnknownAs, v.Suppressed, v.DB)
		}
	}
	for _, a := range rec.Artifacts {
		fmt.Fprintf(w, "doc:    %-10s %s %s (%d bytes) %s\n", a.Kind, a.Subject, a.Digest, a.Size, a.PredicateType)
	}
	if d := rec.Decision; d != nil {
		fmt.Fprintf(w, "decision: allow=%t", d.Allow)
		if d.PolicyDigest != "" {
			fmt.Fprintf(w, " mode=%s policy=%s vsa=%s tags=[%s]", d.Mode, d.PolicyDigest, d.VSA, strings.Join(d.Tags, " "))
		}
		fmt.Fprintln(w)
		for _, r := range d.Reasons {
			fmt.Fprintln(w, "  - "+r)
		}
		for _, r := range d.Warnings {
			fmt.Fprintln(w, "  warning: "+r)
		}
	}
	if rec.LastError != "" {
		fmt.Fprintf(w, "error:  %s\n", rec.LastError)
	}
	if rec.Note != "" {
		fmt.Fprintf(w, "note:   %s\n", rec.Note)
	}
	if rec.Parent != "" {
		fmt.Fprintf(w, "part of index: %s\n", rec.Parent)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tRESULT\tDETAIL")
	for _, s := range pipeline.Order {
		res, ok := rec.Stages[s]
		st, detail := string(res.Status), res.Detail
		if !ok {
			st, detail = "-", "not reached"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", s, st, detail)
	}
	tw.Flush()
}

func (r *runner) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status [DIGEST-REF|REPO]",
		Short: "Show queue counts, or the state of one image or of a repository's images",
		Example: `  attestd status
  attestd status 127.0.0.1:5000/demo/app
  attestd status 127.0.0.1:5000/demo/app@sha256:…`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			arg := ""
			if len(args) == 1 {
				arg = args[0]
			}
			return r.withStore(cmd.Context(), cfg, true, func(s source) error { return status(cmd.Context(), r.stdout, s, arg) })
		},
	}
}

func status(ctx context.Context, w io.Writer, s source, arg string) error {
	switch {
	case strings.Contains(arg, "@sha256:"):
		rec, err := s.Image(ctx, arg)
		if err != nil {
			return err
		}
		printRecord(w, rec)
		return nil
	case arg != "":
		recs, err := s.Images(ctx, strings.TrimSuffix(arg, "/")+"@")
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return fmt.Errorf("no images recorded for %s", arg)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "DIGEST\tSTATE\tUPDATED")
		for _, r := range recs {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Digest, r.State, r.UpdatedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	}
	st, err := s.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "jobs:")
	printCounts(w, st.Jobs)
	fmt.Fprintln(w, "images:")
	printCounts(w, st.Images)
	return nil
}

func printCounts[K ~string](w io.Writer, m map[K]int) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, k := range keys {
		fmt.Fprintf(w, "  %-10s %d\n", k, m[K(k)])
	}
}

func (r *runner) docCommand() *cobra.Command {
	var kind, platform string
	cmd := &cobra.Command{
		Use:   "doc DIGEST-REF",
		Short: "Print a document analysis made (SBOM, hardening report, vulnerabilities, provenance), or list them",
		Long: `Without --kind, lists the documents recorded for the image. With --kind, prints
one: spdx, cyclonedx, hardening, vulnerabilities or provenance. For an index, --platform picks
the platform (provenance without --platform is the index's own statement).`,
		Example: `  attestd doc 127.0.0.1:5000/demo/app@sha256:…
  attestd doc 127.0.0.1:5000/demo/app@sha256:… --kind spdx > app.spdx.json
  attestd doc 127.0.0.1:5000/demo/app@sha256:… --kind hardening --platform linux/arm64`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.withStore(cmd.Context(), cfg, true, func(s source) error {
				rec, err := s.Image(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if kind == "" {
					tw := tabwriter.NewWriter(r.stdout, 0, 0, 2, ' ', 0)
					fmt.Fprintln(tw, "KIND\tPLATFORM\tSUBJECT\tBYTES\tDIGEST")
					for _, a := range rec.Artifacts {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", a.Kind, a.Platform, a.Subject, a.Size, a.Digest)
					}
					return tw.Flush()
				}
				var match []store.Artifact
				for _, a := range rec.Artifacts {
					if a.Kind != kind || (platform != "" && a.Platform != platform) {
						continue
					}
					if platform == "" && len(rec.Children) > 0 && a.Subject != rec.Digest {
						continue // index: without --platform only the index's own documents
					}
					match = append(match, a)
				}
				switch len(match) {
				case 0:
					return usageError{fmt.Errorf("no %s document for %s%s (attestd doc %s lists what there is)", kind, args[0], platformSuffix(platform), args[0])}
				case 1:
				default:
					return usageError{fmt.Errorf("%d %s documents for %s: pick one with --platform", len(match), kind, args[0])}
				}
				b, err := s.Blob(cmd.Context(), match[0].Digest)
				if err != nil {
					return err
				}
				_, err = r.stdout.Write(b)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "spdx, cyclonedx, hardening, vulnerabilities or provenance")
	cmd.Flags().StringVar(&platform, "platform", "", "platform of an index, e.g. linux/arm64")
	return cmd
}

func platformSuffix(p string) string {
	if p == "" {
		return ""
	}
	return " (platform " + p + ")"
}

func (r *runner) requeueCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "requeue DIGEST-REF",
		Short:   "Re-drive an image: a failed one resumes from the state it failed in",
		Example: "  attestd requeue 127.0.0.1:5000/demo/app@sha256:…",
		Args:    exactArgs(1, "DIGEST-REF (host/repo@sha256:…)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, _, err := store.SplitRef(args[0]); err != nil {
				return usageError{err}
			}
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.withStore(cmd.Context(), cfg, false, func(s source) error {
				j, err := s.Requeue(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "requeued %s as job %d\n", args[0], j.ID)
				return nil
			})
		},
	}
}

func (r *runner) submitCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "submit IMAGE",
		Short: "Queue an image (tag or digest) for the daemon, like a registry webhook would",
		Long: `submit resolves IMAGE to its digest and queues it durably. With a daemon
running it goes through the daemon's API; otherwise it writes to the store
and the daemon picks the job up when it starts.`,
		Example: "  attestd submit 127.0.0.1:5000/demo/app:v1",
		Args:    exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.withStore(cmd.Context(), cfg, false, func(s source) error {
				sub, err := s.Submit(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if sub.Duplicate {
					fmt.Fprintf(r.stdout, "%s is already known (job %d); use attestd requeue to run it again\n", sub.Ref, sub.JobID)
					return nil
				}
				fmt.Fprintf(r.stdout, "queued %s as job %d\n", sub.Ref, sub.JobID)
				return nil
			})
		},
	}
}

func (r *runner) storeCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Maintain the state store"}
	cmd.AddCommand(&cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent snapshot of the store to FILE (works while the daemon runs)",
		Args:  exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.withStore(cmd.Context(), cfg, true, func(s source) error {
				n, err := s.Backup(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "wrote %s (%d bytes)\n", args[0], n)
				return nil
			})
		},
	})
	return cmd
}

func (r *runner) healthcheckCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 when the daemon answers /healthz, 1 otherwise (for HEALTHCHECK)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base := r.server
			if base == "" {
				cfg, err := r.loadConfig(cmd)
				if err != nil {
					return err
				}
				base = apiBase(cfg.Listen)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/healthz", nil)
			if err != nil {
				return usageError{err}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck: %s answered %s", req.URL, resp.Status)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&r.server, "server", "", "daemon base URL (default: from the config's listen address)")
	return cmd
}

// apiBase turns a listen address into a URL a local client can dial.
func apiBase(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// source is what status, requeue and backup need: the store itself, or the
// running daemon's API when the daemon holds the store's lock.
type source interface {
	Stats(ctx context.Context) (store.Stats, error)
	Image(ctx context.Context, ref string) (*store.Record, error)
	Images(ctx context.Context, prefix string) ([]store.Record, error)
	Requeue(ctx context.Context, ref string) (*store.Job, error)
	Backup(ctx context.Context, path string) (int64, error)
	Submit(ctx context.Context, image string) (submission, error)
	Blob(ctx context.Context, digest string) ([]byte, error)
}

type localSource struct {
	db *store.DB
	rc *registry.Client
}

func (l localSource) Submit(ctx context.Context, image string) (submission, error) {
	if l.rc == nil {
		return submission{}, errors.New("submit: no registry client")
	}
	return submit(ctx, l.rc, l.db, image, "cli")
}

func (l localSource) Stats(ctx context.Context) (store.Stats, error) { return l.db.Stats(ctx) }
func (l localSource) Image(ctx context.Context, ref string) (*store.Record, error) {
	return l.db.Image(ctx, ref)
}
func (l localSource) Images(ctx context.Context, p string) ([]store.Record, error) {
	return l.db.Images(ctx, p)
}
func (l localSource) Requeue(ctx context.Context, ref string) (*store.Job, error) {
	return l.db.Requeue(ctx, ref, "cli")
}
func (l localSource) Blob(ctx context.Context, digest string) ([]byte, error) {
	return l.db.Blob(ctx, digest)
}
func (l localSource) Backup(ctx context.Context, path string) (int64, error) {
	return l.db.BackupFile(ctx, path)
}

// withStore opens the store; when a daemon holds it, it talks to that
// daemon's API instead.
func (r *runner) withStore(ctx context.Context, cfg *configs.Config, readOnly bool, fn func(source) error) error {
	opts := []store.Option{store.WithLockTimeout(500 * time.Millisecond)}
	if readOnly {
		opts = append(opts, store.ReadOnly())
	}
	db, err := store.Open(dbPath(cfg), opts...)
	switch {
	case err == nil:
		defer db.Close()
		var rc *registry.Client
		if !readOnly {
			if rc, err = registryClient(cfg, r.logger(cfg, r.stderr)); err != nil {
				return err
			}
		}
		return fn(localSource{db: db, rc: rc})
	case errors.Is(err, store.ErrLocked):
		return fn(newRemoteSource(cfg, apiTimeout))
	default:
		return err
	}
}

// remoteSource is the running daemon's API, called with the token from the
// daemon's token file (api.token_file, or data_dir/api.token): the CLI on
// the daemon's host, as its user, reads the same file.
type remoteSource struct {
	base      string
	client    *http.Client
	tokenFile string
}

func newRemoteSource(cfg *configs.Config, timeout time.Duration) *remoteSource {
	return &remoteSource{base: apiBase(cfg.Listen), client: &http.Client{Timeout: timeout}, tokenFile: cfg.APITokenFile()}
}

func (s *remoteSource) do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := s.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	// Without a readable token the request still goes out: the open
	// endpoints answer, and the daemon's 401 says what is missing.
	tok, terr := apiToken(s.tokenFile)
	if terr == nil {
		req.Header.Set("Authorization", "Bearer "+tok.Reveal())
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("the store is locked by a running daemon, and its API at %s did not answer: %w", s.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
		switch {
		case resp.StatusCode == http.StatusUnauthorized && terr != nil:
			return fmt.Errorf("daemon API %s: %s: %s (%w: run this as the daemon's user, or point api.token_file at a copy you may read)", path, resp.Status, e.Error, terr)
		case resp.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("daemon API %s: %s: %s (sent the first token of %s)", path, resp.Status, e.Error, s.tokenFile)
		}
		return fmt.Errorf("daemon API %s: %s: %s", path, resp.Status, e.Error)
	}
	if w, ok := out.(io.Writer); ok {
		_, err = io.Copy(w, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (s *remoteSource) Stats(ctx context.Context) (store.Stats, error) {
	var st store.Stats
	return st, s.do(ctx, http.MethodGet, "/api/v1/stats", nil, &st)
}
func (s *remoteSource) Image(ctx context.Context, ref string) (*store.Record, error) {
	var rec store.Record
	return &rec, s.do(ctx, http.MethodGet, "/api/v1/image", url.Values{"ref": {ref}}, &rec)
}
func (s *remoteSource) Blob(ctx context.Context, digest string) ([]byte, error) {
	var buf bytes.Buffer
	if err := s.do(ctx, http.MethodGet, "/api/v1/blob", url.Values{"digest": {digest}}, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
func (s *remoteSource) Images(ctx context.Context, p string) ([]store.Record, error) {
	var recs []store.Record
	return recs, s.do(ctx, http.MethodGet, "/api/v1/images", url.Values{"prefix": {p}}, &recs)
}
func (s *remoteSource) Submit(ctx context.Context, image string) (submission, error) {
	var sub submission
	return sub, s.do(ctx, http.MethodPost, "/api/v1/submit", url.Values{"image": {image}}, &sub)
}
func (s *remoteSource) Requeue(ctx context.Context, ref string) (*store.Job, error) {
	var j store.Job
	return &j, s.do(ctx, http.MethodPost, "/api/v1/requeue", url.Values{"ref": {ref}}, &j)
}

// Backup streams the daemon's snapshot into a temp file and renames it into
// place only when the whole stream arrived and reopens as a valid store;
// the file is fsynced before the rename, the directory after it.
func (s *remoteSource) Backup(ctx context.Context, path string) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".attestd-backup-*")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	cw := &countWriter{w: f}
	err = s.do(ctx, http.MethodGet, "/api/v1/backup", nil, cw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	check, err := store.Open(tmp, store.ReadOnly())
	if err != nil {
		return 0, fmt.Errorf("backup: the snapshot received is not a valid store: %w", err)
	}
	check.Close()
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	if err := store.SyncDir(filepath.Dir(path)); err != nil {
		return 0, fmt.Errorf("backup %s: written, but not durable yet: %w", path, err)
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
