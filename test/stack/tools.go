// Package stack starts the real components attestd is tested against, on
// loopback with free ports: the Debian docker-registry (with webhook
// notifications), our own OIDC issuer, Fulcio, a timestamp authority and
// Rekor v2. Pinned tools are installed on first use into a git-ignored,
// project-local directory keyed by version. Used by test/e2e and make stack.
package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tool is a Go command installed with `go install Package@Version`.
type Tool struct {
	Name    string // binary name that go install produces
	Package string
	Version string
}

// The pinned tools (../shared/LOCAL-STACK.md lists why these versions).
func Crane() Tool {
	return Tool{"crane", "github.com/google/go-containerregistry/cmd/crane", "v0.22.1"}
}
func Cosign() Tool { return Tool{"cosign", "github.com/sigstore/cosign/v2/cmd/cosign", "v2.6.5"} }
func Fulcio() Tool { return Tool{"fulcio", "github.com/sigstore/fulcio", "v1.8.8"} }
func TSA() Tool {
	return Tool{"timestamp-server", "github.com/sigstore/timestamp-authority/v2/cmd/timestamp-server", "v2.1.3"}
}

// RekorV2 is rekor-tiles' POSIX (files only) server. v2.3+ rejects cosign
// 2.6.5's DSSE uploads.
func RekorV2() Tool {
	return Tool{"posix", "github.com/sigstore/rekor-tiles/v2/cmd/rekor-server/posix", "v2.2.1"}
}

// Syft is the stock syft CLI, at the version attestd links as a library:
// the analysis tests compare package counts with it.
func Syft() Tool { return Tool{"syft", "github.com/anchore/syft/cmd/syft", "v1.57.2"} }

// Grype is the stock grype CLI, at the version attestd links as a library:
// the vulnerability tests compare findings with it on the same SBOM and
// database.
func Grype() Tool { return Tool{"grype", "github.com/anchore/grype/cmd/grype", "v0.121.3"} }

// AllTools is every tool the stack and the cross-checks use.
func AllTools() []Tool { return []Tool{Crane(), TSA(), RekorV2(), Fulcio(), Cosign(), Syft(), Grype()} }

// installTimeout bounds one cold `go install` (cosign alone takes ~5.5 min
// on 2 cores).
const installTimeout = 20 * time.Minute

// ToolsDir is $ATTESTD_TOOLS_DIR, else .tools at the repository root.
func ToolsDir() (string, error) {
	if d := os.Getenv("ATTESTD_TOOLS_DIR"); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".tools"), nil
}

// RepoRoot walks up from the working directory to attestd's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/attestd/attestd\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find attestd's go.mod above the working directory; set ATTESTD_TOOLS_DIR")
		}
		dir = parent
	}
}

// Install returns the path of t's binary, building it first when this
// version is not installed yet. Concurrent callers (test packages run in
// parallel) wait on a file lock instead of building twice.
func Install(ctx context.Context, t Tool, log io.Writer) (string, error) {
	dir, err := ToolsDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, t.Name+"@"+t.Version)
	exe := filepath.Join(bin, t.Name)
	if _, err := os.Stat(exe); err == nil {
		return exe, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := LockFile(ctx, filepath.Join(dir, ".install.lock"), installTimeout)
	if err != nil {
		return "", fmt.Errorf("install %s: %w", t.Name, err)
	}
	defer unlock()
	if _, err := os.Stat(exe); err == nil {
		return exe, nil // another process built it while we waited
	}
	fmt.Fprintf(log, "stack: installing %s@%s (first use; cached in %s)\n", t.Package, t.Version, bin)
	ictx, cancel := context.WithTimeout(ctx, installTimeout)
	defer cancel()
	tmp := bin + ".tmp"
	os.RemoveAll(tmp)
	cmd := exec.CommandContext(ictx, "go", "install", t.Package+"@"+t.Version)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", t.Package, t.Version, err, tail(out.String(), 40))
	}
	os.RemoveAll(bin)
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "stack: installed %s in %s\n", t.Name, time.Since(start).Round(time.Second))
	return exe, nil
}

// DockerRegistry finds the Debian docker-registry binary, installing the
// package with apt-get when it is missing and we run as root.
func DockerRegistry(ctx context.Context, log io.Writer) (string, error) {
	return AptBinary(ctx, log, "docker-registry", "docker-registry", "/usr/bin/docker-registry")
}

// AptBinary finds one of paths (names on $PATH or absolute), else installs
// the Debian package pkg with apt-get — under a machine-wide lock, so
// parallel test processes do not run apt at once — when we are root.
func AptBinary(ctx context.Context, log io.Writer, pkg string, paths ...string) (string, error) {
	find := func() (string, error) {
		for _, p := range paths {
			if exe, err := exec.LookPath(p); err == nil {
				return exe, nil
			}
		}
		return "", fmt.Errorf("%s not found (looked for %s)", pkg, strings.Join(paths, ", "))
	}
	if exe, err := find(); err == nil {
		return exe, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%s is not installed and we are not root: run `sudo apt-get install -y %s` and retry", pkg, pkg)
	}
	fmt.Fprintf(log, "stack: installing Debian package %s\n", pkg)
	unlock, err := LockFile(ctx, filepath.Join(os.TempDir(), "attestd-apt.lock"), 10*time.Minute)
	if err != nil {
		return "", err
	}
	defer unlock()
	if exe, err := find(); err == nil {
		return exe, nil
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", pkg}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 20))
		}
	}
	return find()
}

// LockFile takes an exclusive flock on path, polling until timeout; call
// the returned func to release it.
func LockFile(ctx context.Context, path string, timeout time.Duration) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s still held after %s", path, timeout)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
