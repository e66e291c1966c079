// Command chaos runs attestd's full reliability campaign (`make chaos`):
// see package test/chaos. It prints the figures and the invariant table,
// also to bin/chaos.txt, and exits 1 when an invariant breaks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/attestd/attestd/test/chaos"
)

func main() {
	o := chaos.Full()
	flag.IntVar(&o.Images, "images", o.Images, "images pushed in the kill phase")
	flag.IntVar(&o.Kills, "kills", o.Kills, "SIGKILLs during the kill phase")
	flag.Uint64Var(&o.Seed, "seed", 0, "random seed (0: from the clock; printed with the report)")
	short := flag.Bool("short", false, "the short version make test runs")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	if *short {
		s := chaos.Short()
		s.Seed = o.Seed
		o = s
	}
	root, err := os.Getwd()
	if err != nil {
		fail(err)
	}
	dir, err := os.MkdirTemp("", "attestd-chaos-")
	if err != nil {
		fail(err)
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	o.Root, o.Dir, o.Log = root, dir, os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, o)
	if rep != nil {
		var b strings.Builder
		rep.Write(&b)
		fmt.Print(b.String())
		_ = os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		_ = os.WriteFile(filepath.Join(root, "bin", "chaos.txt"), []byte(b.String()), 0o644)
	}
	if err != nil {
		fail(err)
	}
	if f := rep.Failed(); len(f) > 0 {
		fmt.Fprintf(os.Stderr, "chaos: %d invariants broken (work directory %s)\n", len(f), dir)
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "chaos:", err)
	os.Exit(1)
}
