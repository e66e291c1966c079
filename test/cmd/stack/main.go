// Command stack starts the local real-component stack (make stack) and keeps
// it running until interrupted, printing the URLs and writing them to an env
// file for shells and other tools. -install only installs the pinned tools.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/attestd/attestd/test/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stack:", err)
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", ".demo/stack", "state directory (wiped at start)")
	install := flag.Bool("install", false, "only install the pinned tools and the registry package, then exit")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *install {
		for _, t := range stack.AllTools() {
			p, err := stack.Install(ctx, t, os.Stderr)
			if err != nil {
				return err
			}
			fmt.Println(p)
		}
		for _, f := range []func(context.Context, io.Writer) (string, error){stack.DockerRegistry, stack.Chromium} {
			p, err := f(ctx, os.Stderr)
			if err != nil {
				return err
			}
			fmt.Println(p)
		}
		return nil
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(abs); err != nil {
		return err
	}
	s, err := stack.Start(ctx, stack.Options{Dir: abs, Log: os.Stderr})
	if err != nil {
		return err
	}
	defer s.Stop()
	env := strings.Join([]string{
		"ATTESTD_STACK_REGISTRY=" + s.RegistryHost,
		"ATTESTD_STACK_ISSUER=" + s.IssuerURL,
		"ATTESTD_STACK_FULCIO=" + s.FulcioURL,
		"ATTESTD_STACK_TSA=" + s.TSAURL,
		"ATTESTD_STACK_REKOR=" + s.RekorURL,
		"ATTESTD_STACK_TRUSTED_ROOT=" + s.TrustedRoot,
		"ATTESTD_STACK_SIGNING_CONFIG=" + s.SigningConfig,
		"ATTESTD_STACK_COSIGN=" + s.CosignBin,
		"ATTESTD_STACK_CRANE=" + s.CraneBin,
	}, "\n") + "\n"
	envFile := filepath.Join(abs, "stack.env")
	if err := os.WriteFile(envFile, []byte(env), 0o644); err != nil {
		return err
	}
	fmt.Print(env)
	fmt.Printf(`
Stack is up; logs in %s/logs. Environment written to %s.
Sign with the stock cosign CLI (token from our OIDC issuer):
  TOKEN=$(curl -fsS "%s/token?email=you@example.test")
  %s sign %s IMAGE@DIGEST
Verify:
  %s verify %s IMAGE@DIGEST
Ctrl-C stops everything.
`, abs, envFile, s.IssuerURL, s.CosignBin, strings.Join(s.SignArgs("$TOKEN"), " "), s.CosignBin, strings.Join(s.VerifyArgs("you@example.test"), " "))
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stack: stopping")
	return nil
}
