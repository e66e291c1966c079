package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/attestd/attestd/attest"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/audit"
)

func (r *runner) auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Verify and export the hash-chained audit log"}
	var file string
	cmd.PersistentFlags().StringVar(&file, "file", "", "a database file to read (e.g. a backup) instead of data_dir's")
	cmd.AddCommand(&cobra.Command{
		Use:   "verify",
		Short: "Check every entry's hash and the chain; name the first bad entry",
		Long: `Re-hashes every audit entry and follows the chain. Exit 0 and the head (sequence and
hash; keep it somewhere the database's owner cannot write, to detect truncation
later) when the log is intact; exit 1 naming the first bad entry otherwise.
Works while the daemon runs (it reads a consistent snapshot through the API).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			return r.withAuditDB(cmd.Context(), cfg, file, func(db *store.DB) error {
				rep, err := audit.Verify(cmd.Context(), db)
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stdout, "audit log intact: %d entries, head %d %s\n", rep.Entries, rep.HeadSeq, rep.HeadHash)
				return nil
			})
		},
	})
	var since, until, repo, digest, actions, format, out string
	var signExport bool
	export := &cobra.Command{
		Use:   "export",
		Short: "Stream audit entries as JSON lines or CSV",
		Example: `  attestd audit export --format csv --since 2026-11-01T00:00:00Z -o november.csv
  attestd audit export --repo registry.example.com/team/app --action decision,state`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := r.loadConfig(cmd)
			if err != nil {
				return err
			}
			f := audit.Filter{Repo: repo, Digest: digest}
			for name, v := range map[string]struct {
				s string
				t *time.Time
			}{"--since": {since, &f.Since}, "--until": {until, &f.Until}} {
				if v.s == "" {
					continue
				}
				if *v.t, err = time.Parse(time.RFC3339, v.s); err != nil {
					return usageError{fmt.Errorf("%s %q: want RFC 3339, e.g. 2026-11-01T00:00:00Z", name, v.s)}
				}
			}
			if actions != "" {
				f.Actions = strings.Split(actions, ",")
			}
			if format != audit.FormatJSONL && format != audit.FormatCSV && format != audit.FormatHTML {
				return usageError{fmt.Errorf("--format %q: use jsonl, csv or html", format)}
			}
			if signExport && (out == "" || out == "-") {
				return usageError{errors.New("--sign needs -o FILE: the signature is over the file, written to FILE.sigstore.json")}
			}
			if signExport && !cfg.Signing.Enabled() {
				return usageError{errors.New("--sign needs signing.* configured (attestd signs with its own identity)")}
			}
			return r.withAuditDB(cmd.Context(), cfg, file, func(db *store.DB) error {
				w := r.stdout
				if out != "" && out != "-" {
					fh, err := os.Create(out)
					if err != nil {
						return err
					}
					defer fh.Close()
					w = fh
				}
				var n int
				var err error
				if format == audit.FormatHTML {
					n, err = audit.HTML(cmd.Context(), db, w, f, time.Now())
				} else {
					n, err = audit.Export(cmd.Context(), db, w, f, format)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stderr, "exported %d entries\n", n)
				if !signExport {
					return nil
				}
				if fh, ok := w.(*os.File); ok {
					if err := fh.Sync(); err != nil {
						return err
					}
				}
				b, err := r.signExport(cmd.Context(), cfg, db, out, format, f, n)
				if err != nil {
					return err
				}
				fmt.Fprintf(r.stderr, "signed: %s\nverify: cosign verify-blob-attestation --new-bundle-format --bundle %s --type %s --certificate-identity … --certificate-oidc-issuer … %s\n",
					b, b, auditExportType, out)
				return nil
			})
		},
	}
	export.Flags().BoolVar(&signExport, "sign", false, "sign the export (a DSSE in-toto statement over its digest) into FILE.sigstore.json with attestd's signer")
	export.Flags().StringVar(&format, "format", audit.FormatJSONL, "jsonl, csv, or html (a self-contained report: images, decisions, promotions, chart)")
	export.Flags().StringVar(&since, "since", "", "entries at or after this time (RFC 3339)")
	export.Flags().StringVar(&until, "until", "", "entries before this time (RFC 3339)")
	export.Flags().StringVar(&repo, "repo", "", "only this repository (host/repo)")
	export.Flags().StringVar(&digest, "digest", "", "only this digest (sha256:…)")
	export.Flags().StringVar(&actions, "action", "", "only these actions, comma-separated; a trailing dot matches a prefix (event.)")
	export.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	cmd.AddCommand(export)
	return cmd
}

// withAuditDB opens the store read-only: file, or data_dir's; when the
// daemon holds data_dir's, a consistent snapshot fetched through its API.
func (r *runner) withAuditDB(ctx context.Context, cfg *configs.Config, file string, fn func(*store.DB) error) error {
	path := file
	if path == "" {
		path = dbPath(cfg)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	db, err := store.Open(path, store.ReadOnly(), store.WithLockTimeout(500*time.Millisecond))
	if errors.Is(err, store.ErrLocked) && file == "" {
		tmp, terr := os.MkdirTemp("", "attestd-audit-")
		if terr != nil {
			return terr
		}
		defer os.RemoveAll(tmp)
		snap := filepath.Join(tmp, "snapshot.db")
		src := newRemoteSource(cfg, 10*time.Minute)
		if _, err := src.Backup(ctx, snap); err != nil {
			return fmt.Errorf("audit: the daemon holds the store and its snapshot failed: %w", err)
		}
		db, err = store.Open(snap, store.ReadOnly())
	}
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(db)
}

// auditExportType is the predicate type of a signed audit export.
const auditExportType = "https://attestd.dev/audit-export/v1"

// signExport signs an export file: an in-toto statement whose subject is
// the file's sha256 and whose predicate says what was exported (format,
// filter, entry count, the log's head), as a DSSE envelope in a Sigstore
// bundle written beside it.
func (r *runner) signExport(ctx context.Context, cfg *configs.Config, db *store.DB, path, format string, f audit.Filter, n int) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(h, fh)
	fh.Close()
	if err != nil {
		return "", err
	}
	seq, head, err := db.AuditHead(ctx)
	if err != nil {
		return "", err
	}
	pred, _ := json.Marshal(map[string]any{
		"format": format, "filter": f, "entries": n, "exportedAt": time.Now().UTC(),
		"auditHead": map[string]any{"seq": seq, "hash": head}, "exporter": "attestd " + version,
	})
	st, err := attest.Statement(filepath.Base(path), "sha256:"+hex.EncodeToString(h.Sum(nil)), auditExportType, pred)
	if err != nil {
		return "", err
	}
	log := r.logger(cfg, r.stderr)
	rc, err := registryClient(cfg, log)
	if err != nil {
		return "", err
	}
	k, err := newSigner(cfg, rc, log)
	if err != nil {
		return "", err
	}
	sess, err := k.Session()
	if err != nil {
		return "", err
	}
	b, err := sess.SignStatement(ctx, st)
	if err != nil {
		return "", err
	}
	bpath := path + ".sigstore.json"
	return bpath, os.WriteFile(bpath, b, 0o644)
}
