// Command benchvuln measures attestd's vulnerability database build and
// scan against the stock grype CLI (same version, installed by the stack)
// in one run: for each fixture's CycloneDX SBOM (made once by the stock
// syft CLI), `attestd vulndb scan` and `grype sbom:FILE`, both against the
// same database — wall time and peak RSS (the child's ru_maxrss), median
// of -runs, and whether their findings agree.
//
//	go run ./test/cmd/benchvuln [-runs 5]
//
// (`make bench-vuln`.)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/attestd/attestd/test/fixture"
	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchvuln:", err)
		os.Exit(1)
	}
}

type sample struct {
	wall time.Duration
	rss  int64
}

func run() error {
	runs := flag.Int("runs", 5, "runs per tool and SBOM (the median is reported)")
	flag.Parse()
	ctx := context.Background()
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "attestd-benchvuln-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	syft, err := stack.Install(ctx, stack.Syft(), os.Stderr)
	if err != nil {
		return err
	}
	grype, err := stack.Install(ctx, stack.Grype(), os.Stderr)
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "attestd")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/attestd").CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	grypeMod, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/anchore/grype").Output()
	if err != nil {
		return err
	}
	osv := filepath.Join(root, "sbom", "vuln", "testdata", "osv-go")
	dist, dbRoot := filepath.Join(dir, "dist"), filepath.Join(dir, "data", "vulndb")
	build, err := measure(exec.Command(bin, "vulndb", "build", "--osv", filepath.Join(osv, "all.zip"),
		"--severity-overlay", filepath.Join(osv, "severity-overlay.json"),
		"--vunnel", filepath.Join(strings.TrimSpace(string(grypeMod)), "grype", "db", "v6", "diff", "testdata", "inputs", "debian"),
		"-o", dist))
	if err != nil {
		return err
	}
	archive, _ := filepath.Glob(filepath.Join(dist, "*.tar.zst"))
	if len(archive) != 1 {
		return fmt.Errorf("build wrote %v", archive)
	}
	fi, _ := os.Stat(archive[0])
	if out, err := exec.Command(bin, "vulndb", "import", "--data-dir", filepath.Join(dir, "data"), archive[0]).CombinedOutput(); err != nil {
		return fmt.Errorf("import: %v\n%s", err, out)
	}
	dbFile, _ := os.Stat(filepath.Join(dbRoot, "6", "vulnerability.db"))
	fmt.Printf("database build (4291 Go vulndb OSV records + 11 Debian records): %s, peak RSS %d MiB; archive %d KiB, database %d MiB\n\n",
		build.wall.Round(time.Millisecond), build.rss>>20, fi.Size()>>10, dbFile.Size()>>20)

	all, err := fixture.All(ctx, fixture.Options{RepoRoot: root, Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }})
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SBOM\tcomponents\tfindings attestd/grype\tattestd wall\tgrype wall\tratio\tattestd RSS\tgrype RSS\t")
	for _, f := range all {
		if f.Image == nil {
			continue // an index: its platforms are images like the others
		}
		tag, _ := name.NewTag("bench.local/" + f.Name + ":v1")
		tarPath := filepath.Join(dir, f.Name+".tar")
		if err := tarball.WriteToFile(tarPath, tag, f.Image); err != nil {
			return err
		}
		sbom := filepath.Join(dir, f.Name+".cdx.json")
		cmd := exec.Command(syft, "scan", "docker-archive:"+tarPath, "-q", "-o", "cyclonedx-json="+sbom)
		cmd.Env = append(os.Environ(), "SYFT_CHECK_FOR_APP_UPDATE=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("syft %s: %v\n%s", f.Name, err, out)
		}
		var a, g []sample
		var af, gf []string
		for i := 0; i < *runs; i++ {
			out := filepath.Join(dir, "a.json")
			c := exec.Command(bin, "vulndb", "scan", "--data-dir", filepath.Join(dir, "data"), "--format", "json", "--log-level", "error", sbom)
			s, err := measureTo(c, out)
			if err != nil {
				return err
			}
			a = append(a, s)
			if af, err = findings(out); err != nil {
				return err
			}
			c = exec.Command(grype, "sbom:"+sbom, "-o", "json", "-q")
			c.Env = append(os.Environ(), "GRYPE_CHECK_FOR_APP_UPDATE=false", "GRYPE_DB_AUTO_UPDATE=false", "GRYPE_DB_VALIDATE_AGE=false", "GRYPE_DB_CACHE_DIR="+dbRoot)
			if s, err = measureTo(c, out); err != nil {
				return err
			}
			g = append(g, s)
			if gf, err = findings(out); err != nil {
				return err
			}
		}
		agree := "="
		if !slices.Equal(af, gf) {
			agree = "≠"
		}
		am, gm := median(a), median(g)
		fmt.Fprintf(tw, "%s\t%d\t%d %s %d\t%s\t%s\t%.2f\t%d MiB\t%d MiB\t\n", f.Name, packages(sbom), len(af), agree, len(gf),
			am.wall.Round(time.Millisecond), gm.wall.Round(time.Millisecond), float64(am.wall)/float64(gm.wall), am.rss>>20, gm.rss>>20)
	}
	tw.Flush()
	fmt.Printf("\n(median of %d runs each; both read the same SBOM and database; attestd: `attestd vulndb scan --format json` — the analysis stage's scan; grype: `grype sbom:FILE -o json`)\n", *runs)
	return nil
}

func measure(cmd *exec.Cmd) (sample, error) {
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return sample{wall: time.Since(start), rss: ru.Maxrss * 1024}, nil
}

func measureTo(cmd *exec.Cmd, path string) (sample, error) {
	f, err := os.Create(path)
	if err != nil {
		return sample{}, err
	}
	defer f.Close()
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = f, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return sample{}, fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, stderr.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return sample{wall: time.Since(start), rss: ru.Maxrss * 1024}, nil
}

func median(xs []sample) sample {
	slices.SortFunc(xs, func(a, b sample) int { return int(a.wall - b.wall) })
	m := xs[len(xs)/2]
	slices.SortFunc(xs, func(a, b sample) int { return int(a.rss - b.rss) })
	m.rss = xs[len(xs)/2].rss
	return m
}

func findings(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d struct {
		Matches []struct {
			Vulnerability struct{ ID string } `json:"vulnerability"`
			Artifact      struct{ Name, Version string }
		} `json:"matches"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	for _, m := range d.Matches {
		out = append(out, m.Vulnerability.ID+" "+m.Artifact.Name+"@"+m.Artifact.Version)
	}
	slices.Sort(out)
	return out, nil
}

func packages(sbom string) int {
	b, _ := os.ReadFile(sbom)
	var d struct {
		Components []json.RawMessage `json:"components"`
	}
	_ = json.Unmarshal(b, &d)
	return len(d.Components)
}
