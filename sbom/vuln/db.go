package vuln

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/OneOfOne/xxhash"
	"github.com/anchore/clio"
	grypedb "github.com/anchore/grype/grype/db"
	"github.com/anchore/grype/grype/db/provider"
	v6 "github.com/anchore/grype/grype/db/v6"
	"github.com/anchore/grype/grype/db/v6/distribution"
	"github.com/anchore/grype/grype/db/v6/installation"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/afero"
)

// SchemaVersion is the grype DB model this build reads and writes.
const SchemaVersion = v6.ModelVersion

// DefaultLatestURL is Anchore's public listing of grype v6 databases.
const DefaultLatestURL = "https://grype.anchore.io/databases"

// osvSchema is the vunnel envelope schema of an OSV record.
const osvSchema = "https://raw.githubusercontent.com/anchore/vunnel/main/schema/vulnerability/osv/schema-1.6.1.json"

// BuildOptions say what goes into a database.
type BuildOptions struct {
	// OSV are directories or zip files of OSV records (*.json), such as the
	// Go vulnerability database (GO-* records).
	OSV []string
	// Vunnel are provider workspaces in vunnel's layout (a directory
	// holding results/…/*.json envelopes and, optionally, vunnel's
	// metadata.json), e.g. the Debian and Alpine inputs grype's own tests
	// use. The provider is named after the directory.
	Vunnel []string
	// SeverityOverlay is an optional JSON file {"GO-…": {"cvss_v3": "CVSS:3.1/…"}}
	// adding CVSS vectors to records that carry none.
	SeverityOverlay string
	// Out receives the archive and latest.json.
	Out string
	// Now stamps provider capture times; default time.Now.
	Now func() time.Time
}

// Built describes a database archive Build wrote.
type Built struct {
	Archive string    // the .tar.zst
	Latest  string    // latest.json listing it, for a mirror
	Records int       // input records
	Built   time.Time // the database's build timestamp
	Schema  string
}

// Build builds a grype v6 database offline from OSV records and vunnel
// provider workspaces with grype's own build code, and packages it as a
// .tar.zst archive with the latest.json a mirror serves. Any malformed
// input fails the build, naming the file; nothing is left in Out then.
func Build(ctx context.Context, o BuildOptions) (*Built, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if len(o.OSV)+len(o.Vunnel) == 0 {
		return nil, errors.New("vulndb build: no input: give --osv DIR|ZIP or --vunnel DIR")
	}
	if o.Out == "" {
		return nil, errors.New("vulndb build: no output directory")
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	work, err := os.MkdirTemp(o.Out, ".build-")
	if err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	defer os.RemoveAll(work)

	overlay, err := readOverlay(o.SeverityOverlay)
	if err != nil {
		return nil, err
	}
	now := o.Now().UTC().Truncate(time.Second)
	var states provider.States
	records := 0
	if len(o.OSV) > 0 {
		ws := newWorkspace(filepath.Join(work, "in", "govulndb"))
		for _, src := range o.OSV {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n, err := addOSV(ws, src, overlay)
			if err != nil {
				return nil, err
			}
			records += n
		}
		st, err := ws.finish("govulndb", now)
		if err != nil {
			return nil, err
		}
		states = append(states, *st)
	}
	for _, dir := range o.Vunnel {
		st, n, err := vunnelState(dir, filepath.Join(work, "in", filepath.Base(filepath.Clean(dir))), now)
		if err != nil {
			return nil, err
		}
		records += n
		states = append(states, *st)
	}

	dbDir := filepath.Join(work, "db")
	if err := grypedb.Build(grypedb.BuildConfig{
		SchemaVersion:       v6.ModelVersion,
		Directory:           dbDir,
		States:              states,
		Timestamp:           now,
		IncludeCPEParts:     []string{"a", "h", "o"},
		InferNVDFixVersions: true,
		Hydrate:             true,
	}); err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	r, err := v6.NewReader(v6.Config{DBDirPath: dbDir})
	if err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	md, err := r.GetDBMetadata()
	_ = r.Close()
	if err != nil || md == nil || md.BuildTimestamp == nil {
		return nil, fmt.Errorf("vulndb build: reading the new database's metadata: %v", err)
	}
	name := fmt.Sprintf("vulnerability-db_v%d.%d.%d_%s_%d.tar.zst", md.Model, md.Revision, md.Addition,
		now.Format(time.RFC3339), md.BuildTimestamp.Unix())
	archive := filepath.Join(o.Out, name)
	if err := writeArchive(archive, dbDir, v6.VulnerabilityDBFileName, v6.ImportMetadataFileName); err != nil {
		return nil, err
	}
	a, err := distribution.NewArchive(archive, *md.BuildTimestamp, md.Model, md.Revision, md.Addition)
	if err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	var latest bytes.Buffer
	if err := distribution.NewLatestDocument(*a).Write(&latest); err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	latestPath := filepath.Join(o.Out, distribution.LatestFileName)
	if err := writeFileAtomic(latestPath, latest.Bytes()); err != nil {
		return nil, err
	}
	return &Built{Archive: archive, Latest: latestPath, Records: records, Built: *md.BuildTimestamp,
		Schema: fmt.Sprintf("v%d.%d.%d", md.Model, md.Revision, md.Addition)}, nil
}

// workspace is one vunnel-style provider directory being written.
type workspace struct {
	root    string
	listing bytes.Buffer
	seen    map[string]string // result file → source, to refuse duplicates
}

func newWorkspace(root string) *workspace { return &workspace{root: root, seen: map[string]string{}} }

var unsafeSegment = regexp.MustCompile(`[^-._a-zA-Z0-9+]`)

func (w *workspace) add(source, id string, envelope []byte) error {
	rel := filepath.Join("results", unsafeSegment.ReplaceAllString(id, "-")+".json")
	if prev, ok := w.seen[rel]; ok {
		return fmt.Errorf("vulndb build: record %s appears twice (%s and %s)", id, prev, source)
	}
	w.seen[rel] = source
	p := filepath.Join(w.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("vulndb build: %w", err)
	}
	if err := os.WriteFile(p, envelope, 0o644); err != nil {
		return fmt.Errorf("vulndb build: %w", err)
	}
	fmt.Fprintf(&w.listing, "%016x  %s\n", xxhash.Checksum64(envelope), filepath.ToSlash(rel))
	return nil
}

// finish writes the listing and vunnel's metadata.json, and reads it back
// the way grype-db does (the only way to fill a provider.State).
func (w *workspace) finish(name string, now time.Time) (*provider.State, error) {
	if len(w.seen) == 0 {
		return nil, fmt.Errorf("vulndb build: provider %s has no records", name)
	}
	if err := os.WriteFile(filepath.Join(w.root, "checksums"), w.listing.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	meta := map[string]any{
		"provider": name, "urls": []string{"attestd://" + name}, "store": "flat-file",
		"timestamp": now.Format(time.RFC3339), "version": 1, "distribution_version": 1,
		"processor": "attestd",
		"listing":   map[string]string{"digest": fmt.Sprintf("%016x", xxhash.Checksum64(w.listing.Bytes())), "path": "checksums", "algorithm": "xxh64"},
		"schema":    map[string]string{"version": "1.0.3", "url": "https://raw.githubusercontent.com/anchore/vunnel/main/schema/provider-workspace-state/schema-1.0.3.json"},
		"stale":     false,
	}
	b, _ := json.Marshal(meta)
	p := filepath.Join(w.root, "metadata.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	st, err := provider.ReadState(p)
	if err != nil {
		return nil, fmt.Errorf("vulndb build: %w", err)
	}
	return st, nil
}

// osvRecord is the part of an OSV record Build checks and amends.
type osvRecord struct {
	ID       string `json:"id"`
	Severity []struct {
		Type  string `json:"type"`
		Score string `json:"score"`
	} `json:"severity"`
}

// overlayEntry adds a CVSS v3 vector to an OSV record without one.
type overlayEntry struct {
	CVSSv3 string `json:"cvss_v3"`
	Source string `json:"source,omitempty"`
}

func readOverlay(path string) (map[string]overlayEntry, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vulndb build: severity overlay: %w", err)
	}
	var m map[string]overlayEntry
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("vulndb build: severity overlay %s: %w (want {\"GO-…\": {\"cvss_v3\": \"CVSS:3.1/…\"}})", path, err)
	}
	for id, e := range m {
		if !strings.HasPrefix(e.CVSSv3, "CVSS:3.") {
			return nil, fmt.Errorf("vulndb build: severity overlay %s: %s: cvss_v3 %q is not a CVSS v3 vector", path, id, e.CVSSv3)
		}
	}
	return m, nil
}

// addOSV adds every *.json record of a directory or zip file.
func addOSV(ws *workspace, src string, overlay map[string]overlayEntry) (int, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return 0, fmt.Errorf("vulndb build: --osv: %w", err)
	}
	n := 0
	add := func(name string, b []byte) error {
		env, id, err := osvEnvelope(b, overlay)
		if err != nil {
			return fmt.Errorf("vulndb build: %s: %s: %w", src, name, err)
		}
		n++
		return ws.add(src+":"+name, id, env)
	}
	if fi.IsDir() {
		err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return add(strings.TrimPrefix(p, src), b)
		})
		if err == nil && n == 0 {
			err = fmt.Errorf("vulndb build: %s holds no *.json OSV records", src)
		}
		return n, err
	}
	zr, err := zip.OpenReader(src)
	if err != nil {
		return 0, fmt.Errorf("vulndb build: --osv %s: not a directory or zip file: %w", src, err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.FileInfo().IsDir() || !strings.HasSuffix(f.Name, ".json") {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return n, fmt.Errorf("vulndb build: %s: %s: %w", src, f.Name, err)
		}
		b, err := io.ReadAll(io.LimitReader(rc, 64<<20))
		rc.Close()
		if err != nil {
			return n, fmt.Errorf("vulndb build: %s: %s: %w", src, f.Name, err)
		}
		if err := add(f.Name, b); err != nil {
			return n, err
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("vulndb build: %s holds no *.json OSV records", src)
	}
	return n, nil
}

// osvEnvelope wraps one OSV record the way vunnel does, adding the
// overlay's CVSS vector when the record has no severity of its own.
func osvEnvelope(b []byte, overlay map[string]overlayEntry) ([]byte, string, error) {
	var rec osvRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, "", fmt.Errorf("not an OSV record: %w", err)
	}
	if rec.ID == "" {
		return nil, "", errors.New("not an OSV record: no \"id\"")
	}
	if e, ok := overlay[rec.ID]; ok && len(rec.Severity) == 0 {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, "", err
		}
		sev, _ := json.Marshal([]map[string]string{{"type": "CVSS_V3", "score": e.CVSSv3}})
		m["severity"] = sev
		b, _ = json.Marshal(m)
	}
	env, err := json.Marshal(struct {
		Schema     string          `json:"schema"`
		Identifier string          `json:"identifier"`
		Item       json.RawMessage `json:"item"`
	}{osvSchema, "govulndb/" + strings.ToLower(rec.ID), b})
	return env, rec.ID, err
}

// vunnelState reads a vunnel provider workspace. With vunnel's own
// metadata.json it is used as is; a bare results/ tree (grype's test
// inputs) gets a listing and metadata written into a copy under dst.
func vunnelState(dir, dst string, now time.Time) (*provider.State, int, error) {
	if _, err := os.Stat(filepath.Join(dir, "metadata.json")); err == nil {
		st, err := provider.ReadState(filepath.Join(dir, "metadata.json"))
		if err != nil {
			return nil, 0, fmt.Errorf("vulndb build: --vunnel %s: %w", dir, err)
		}
		if err := st.Verify(); err != nil {
			return nil, 0, fmt.Errorf("vulndb build: --vunnel %s: %w", dir, err)
		}
		return st, len(st.ResultPaths()), nil
	}
	results := filepath.Join(dir, "results")
	if fi, err := os.Stat(results); err != nil || !fi.IsDir() {
		return nil, 0, fmt.Errorf("vulndb build: --vunnel %s: want a vunnel provider workspace (metadata.json, or a results/ directory)", dir)
	}
	ws := newWorkspace(dst)
	var files []string
	err := filepath.WalkDir(results, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("vulndb build: --vunnel %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, 0, fmt.Errorf("vulndb build: %w", err)
		}
		var env struct {
			Schema string          `json:"schema"`
			Item   json.RawMessage `json:"item"`
		}
		if err := json.Unmarshal(b, &env); err != nil || env.Schema == "" || len(env.Item) == 0 {
			return nil, 0, fmt.Errorf("vulndb build: %s: not a vunnel result envelope {schema, identifier, item}: %v", p, err)
		}
		rel, _ := filepath.Rel(results, p)
		if err := ws.add(p, strings.TrimSuffix(rel, ".json"), b); err != nil {
			return nil, 0, err
		}
	}
	st, err := ws.finish(filepath.Base(filepath.Clean(dir)), now)
	return st, len(files), err
}

// writeArchive writes names from dir into a zstd-compressed tar at path,
// atomically.
func writeArchive(path, dir string, names ...string) error {
	return writeAtomic(path, func(w io.Writer) error {
		zw, err := zstd.NewWriter(w)
		if err != nil {
			return err
		}
		tw := tar.NewWriter(zw)
		for _, n := range names {
			if err := addToTar(tw, dir, n); err != nil {
				return fmt.Errorf("vulndb build: archiving %s: %w", n, err)
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return zw.Close()
	})
}

func addToTar(tw *tar.Writer, dir, name string) error {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: fi.Size(), ModTime: fi.ModTime(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

func writeFileAtomic(path string, b []byte) error {
	return writeAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// writeAtomic fills a temp file beside path, fsyncs it, renames it into
// place and fsyncs the directory; on any error before the rename the temp
// file is removed and path is untouched.
func writeAtomic(path string, fill func(io.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return fmt.Errorf("vulndb: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename is durable once the directory is: latest.json must never
	// survive a crash that lost the archive it names.
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory (store.SyncDir, which sbom/vuln may not
// import).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("vulndb: sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vulndb: sync directory %s: %w", dir, err)
	}
	return nil
}

// Status describes the installed database.
type Status struct {
	Path   string        `json:"path"`
	Schema string        `json:"schema"`
	Built  time.Time     `json:"built"`
	Age    time.Duration `json:"age"`
	From   string        `json:"from,omitempty"` // where it was imported from
	Digest string        `json:"digest"`         // of vulnerability.db, as recorded at import
}

// Installation is a grype DB directory (Root/6/vulnerability.db).
type Installation struct {
	Root string
	// LatestURL is the listing Update reads (DefaultLatestURL when empty):
	// Anchore's, or a mirror's URL of a latest.json.
	LatestURL string
	// CACert is a PEM file trusted for LatestURL (a private mirror).
	CACert string
	// Timeout bounds Update's downloads; default 5 minutes.
	Timeout time.Duration
}

func (in Installation) curator(latestURL string) (v6.Curator, error) {
	if in.Root == "" {
		return nil, errors.New("vulndb: no database directory configured")
	}
	t := in.Timeout
	if t <= 0 {
		t = 5 * time.Minute
	}
	client, err := distribution.NewClient(distribution.Config{
		ID: clio.Identification{Name: "attestd"}, LatestURL: latestURL, CACert: in.CACert,
		RequireUpdateCheck: true, CheckTimeout: t, UpdateTimeout: t,
	})
	if err != nil {
		return nil, fmt.Errorf("vulndb: %w", err)
	}
	// Age is checked by attestd (Scanner, Status) against its own clock;
	// integrity always.
	return installation.NewCurator(installation.Config{DBRootDir: in.Root, ValidateChecksum: true}, client)
}

// Import installs a database archive (or a bare vulnerability.db) from a
// local file: verified, hydrated and swapped in atomically.
func (in Installation) Import(path string) (*Status, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("vulndb import: %w", err)
	}
	c, err := in.curator("")
	if err != nil {
		return nil, err
	}
	if err := c.Import(path); err != nil {
		return nil, fmt.Errorf("vulndb import %s: %w", path, err)
	}
	return in.Status(time.Now())
}

// Update installs the newest database the listing offers when it is newer
// than the installed one. It reports whether anything changed.
func (in Installation) Update() (bool, error) {
	u := in.LatestURL
	if u == "" {
		u = DefaultLatestURL
	}
	c, err := in.curator(u)
	if err != nil {
		return false, err
	}
	updated, err := c.Update()
	if err != nil {
		return false, fmt.Errorf("vulndb update from %s: %w", u, err)
	}
	return updated, nil
}

// ErrNoDatabase says no database is installed.
var ErrNoDatabase = errors.New("no vulnerability database installed")

// Digest is the installed database's digest as recorded at import — a
// read of a small file, cheap enough for every scan (Status hashes the
// whole database).
func (in Installation) Digest() (string, error) {
	dir := filepath.Join(in.Root, fmt.Sprint(v6.ModelVersion))
	path := filepath.Join(dir, v6.VulnerabilityDBFileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w at %s: install one with `attestd vulndb import ARCHIVE` or `attestd vulndb update`", ErrNoDatabase, path)
	}
	im, err := v6.ReadImportMetadata(afero.NewOsFs(), dir)
	if err != nil {
		return "", fmt.Errorf("vulnerability database %s: %w", path, err)
	}
	if im == nil || im.Digest == "" {
		return "", fmt.Errorf("vulnerability database %s: no import metadata: import it again", path)
	}
	return im.Digest, nil
}

// Status reads the installed database's description and verifies its
// checksum; age is computed against now.
func (in Installation) Status(now time.Time) (*Status, error) {
	c, err := in.curator("")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(in.Root, fmt.Sprint(v6.ModelVersion), v6.VulnerabilityDBFileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: install one with `attestd vulndb import ARCHIVE` or `attestd vulndb update`", ErrNoDatabase, path)
	}
	s := c.Status()
	if s.Error != nil {
		return nil, fmt.Errorf("vulnerability database %s: %w", path, s.Error)
	}
	st := &Status{Path: path, Schema: s.SchemaVersion, Built: s.Built.UTC(), Age: now.Sub(s.Built), From: s.From}
	if im, err := v6.ReadImportMetadata(afero.NewOsFs(), filepath.Dir(path)); err == nil && im != nil {
		st.Digest = im.Digest
	}
	return st, nil
}
