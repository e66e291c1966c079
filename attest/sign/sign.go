// Package sign is attestd's signer and attacher: keyless Sigstore signing
// (an OIDC token exchanged at Fulcio for a short-lived certificate, the
// signature logged in Rekor and/or timestamped by a TSA, as the signing
// config says) through the cosign v2 library, in the new Sigstore bundle
// format, attached to the registry as OCI referrers (tag fallback where the
// registry lacks the API) so that the stock cosign CLI verifies them. It is
// one of the two packages allowed to import cosign.
package sign

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	intotov1 "github.com/in-toto/attestation/go/v1"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgsign "github.com/sigstore/sigstore-go/pkg/sign"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/attestd/attestd/store/registry"
)

// SignTimeout bounds one signature: Fulcio, TSA and Rekor v2 (whose entries
// wait ~1 s for a checkpoint) plus the registry write.
const SignTimeout = 2 * time.Minute

// PredicateSignature is the predicate type of an image signature in the
// bundle format (what `cosign sign --new-bundle-format` writes).
const PredicateSignature = ctypes.CosignSignPredicateType

// TokenSource yields an OIDC ID token for Fulcio (audience "sigstore").
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// FileToken reads the token from a file on every call, so a rotated token
// (a Kubernetes projected service-account token) is always current.
type FileToken struct{ Path string }

// Token implements TokenSource.
func (f FileToken) Token(context.Context) (string, error) {
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return "", fmt.Errorf("oidc token file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("oidc token file %s is empty", f.Path)
	}
	return t, nil
}

// EnvToken reads the token from an environment variable.
type EnvToken struct{ Name string }

// Token implements TokenSource.
func (e EnvToken) Token(context.Context) (string, error) {
	t := strings.TrimSpace(os.Getenv(e.Name))
	if t == "" {
		return "", fmt.Errorf("oidc token: $%s is empty", e.Name)
	}
	return t, nil
}

// Keyless signs with an ephemeral key and a Fulcio certificate.
type Keyless struct {
	signing *root.SigningConfig
	trusted root.TrustedMaterial
	tokens  TokenSource
	reg     *registry.Client
	log     *slog.Logger
}

// NewKeyless loads the signing config (which Fulcio, Rekor and TSA to use)
// and the trusted root (to check what they return) — the two files
// `cosign signing-config create` and `cosign trusted-root create` write.
func NewKeyless(signingConfigPath, trustedRootPath string, tokens TokenSource, reg *registry.Client, log *slog.Logger) (*Keyless, error) {
	if tokens == nil || reg == nil {
		return nil, errors.New("keyless signer: a token source and a registry client are required")
	}
	sc, err := root.NewSigningConfigFromPath(signingConfigPath)
	if err != nil {
		return nil, fmt.Errorf("signing config %s: %w", signingConfigPath, err)
	}
	if len(sc.FulcioCertificateAuthorityURLs()) == 0 {
		return nil, fmt.Errorf("signing config %s names no Fulcio: keyless signing needs one", signingConfigPath)
	}
	if len(sc.RekorLogURLs()) == 0 && len(sc.TimestampAuthorityURLs()) == 0 {
		return nil, fmt.Errorf("signing config %s names neither a Rekor log nor a timestamp authority: the 10-minute certificate could not be verified later", signingConfigPath)
	}
	tr, err := root.NewTrustedRootFromPath(trustedRootPath)
	if err != nil {
		return nil, fmt.Errorf("trusted root %s: %w", trustedRootPath, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keyless{signing: sc, trusted: tr, tokens: tokens, reg: reg, log: log}, nil
}

// SignImage signs the image digest (a cosign signature in bundle form) and
// attaches it, unless a signature bundle is attached already.
func (k *Keyless) SignImage(ctx context.Context, ref string) error {
	return k.Attest(ctx, ref, PredicateSignature, nil)
}

// Attest signs an in-toto statement {subject: ref's digest, predicateType,
// predicate} as a DSSE envelope in a Sigstore bundle and attaches it as a
// referrer of ref. It is idempotent: when a bundle with this predicate type
// is already attached to ref it does nothing, so a re-run stage never
// duplicates attestations.
func (k *Keyless) Attest(ctx context.Context, ref, predicateType string, predicate map[string]any) error {
	ctx, cancel := context.WithTimeout(ctx, SignTimeout)
	defer cancel()
	parsed, err := k.reg.ParseReference(ref)
	if err != nil {
		return err
	}
	d, ok := parsed.(name.Digest)
	if !ok {
		return fmt.Errorf("attest %s: sign by digest, never by tag", ref)
	}
	if done, err := k.attached(ctx, d, predicateType); err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	} else if done {
		k.log.InfoContext(ctx, "already attached", "digest", ref, "predicate_type", predicateType)
		return nil
	}
	payload, err := statement(d, predicateType, predicate)
	if err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	}
	token, err := k.tokens.Token(ctx)
	if err != nil {
		return fmt.Errorf("attest %s: %w", ref, err)
	}
	keypair, err := sgsign.NewEphemeralKeypair(nil)
	if err != nil {
		return fmt.Errorf("attest %s: ephemeral key: %w", ref, err)
	}
	bundle, err := cbundle.SignData(ctx, &sgsign.DSSEData{Data: payload, PayloadType: ctypes.IntotoPayloadType},
		keypair, token, k.signing, k.trusted)
	if err != nil {
		return fmt.Errorf("attest %s: sign: %w", ref, err)
	}
	if err := ociremote.WriteAttestationNewBundleFormat(d, bundle, predicateType,
		ociremote.WithRemoteOptions(k.reg.RemoteOptions(ctx)...)); err != nil {
		return fmt.Errorf("attest %s: attach: %w", ref, err)
	}
	k.log.InfoContext(ctx, "signed and attached", "digest", ref, "predicate_type", predicateType)
	return nil
}

// attached reports whether a bundle with predicateType is attached to d.
func (k *Keyless) attached(ctx context.Context, d name.Digest, predicateType string) (bool, error) {
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return false, err
	}
	refs, err := k.reg.Referrers(ctx, d, mt)
	if err != nil {
		if registry.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	for _, r := range refs {
		if r.Annotations["dev.sigstore.bundle.predicateType"] == predicateType {
			return true, nil
		}
	}
	return false, nil
}

func statement(d name.Digest, predicateType string, predicate map[string]any) ([]byte, error) {
	alg, hex, ok := strings.Cut(d.DigestStr(), ":")
	if !ok {
		return nil, fmt.Errorf("digest %q", d.DigestStr())
	}
	st := &intotov1.Statement{
		Type:          intotov1.StatementTypeUri,
		Subject:       []*intotov1.ResourceDescriptor{{Name: d.Context().String(), Digest: map[string]string{alg: hex}}},
		PredicateType: predicateType,
	}
	if predicate != nil {
		p, err := structpb.NewStruct(predicate)
		if err != nil {
			return nil, fmt.Errorf("predicate: %w", err)
		}
		st.Predicate = p
	}
	return protojson.Marshal(st)
}
