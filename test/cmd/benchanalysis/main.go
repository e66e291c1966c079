// Command benchanalysis compares attestd's analysis stage with the stock syft
// CLI (same version, installed by the stack) on the same local-registry
// images, in one run: wall time and peak RSS of `attestd process` (SBOMs in
// two formats, hardening, provenance, store writes; cold layer cache) against
// `syft scan registry:… -o spdx-json -o cyclonedx-json`, per fixture, as
// ratios. With -big it adds a generated image of ≥ 1 GiB.
//
//	go run ./test/cmd/benchanalysis [-runs 3] [-big]
//
// (`make bench-analysis`.) Peak RSS is the child's ru_maxrss.
package main

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchanalysis:", err)
		os.Exit(1)
	}
}

type sample struct {
	wall time.Duration
	rss  int64 // bytes
}

func run() error {
	runs := flag.Int("runs", 3, "runs per tool and image (the median is reported)")
	big := flag.Bool("big", false, "also measure a generated ≥ 1 GiB image")
	only := flag.String("only", "", "comma-separated fixture names (default: all)")
	flag.Parse()
	ctx := context.Background()
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "attestd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	stk, err := stack.Start(ctx, stack.Options{Dir: dir, Log: os.Stderr})
	if err != nil {
		return err
	}
	defer stk.Stop()

	bin := filepath.Join(dir, "attestd")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/attestd").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "attestd.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("registries:\n  - host: %s\nworkers: 1\nlog:\n  level: warn\n"+
		// syft does not match vulnerabilities: compare like with like
		// (make bench-vuln compares the scan with the grype CLI).
		"analysis:\n  vulnerabilities:\n    disabled: true\n", stk.RegistryHost)), 0o644); err != nil {
		return err
	}

	fx, err := fixture.All(ctx, fixture.Options{RepoRoot: root})
	if err != nil {
		return err
	}
	type target struct{ name, ref string }
	var targets []target
	for _, f := range fx {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), f.Name) {
			continue
		}
		tag, _ := name.NewTag(stk.RegistryHost + "/bench/" + f.Name + ":v1")
		if f.Index != nil {
			// syft scans one platform of an index; compare on the host's.
			m, _ := f.Index.IndexManifest()
			for _, d := range m.Manifests {
				if d.Platform != nil && d.Platform.Architecture == "amd64" {
					img, _ := f.Index.Image(d.Digest)
					f.Image = img
				}
			}
			f.Name += "/amd64"
		}
		if err := remote.Write(tag, f.Image); err != nil {
			return err
		}
		d, _ := f.Image.Digest()
		targets = append(targets, target{f.Name, tag.Context().Digest(d.String()).String()})
	}
	if *big {
		img, err := bigImage(filepath.Join(dir, "big"), 1100<<20)
		if err != nil {
			return err
		}
		tag, _ := name.NewTag(stk.RegistryHost + "/bench/big:v1")
		fmt.Fprintln(os.Stderr, "pushing the ≥ 1 GiB image…")
		if err := remote.Write(tag, img); err != nil {
			return err
		}
		d, _ := img.Digest()
		sz := int64(0)
		ls, _ := img.Layers()
		for _, l := range ls {
			s, _ := l.Size()
			sz += s
		}
		targets = append(targets, target{fmt.Sprintf("big (%d MiB)", sz>>20), tag.Context().Digest(d.String()).String()})
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "image\tattestd wall\tsyft wall\twall ratio\tattestd peak RSS\tsyft peak RSS\tRSS ratio\t\n")
	for _, tg := range targets {
		var a, s []sample
		for i := 0; i < *runs; i++ {
			data := filepath.Join(dir, fmt.Sprintf("data-%d", i)) // cold layer cache, like the CLI
			x, err := measure(exec.Command(bin, "process", "-c", cfg, "--data-dir", data, tg.ref))
			if err != nil {
				return fmt.Errorf("attestd %s: %w", tg.name, err)
			}
			os.RemoveAll(data)
			a = append(a, x)
			cmd := exec.Command(stk.SyftBin, "scan", "registry:"+tg.ref, "-q", "-o", "spdx-json=/dev/null", "-o", "cyclonedx-json=/dev/null")
			cmd.Env = append(os.Environ(), "HOME="+filepath.Join(dir, "home"), "SYFT_CHECK_FOR_APP_UPDATE=false", "SYFT_REGISTRY_INSECURE_USE_HTTP=true")
			y, err := measure(cmd)
			if err != nil {
				return fmt.Errorf("syft %s: %w", tg.name, err)
			}
			s = append(s, y)
		}
		am, sm := median(a), median(s)
		fmt.Fprintf(tw, "%s\t%.2fs\t%.2fs\t%.2f\t%d MiB\t%d MiB\t%.2f\t\n", tg.name,
			am.wall.Seconds(), sm.wall.Seconds(), am.wall.Seconds()/sm.wall.Seconds(),
			am.rss>>20, sm.rss>>20, float64(am.rss)/float64(sm.rss))
	}
	tw.Flush()
	fmt.Printf("\n(median of %d runs each; attestd: `attestd process` with a cold layer cache — SPDX + CycloneDX + hardening + provenance + store; syft: `syft scan registry:REF -o spdx-json -o cyclonedx-json`)\n", *runs)
	return nil
}

func measure(cmd *exec.Cmd) (sample, error) {
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("%v\n%s", err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return sample{wall: time.Since(start), rss: ru.Maxrss * 1024}, nil
}

func median(xs []sample) sample {
	sort.Slice(xs, func(i, j int) bool { return xs[i].wall < xs[j].wall })
	m := xs[len(xs)/2]
	rss := make([]int64, len(xs))
	for i, x := range xs {
		rss[i] = x.rss
	}
	slices.Sort(rss)
	m.rss = rss[len(rss)/2]
	return m
}

// bigImage writes layers of incompressible files (1 MiB each, spread over
// directories) totalling at least size bytes, so the image is ≥ size
// compressed and uncompressed.
func bigImage(dir string, size int64) (v1.Image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	const layers = 4
	per := size / layers
	img := empty.Image
	for l := 0; l < layers; l++ {
		p := filepath.Join(dir, fmt.Sprintf("layer%d.tar", l))
		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		tw := tar.NewWriter(f)
		buf := make([]byte, 1<<20)
		for i := int64(0); i*int64(len(buf)) < per; i++ {
			rand.Read(buf)
			hdr := &tar.Header{Name: fmt.Sprintf("data/l%d/d%03d/f%05d.bin", l, i%100, i), Mode: 0o644, Size: int64(len(buf)), ModTime: time.Unix(1700000000, 0)}
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			if _, err := tw.Write(buf); err != nil {
				return nil, err
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		f.Close()
		layer, err := tarball.LayerFromFile(p)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	return mutate.Config(img, v1.Config{User: "65532"})
}
