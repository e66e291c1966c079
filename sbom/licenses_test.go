package sbom

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nodeImage writes a one-layer image of npm packages to dir: half declare
// their license in package.json, half leave syft to find it in a LICENSE
// file next to it (testdata/LICENSE-MIT), which its license scanner reads.
func nodeImage(t testing.TB, dir string, packages int) Image {
	t.Helper()
	mit, err := os.ReadFile(filepath.Join("testdata", "LICENSE-MIT"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "layer.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(name string, body []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: mtime, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(name string) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir}); err != nil {
			t.Fatal(err)
		}
	}
	mkdir("app/")
	mkdir("app/node_modules/")
	for i := range packages {
		name := fmt.Sprintf("pkg%03d", i)
		mkdir("app/node_modules/" + name + "/")
		license := ""
		if i%2 == 0 {
			license = `, "license": "Apache-2.0"`
		} else {
			add("app/node_modules/"+name+"/LICENSE", mit)
		}
		add("app/node_modules/"+name+"/package.json", fmt.Appendf(nil, `{"name": %q, "version": "1.0.%d"%s}`, name, i, license))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	layer, err := tarball.LayerFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers", DiffIDs: must(t, layer.DiffID)}})
	if err != nil {
		t.Fatal(err)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	dig, err := layer.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return Image{
		Name:        "registry.example/node@" + sha256Hex(rawManifest),
		RawManifest: rawManifest,
		RawConfig:   rawConfig,
		Layers:      []LayerFile{{Digest: dig.String(), Path: path}},
	}
}

func must(t testing.TB, diffID func() (v1.Hash, error)) []v1.Hash {
	t.Helper()
	h, err := diffID()
	if err != nil {
		t.Fatal(err)
	}
	return []v1.Hash{h}
}

// packages scans img and lists its packages as "name@version licenses".
func packages(t testing.TB, img Image, o Options) []string {
	t.Helper()
	o.WorkDir = t.TempDir()
	s, err := Open(context.Background(), img, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sb, err := s.SBOM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range sb.Artifacts.Packages.Sorted() {
		var ls []string
		for _, l := range p.Licenses.ToSlice() {
			ls = append(ls, l.Value+"/"+string(l.Type))
		}
		slices.Sort(ls)
		out = append(out, p.Name+"@"+p.Version+" "+strings.Join(ls, ","))
	}
	return out
}

// TestLicenseScannerShared: scans sharing one scanner, concurrently, find
// the same packages and licenses as a scan with a scanner of its own.
func TestLicenseScannerShared(t *testing.T) {
	img := nodeImage(t, t.TempDir(), 10)
	want := packages(t, img, Options{})
	if len(want) != 10 || !strings.Contains(want[1], "MIT/") || !strings.Contains(want[0], "Apache-2.0/") {
		t.Fatalf("the fixture should give 10 packages with Apache-2.0 and MIT licenses, got %q", want)
	}
	shared := NewLicenseScanner()
	got := make([][]string, 4)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = packages(t, img, Options{Licenses: shared}) })
	}
	wg.Wait()
	for i := range got {
		if diff := cmp.Diff(want, got[i]); diff != "" {
			t.Errorf("scan %d with the shared scanner (-own +shared):\n%s", i, diff)
		}
	}
}

// TestValuesFrom: the scan's own values, deadline and cancellation win;
// only keys it lacks come from the carrier.
func TestValuesFrom(t *testing.T) {
	type key string
	carrier := context.WithValue(context.WithValue(context.Background(), key("a"), "carrier"), key("b"), "carrier")
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key("a"), "scan"))
	ctx := valuesFrom{Context: parent, values: carrier}
	child, cancelChild := context.WithTimeout(ctx, time.Hour)
	defer cancelChild()
	for _, tc := range []struct {
		key  key
		want any
	}{{"a", "scan"}, {"b", "carrier"}, {"c", nil}} {
		if got := child.Value(tc.key); got != tc.want {
			t.Errorf("Value(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
	cancel()
	select {
	case <-child.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the scan's context did not reach a child of valuesFrom")
	}
}

// BenchmarkSBOM is one scan (Open, SBOM, Close) of a 40-package node image,
// with syft building its license scanner for the scan and with one shared
// (compare with `benchstat -col /licenses`).
func BenchmarkSBOM(b *testing.B) {
	img := nodeImage(b, b.TempDir(), 40)
	for _, bc := range []struct {
		name     string
		licenses *LicenseScanner
	}{{"licenses=own", nil}, {"licenses=shared", NewLicenseScanner()}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				packages(b, img, Options{Licenses: bc.licenses})
			}
		})
	}
}
