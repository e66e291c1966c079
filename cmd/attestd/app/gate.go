package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"gopkg.in/yaml.v3"

	"github.com/attestd/attestd/attest/attach"
	"github.com/attestd/attestd/attest/gate"
	"github.com/attestd/attestd/attest/sign"
	"github.com/attestd/attestd/attest/verify"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/policy"
	"github.com/attestd/attestd/policy/promote"
	"github.com/attestd/attestd/store/registry"
)

// loadPolicy reads the policy file and every Rego module it names
// (relative to the policy file).
func loadPolicy(ctx context.Context, file string) (*policy.Policy, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("gate.policy: %w", err)
	}
	var refs struct {
		Rego []struct {
			File string `yaml:"file"`
		} `yaml:"rego"`
	}
	_ = yaml.Unmarshal(b, &refs) // Load reports syntax errors
	files := map[string][]byte{}
	for _, m := range refs.Rego {
		if m.File == "" {
			continue
		}
		p := m.File
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(file), p)
		}
		if files[m.File], err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("gate.policy %s: rego module: %w", file, err)
		}
	}
	pol, err := policy.Load(ctx, b, files)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return pol, nil
}

// newVerifier verifies against the signing trust root, accepting each
// signer the policy names for the predicate types it may sign.
func newVerifier(cfg *configs.Config, pol *policy.Policy, tr root.TrustedMaterial, rc *registry.Client) (*verify.Verifier, error) {
	var ids []verify.Identity
	for _, s := range pol.Identities() {
		ids = append(ids, verify.Identity{Issuer: s.Issuer, IssuerRegex: s.IssuerRegex, Subject: s.Subject, SubjectRegex: s.SubjectRegex, Types: s.Types})
	}
	o := verify.Options{TransparencyLog: 1, SignedTimestamps: cfg.Gate.SignedTimestamps}
	if cfg.Gate.TransparencyLog != nil {
		o.TransparencyLog = *cfg.Gate.TransparencyLog
	}
	return verify.New(tr, ids, rc, o)
}

// newGate builds the evaluate and promote stages from the configured
// policy, the signing trust root and the promotion rules. k signs the
// verification summaries (nil: a gate that only checks, e.g. policy test).
func newGate(cfg *configs.Config, db gate.Store, rc *registry.Client, k *sign.Keyless, log *slog.Logger) (*gate.Gate, error) {
	pol, err := loadPolicy(context.Background(), cfg.Gate.Policy)
	if err != nil {
		return nil, err
	}
	return newGateWith(cfg, pol, db, rc, k, log)
}

func newGateWith(cfg *configs.Config, pol *policy.Policy, db gate.Store, rc *registry.Client, k *sign.Keyless, log *slog.Logger) (*gate.Gate, error) {
	_, tr, err := signingTrust(cfg)
	if err != nil {
		return nil, err
	}
	ver, err := newVerifier(cfg, pol, tr, rc)
	if err != nil {
		return nil, err
	}
	o := gate.Options{Policy: pol, Verifier: ver, Store: db, Registry: rc, Rules: promotionRules(cfg),
		Timeout: time.Duration(cfg.Gate.Timeout), Version: version, Logger: log}
	if k != nil {
		o.Attester = attach.Attester{Signer: k, Audit: db}
		o.Own = k.IsOwn
	}
	return gate.New(o)
}

func promotionRules(cfg *configs.Config) []promote.Rule {
	rules := make([]promote.Rule, 0, len(cfg.Gate.Promotion))
	for _, r := range cfg.Gate.Promotion {
		rules = append(rules, promote.Rule{From: r.From, To: r.To, Tags: r.Tags, Match: r.Match, Replace: r.Replace})
	}
	return rules
}
