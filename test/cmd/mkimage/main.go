// Command mkimage builds attestd's container image without Docker (see
// package test/image) and pushes it, or writes an OCI layout. Used by
// `make image`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/test/image"
	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	push := flag.String("push", "", "push to this reference (e.g. 127.0.0.1:5000/attestd:dev)")
	out := flag.String("oci-layout", "", "write an OCI image layout to this directory instead of pushing")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	version := flag.String("version", "dev", "version stamped into the binary and labels")
	flag.Parse()
	if (*push == "") == (*out == "") {
		return fmt.Errorf("set exactly one of -push REF or -oci-layout DIR")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := stack.RepoRoot()
	if err != nil {
		return err
	}
	rev := gitOut(root, "rev-parse", "HEAD")
	created := time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		created = time.Unix(n, 0).UTC()
	} else if ct := gitOut(root, "log", "-1", "--format=%ct"); ct != "" {
		n, _ := strconv.ParseInt(ct, 10, 64)
		created = time.Unix(n, 0).UTC()
	}
	idx, err := image.Build(ctx, image.Options{RepoRoot: root, Platforms: strings.Split(*platforms, ","),
		Version: *version, Revision: rev, Created: created})
	if err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	if *out != "" {
		p, err := layout.Write(*out, idx)
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s (index %s)\n", p, d)
		return nil
	}
	ref, err := name.ParseReference(*push)
	if err != nil {
		return err
	}
	if err := image.Push(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return err
	}
	fmt.Printf("%s@%s\n", ref.Context(), d)
	return nil
}

func gitOut(dir string, args ...string) string {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
