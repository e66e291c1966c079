package sbom

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	stereofile "github.com/anchore/stereoscope/pkg/file"
	"github.com/anchore/stereoscope/pkg/image"
	"github.com/anchore/syft/syft"
	"github.com/anchore/syft/syft/format/cyclonedxjson"
	"github.com/anchore/syft/syft/format/spdxjson"
	"github.com/anchore/syft/syft/pkg"
	syftsbom "github.com/anchore/syft/syft/sbom"
	"github.com/anchore/syft/syft/source"
	"github.com/anchore/syft/syft/source/stereoscopesource"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	// The RPM and Nix catalogers read SQLite databases through
	// database/sql's "sqlite" driver. syft's CLI links modernc.org/sqlite;
	// grype's database layer (linked too, sbom/vuln) registers the same
	// name through glebarez/go-sqlite, a wrapper over that same pure-Go
	// SQLite, so exactly one may be linked: this one, as the grype CLI does.
	_ "github.com/glebarez/go-sqlite"
)

// Media types of the documents this package writes.
const (
	MediaTypeSPDX      = "application/spdx+json"
	MediaTypeCycloneDX = "application/vnd.cyclonedx+json"
)

// Default document versions (configurable, see Options).
const (
	DefaultSPDXVersion      = "2.3"
	DefaultCycloneDXVersion = "1.6"
)

// Image is one platform image as attestd fetched it: its manifest and config
// bytes, and its layers already on local disk (uncompressed tars, in manifest
// order).
type Image struct {
	Name        string // host/repo@sha256:… of this platform manifest
	Tag         string // the tag it was pushed under, if known (informational)
	RawManifest []byte
	RawConfig   []byte
	Layers      []LayerFile
}

// LayerFile is one layer of Image on local disk.
type LayerFile struct {
	Digest    string // compressed digest, from the manifest
	DiffID    string // uncompressed digest, from the config
	MediaType string
	Size      int64  // compressed size
	Path      string // uncompressed tar
}

// Options tune a scan. Zero values take the defaults.
type Options struct {
	SPDXVersion      string // "2.3" (also 2.2, 2.1)
	CycloneDXVersion string // "1.6" (also 1.5 … 1.2)
	// Parallelism bounds syft's cataloguing goroutines (0: syft's default).
	Parallelism int
	// WorkDir holds the scan's temporary files; it must exist. Everything
	// the scan writes there is removed by Close, also after a failure.
	WorkDir string
	// ToolName and ToolVersion describe attestd in the documents' creator
	// fields, next to syft itself.
	ToolName, ToolVersion string
	// Licenses is the license scanner shared by scans (nil: syft builds one
	// for each scan).
	Licenses *LicenseScanner
}

// Scan is one image read into syft's file index. The SBOM and the hardening
// checks both read this one copy. Close it.
type Scan struct {
	img   *image.Image
	src   source.Source
	tmp   *stereofile.TempDirGenerator
	work  string
	name  string
	o     Options
	sbom  *syftsbom.SBOM
	files []File
}

// File is one entry of the image's squashed filesystem.
type File struct {
	Path string
	Mode fs.FileMode
	Size int64
	UID  int
	GID  int
	Link string // symlink or hardlink target
}

// Open reads img (its layers are local files, so this is disk I/O only) and
// indexes the squashed filesystem.
func Open(ctx context.Context, img Image, o Options) (_ *Scan, err error) {
	if o.SPDXVersion == "" {
		o.SPDXVersion = DefaultSPDXVersion
	}
	if o.CycloneDXVersion == "" {
		o.CycloneDXVersion = DefaultCycloneDXVersion
	}
	if !slices.Contains(spdxjson.SupportedVersions(), o.SPDXVersion) {
		return nil, fmt.Errorf("sbom: SPDX version %q not supported (supported: %s)", o.SPDXVersion, strings.Join(spdxjson.SupportedVersions(), ", "))
	}
	if !slices.Contains(cyclonedxjson.SupportedVersions(), o.CycloneDXVersion) {
		return nil, fmt.Errorf("sbom: CycloneDX version %q not supported (supported: %s)", o.CycloneDXVersion, strings.Join(cyclonedxjson.SupportedVersions(), ", "))
	}
	if o.WorkDir == "" {
		return nil, errors.New("sbom: Options.WorkDir is required")
	}
	v1img, err := newLocalImage(img)
	if err != nil {
		return nil, fmt.Errorf("sbom: %s: %w", img.Name, err)
	}
	work, err := os.MkdirTemp(o.WorkDir, "scan-")
	if err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	// stereoscope makes its temp dirs under os.TempDir with this prefix;
	// Close (and the failure path below) removes them.
	tmp := stereofile.NewTempDirGenerator("attestd-sbom")
	s := &Scan{tmp: tmp, work: work, name: img.Name, o: o}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	meta := []image.AdditionalMetadata{image.WithManifest(img.RawManifest), image.WithManifestDigest(digestOf(img.Name))}
	if img.Tag != "" {
		meta = append(meta, image.WithTags(repoOf(img.Name)+":"+img.Tag))
	}
	s.img = image.New(v1img, tmp, filepath.Join(work, "layers"), meta...)
	if err := os.MkdirAll(filepath.Join(work, "layers"), 0o700); err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	// stereoscope reads each layer from "<index>-<diff ID>" in its content
	// dir when that file exists: hard-link the cached tars there instead of
	// letting it copy them. If the name or the link does not work out, it
	// copies, which is only slower.
	for i, l := range img.Layers {
		if l.DiffID != "" {
			_ = os.Link(l.Path, filepath.Join(work, "layers", fmt.Sprintf("%d-%s", i, strings.ReplaceAll(l.DiffID, ":", "-"))))
		}
	}
	if err := s.img.Read(ctx); err != nil {
		return nil, fmt.Errorf("sbom: read %s: %w", img.Name, err)
	}
	s.src = stereoscopesource.New(s.img, stereoscopesource.ImageConfig{Reference: img.Name})
	return s, nil
}

// Close removes every temporary file of the scan. It is safe to call twice.
func (s *Scan) Close() error {
	var errs []error
	if s.img != nil {
		errs = append(errs, s.img.Cleanup()) // also the generator's dirs and the layer copies
		s.img = nil
	}
	if s.tmp != nil {
		errs = append(errs, s.tmp.Cleanup())
	}
	if s.work != "" {
		errs = append(errs, os.RemoveAll(s.work))
		s.work = ""
	}
	return errors.Join(errs...)
}

// Files lists the squashed filesystem (what a container of the image sees),
// sorted by path.
func (s *Scan) Files() ([]File, error) {
	if s.files != nil {
		return s.files, nil
	}
	refs := s.img.SquashedTree().AllFiles(stereofile.AllTypes()...)
	out := make([]File, 0, len(refs))
	for _, ref := range refs {
		e, err := s.img.FileCatalog.Get(ref)
		if err != nil {
			return nil, fmt.Errorf("sbom: file index of %s: %w", ref.RealPath, err)
		}
		m := e.Metadata
		f := File{Path: string(ref.RealPath), UID: m.UserID, GID: m.GroupID, Link: m.LinkDestination}
		if m.FileInfo != nil {
			f.Mode, f.Size = m.Mode(), m.Size()
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	s.files = out
	return out, nil
}

// OpenFile opens a regular file of the squashed filesystem. The reader also
// implements io.ReaderAt (it is a section of the local layer tar).
func (s *Scan) OpenFile(path string) (io.ReadCloser, error) {
	return s.img.OpenPathFromSquash(stereofile.Path(path))
}

// SBOM runs syft's catalogers once and keeps the result for Documents.
func (s *Scan) SBOM(ctx context.Context) (*syftsbom.SBOM, error) {
	if s.sbom != nil {
		return s.sbom, nil
	}
	cfg := syft.DefaultCreateSBOMConfig().WithParallelism(s.o.Parallelism)
	if s.o.ToolName != "" {
		cfg = cfg.WithTool(s.o.ToolName, s.o.ToolVersion)
	}
	if s.o.Licenses != nil {
		var err error
		if ctx, err = s.o.Licenses.with(ctx); err != nil {
			return nil, fmt.Errorf("sbom: %w", err)
		}
	}
	out, err := syft.CreateSBOM(ctx, s.src, cfg)
	if err != nil {
		return nil, fmt.Errorf("sbom: catalog %s: %w", s.name, err)
	}
	s.sbom = out
	return out, nil
}

// Documents are the encoded SBOMs of one image.
type Documents struct {
	SPDX      []byte
	CycloneDX []byte
	Packages  int
	// OSPackages counts packages of OS package managers (dpkg, apk, rpm…).
	OSPackages int
}

// Documents encodes the SBOM as SPDX and CycloneDX JSON.
func (s *Scan) Documents(ctx context.Context) (*Documents, error) {
	sb, err := s.SBOM(ctx)
	if err != nil {
		return nil, err
	}
	spdxEnc, err := spdxjson.NewFormatEncoderWithConfig(spdxjson.EncoderConfig{Version: s.o.SPDXVersion, DefaultVersion: DefaultSPDXVersion})
	if err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	cdxEnc, err := cyclonedxjson.NewFormatEncoderWithConfig(cyclonedxjson.EncoderConfig{Version: s.o.CycloneDXVersion})
	if err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	d := &Documents{Packages: sb.Artifacts.Packages.PackageCount()}
	var buf bytes.Buffer
	if err := spdxEnc.Encode(&buf, *sb); err != nil {
		return nil, fmt.Errorf("sbom: encode SPDX %s: %w", s.o.SPDXVersion, err)
	}
	d.SPDX = bytes.Clone(buf.Bytes())
	buf.Reset()
	if err := cdxEnc.Encode(&buf, *sb); err != nil {
		return nil, fmt.Errorf("sbom: encode CycloneDX %s: %w", s.o.CycloneDXVersion, err)
	}
	d.CycloneDX = bytes.Clone(buf.Bytes())
	for _, p := range sb.Artifacts.Packages.Sorted() {
		switch p.Type {
		case pkg.DebPkg, pkg.ApkPkg, pkg.RpmPkg, pkg.AlpmPkg, pkg.PortagePkg:
			d.OSPackages++
		}
	}
	// No json.Valid pass over the megabytes here: syft's encoders write
	// through encoding/json, so the output is JSON by construction.
	// attest.Statement checks a document again as it embeds it; one over
	// signing.max_payload is stored as an artifact of its own and only
	// its digest is signed.
	return d, nil
}

// ConfigFile parses the image config.
func ConfigFile(raw []byte) (*v1.ConfigFile, error) {
	return v1.ParseConfigFile(bytes.NewReader(raw))
}

func digestOf(name string) string {
	if at := strings.LastIndex(name, "@"); at >= 0 {
		return name[at+1:]
	}
	return ""
}

func repoOf(name string) string {
	if at := strings.LastIndex(name, "@"); at >= 0 {
		return name[:at]
	}
	return name
}
