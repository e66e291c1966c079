package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/attestd/attestd/attest/analyze"
	"github.com/attestd/attestd/attest/attach"
	"github.com/attestd/attestd/attest/pipeline"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/slsa"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/sbom"
	"github.com/attestd/attestd/sbom/harden"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/layers"
	"github.com/attestd/attestd/store/registry"
)

// staticKeychain serves username + password_file credentials from the config.
type staticKeychain map[string]authn.AuthConfig

func (k staticKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if c, ok := k[res.RegistryStr()]; ok {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

// registryClient builds the one registry client of the process from config.
func registryClient(cfg *configs.Config, log *slog.Logger) (*registry.Client, error) {
	static := staticKeychain{}
	opts := []registry.Option{registry.WithLogger(log), registry.WithUserAgent("attestd/" + version)}
	var insecure []string
	for i, r := range cfg.Registries {
		if r.Auth.PasswordFile != "" {
			b, err := os.ReadFile(r.Auth.PasswordFile)
			if err != nil {
				return nil, &configs.Error{File: cfg.File(), Field: fmt.Sprintf("registries[%d].auth.password_file", i), Msg: fmt.Sprintf("cannot read: %v", err)}
			}
			pw := configs.Secret(strings.TrimRight(string(b), "\r\n"))
			static[r.Host] = authn.AuthConfig{Username: r.Auth.Username, Password: pw.Reveal()}
			log.Debug("registry credentials from file", "host", r.Host, "username", r.Auth.Username, "password", pw)
		}
		if r.Insecure && !registry.IsLoopback(r.Host) {
			insecure = append(insecure, r.Host)
			log.Warn("plain HTTP enabled for a non-loopback registry", "host", r.Host)
		}
		if r.RateLimit > 0 {
			opts = append(opts, registry.WithHostRateLimit(r.Host, r.RateLimit))
		}
	}
	opts = append(opts,
		registry.WithKeychain(authn.NewMultiKeychain(static, authn.DefaultKeychain)),
		registry.WithInsecureRegistriesUnsafe(insecure...))
	return registry.New(opts...)
}

// newPipeline wires the stages: resolve and analyse always; sign when
// signing.* is set; evaluate when gate.policy is set too; promote when
// gate.promotion has rules. A stage that is not configured is reported as
// skipped, and no digest moves past what really ran.
func (r *runner) newPipeline(cfg *configs.Config, db *store.DB, rc *registry.Client, log *slog.Logger) (*pipeline.Pipeline, error) {
	vs, err := newVulnScanner(cfg, &r.vulnMetrics, log)
	if err != nil {
		return nil, err
	}
	r.vulnScanner = vs
	an, err := newAnalyzer(cfg, db, rc, vs, log)
	if err != nil {
		return nil, err
	}
	r.analyzer = an
	stages := pipeline.Stages{
		Resolver: analyze.NewResolver(rc, db, analyze.WithMaxIndexManifests(cfg.Analysis.MaxIndexManifests)),
		Analyzer: analyze.Stage{Analyzer: an},
	}
	if cfg.Signing.Enabled() {
		k, err := newSigner(cfg, rc, log)
		if err != nil {
			return nil, err
		}
		stages.Signer = attach.New(k, db, rc, attach.Options{Concurrency: cfg.Signing.Concurrency, MaxPayload: int64(cfg.Signing.MaxPayload), Logger: log})
		if cfg.Gate.Enabled() {
			g, err := newGate(cfg, db, rc, k, log)
			if err != nil {
				return nil, err
			}
			stages.Evaluator = g
			if len(cfg.Gate.Promotion) > 0 {
				stages.Promoter = g
			}
		}
	}
	if r.wrapStages != nil {
		stages = r.wrapStages(stages)
	}
	var done func(*store.Job, error)
	if r.jobDone != nil {
		done = func(j *store.Job, err error) { r.jobDone(j.Ref, j.ID, err) }
	}
	return pipeline.New(db, stages, pipeline.Options{
		Workers:       cfg.Workers,
		AnalysisSlots: cfg.Analysis.Concurrency,
		MaxAttempts:   cfg.Jobs.MaxAttempts,
		Backoff:       timeDuration(cfg.Jobs.Backoff),
		MaxBackoff:    timeDuration(cfg.Jobs.MaxBackoff),
		JobTimeout:    timeDuration(cfg.Jobs.Timeout),
		Grace:         timeDuration(cfg.Jobs.ShutdownGrace),
		Logger:        log,
		OnJobDone:     done,
		OnStage:       r.stageMetrics.observe,
		Healthy:       func() error { return diskSpace(cfg.DataDir) },
	})
}

// newAnalyzer builds the analysis stage on the layer cache under data_dir.
func newAnalyzer(cfg *configs.Config, db *store.DB, rc *registry.Client, vs analyze.VulnScanner, log *slog.Logger) (*analyze.Analyzer, error) {
	a := cfg.Analysis
	files := layers.Limit{N: a.MaxFiles, Setting: "analysis.max_files"}
	cache, err := layers.Open(filepath.Join(cfg.DataDir, "cache", "layers"), int64(a.LayerCache),
		layers.WithCapSetting("analysis.layer_cache"),
		layers.WithLayerLimits(layers.LayerLimits{
			Bytes:           layers.Limit{N: int64(a.MaxLayerBytes), Setting: "analysis.max_layer_bytes"},
			CompressedBytes: layers.Limit{N: int64(a.MaxCompressedLayerBytes), Setting: "analysis.max_compressed_layer_bytes"},
			Entries:         files,
		}))
	if err != nil {
		return nil, err
	}
	builders := make([]slsa.Builder, 0, len(cfg.Analysis.Builders))
	for _, b := range cfg.Analysis.Builders {
		builders = append(builders, slsa.Builder{Repository: b.Repository, Pusher: b.Pusher, ID: b.ID})
	}
	ver, _, _ := buildInfo()
	an, err := analyze.New(rc, cache, db, analyze.Options{
		SBOM: sbom.Options{
			SPDXVersion: cfg.Analysis.SPDXVersion, CycloneDXVersion: cfg.Analysis.CycloneDXVersion,
			WorkDir:  filepath.Join(cfg.DataDir, "work"),
			Licenses: sbom.NewLicenseScanner(),
		},
		Harden: harden.Options{
			MinimalBases: cfg.Analysis.Hardening.MinimalBases, MaxImageBytes: int64(cfg.Analysis.Hardening.MaxImageSize),
			MinGoVersion: cfg.Analysis.Hardening.MinGoVersion,
		},
		Builders:         builders,
		LayerConcurrency: cfg.Analysis.LayerConcurrency,
		Image: layers.ImageLimits{
			Bytes:           layers.Limit{N: int64(a.MaxImageBytes), Setting: "analysis.max_image_bytes"},
			CompressedBytes: layers.Limit{N: int64(a.MaxCompressedImageBytes), Setting: "analysis.max_compressed_image_bytes"},
			Entries:         files,
		},
		MaxIndexManifests: a.MaxIndexManifests,
		MaxLayers:         a.MaxLayers,
		Vulns:             vs,
		Version:           ver,
		Logger:            log,
	})
	if err != nil {
		return nil, err
	}
	if err := an.CleanWorkDir(); err != nil {
		return nil, fmt.Errorf("analysis work dir: %w", err)
	}
	return an, nil
}

// signingTrust is the signing config and trusted root: files, or the
// public-good instance through TUF.
func signingTrust(cfg *configs.Config) (*root.SigningConfig, *root.TrustedRoot, error) {
	var sc *root.SigningConfig
	var tr *root.TrustedRoot
	var err error
	if cfg.Signing.PublicGood {
		sc, tr, err = sign.PublicGoodTrust(filepath.Join(cfg.DataDir, "tuf"))
	} else {
		sc, tr, err = sign.LoadTrust(cfg.Signing.SigningConfig, cfg.Signing.TrustedRoot)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("signing: %w", err)
	}
	return sc, tr, nil
}

func newSigner(cfg *configs.Config, rc *registry.Client, log *slog.Logger) (*sign.Keyless, error) {
	sc, tr, err := signingTrust(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Signing.Key != "" {
		pass := func(bool) ([]byte, error) {
			if cfg.Signing.KeyPasswordEnv == "" {
				return nil, nil
			}
			v, ok := os.LookupEnv(cfg.Signing.KeyPasswordEnv)
			if !ok {
				return nil, fmt.Errorf("$%s (signing.key_password_env) is not set", cfg.Signing.KeyPasswordEnv)
			}
			return []byte(v), nil
		}
		k, err := sign.NewKeyed(context.Background(), cfg.Signing.Key, pass, sc, tr, rc, log)
		if err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
		return withFormat(k, cfg)
	}
	var tokens sign.TokenSource
	switch sg := cfg.Signing; {
	case sg.TokenEnv != "":
		tokens = sign.EnvToken{Name: sg.TokenEnv}
	case sg.TokenGitHubActions:
		tokens = sign.GitHubActionsToken{}
	case len(sg.TokenCommand) > 0:
		tokens = sign.CommandToken{Argv: sg.TokenCommand}
	default:
		tokens = sign.FileToken{Path: sg.TokenFile}
	}
	k, err := sign.NewKeylessFromTrust(sc, tr, tokens, rc, log)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return withFormat(k, cfg)
}

func withFormat(k *sign.Keyless, cfg *configs.Config) (*sign.Keyless, error) {
	k, err := k.WithFormat(sign.Format(cfg.Signing.Format))
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return k, nil
}
