package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store/registry"
)

// dependencyCheck reports whether every configured registry and the
// signer's certificate authority answer HTTP (any status: an answer is
// reachable). It backs /readyz?deep=1, an opt-in check: the plain /readyz
// does not depend on them, because an orchestrator that stops routing
// webhooks during a registry outage would lose events intake could have
// kept.
func dependencyCheck(cfg *configs.Config, rc *registry.Client) func(context.Context) error {
	var urls []string
	for _, r := range cfg.Registries {
		reg, err := name.NewRegistry(r.Host, rc.NameOptions(r.Host)...)
		if err != nil {
			continue
		}
		scheme := reg.Scheme()
		if registry.IsLoopback(r.Host) {
			scheme = "http"
		}
		urls = append(urls, scheme+"://"+r.Host+"/v2/")
	}
	signer := func() ([]string, error) { return nil, nil }
	if cfg.Signing.Enabled() && cfg.Signing.Key == "" {
		signer = func() ([]string, error) {
			sc, _, err := signingTrust(cfg)
			if err != nil {
				return nil, err
			}
			var out []string
			for _, s := range sc.FulcioCertificateAuthorityURLs() {
				out = append(out, s.URL)
			}
			return out, nil
		}
	}
	client := &http.Client{Timeout: 5 * time.Second}
	return func(ctx context.Context) error {
		more, err := signer()
		if err != nil {
			return fmt.Errorf("signer: %w", err)
		}
		var errs []error
		for _, u := range append(append([]string(nil), urls...), more...) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			resp, err := client.Do(req)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", u, err))
				continue
			}
			resp.Body.Close()
		}
		return errors.Join(errs...)
	}
}
