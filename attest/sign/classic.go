package sign

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/attestd/attestd/store/registry"
)

// Format is how signatures and attestations are stored in the registry.
type Format string

const (
	// FormatBundle stores Sigstore bundles as OCI referrers (cosign's tag
	// fallback index where the registry lacks the API): what
	// `cosign sign/attest --new-bundle-format` writes. The default.
	FormatBundle Format = "bundle"
	// FormatClassic is cosign's classic layout: the image signature (a
	// simple-signing payload) under the sha256-<hex>.sig tag, attestations
	// (DSSE envelopes) under sha256-<hex>.att, the certificate and the
	// RFC 3161 timestamp in layer annotations: what `cosign sign` and
	// `cosign attest` write without --new-bundle-format, and what older
	// verifiers (policy-controller, Kyverno's cosign v1 path) read.
	FormatClassic Format = "classic"
)

// ErrOtherFormat reports an image that already carries signatures in the
// other format. cosign reads only bundles once an image has any, so writing
// classic signatures beside bundles (or bundles beside classic signatures)
// would hide one set from it: attestd never mixes the two on one image.
var ErrOtherFormat = errors.New("the image already carries signatures in the other format")

// WithFormat returns a copy of k that writes f. The classic format is
// written with RFC 3161 timestamps as the proof of time: Rekor v2 takes only
// bundles, and attestd does not implement Rekor v1's classic entry types,
// so a signing config naming a Rekor log is refused rather than silently
// not logged.
func (k *Keyless) WithFormat(f Format) (*Keyless, error) {
	c := *k
	switch f {
	case "", FormatBundle:
		c.classic = false
	case FormatClassic:
		if len(k.opts.TransparencyLogs) > 0 {
			return nil, errors.New("signing format classic: the signing config names a Rekor log, but attestd writes classic signatures " +
				"with RFC 3161 timestamps only (Rekor v2 accepts only the bundle format): use a signing config without Rekor, or format bundle")
		}
		if len(k.opts.TimestampAuthorities) == 0 {
			return nil, errors.New("signing format classic needs a timestamp authority in the signing config: " +
				"nothing else would prove when a signature was made once its certificate expired")
		}
		c.classic = true
	default:
		return nil, fmt.Errorf("signing format %q: want %q or %q", f, FormatBundle, FormatClassic)
	}
	return &c, nil
}

// checkFormat refuses to attach to d in one format when d carries
// signatures in the other (once per subject and session).
func (s *Session) checkFormat(ctx context.Context, d name.Digest) error {
	st := s.subject(d)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.formatChecked {
		return nil
	}
	if s.k.classic {
		bs, err := s.k.bundles(ctx, d)
		if err != nil {
			return err
		}
		if len(bs) > 0 {
			return fmt.Errorf("%s: %w: %d Sigstore bundle(s) are attached, and signing.format is classic; "+
				"keep format bundle for this image or remove its bundles", d, ErrOtherFormat, len(bs))
		}
	} else {
		sig, att, err := classicTags(d)
		if err != nil {
			return err
		}
		for _, tag := range []name.Tag{sig, att} {
			_, _, err := s.k.reg.Resolve(ctx, tag)
			if err == nil {
				return fmt.Errorf("%s: %w: classic cosign signatures are attached (%s), and signing.format is bundle; "+
					"set signing.format: classic for such images or remove the tag", d, ErrOtherFormat, tag.TagStr())
			}
			if !registry.IsNotFound(err) {
				return err
			}
		}
	}
	st.formatChecked = true
	return nil
}

// classicTags are d's signature and attestation tags, named by cosign
// itself (sha256-<hex>.sig, .att in d's repository; no network for a digest).
func classicTags(d name.Digest) (sig, att name.Tag, err error) {
	if sig, err = ociremote.SignatureTag(d); err != nil {
		return sig, att, err
	}
	att, err = ociremote.AttestationTag(d)
	return sig, att, err
}

// classicLayers reads the signatures image under tag (empty when the tag
// does not exist).
func (k *Keyless) classicLayers(ctx context.Context, tag name.Tag) (oci.Signatures, []oci.Signature, error) {
	sigs, err := ociremote.Signatures(tag, ociremote.WithRemoteOptions(k.reg.RemoteOptions(ctx)...))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", tag, err)
	}
	list, err := sigs.Get()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", tag, err)
	}
	return sigs, list, nil
}

// signsDigest reports whether a classic signature layer's payload names d.
func signsDigest(l oci.Signature, d name.Digest) bool {
	p, err := l.Payload()
	if err != nil {
		return false
	}
	var ss sigpayload.SimpleContainerImage
	if json.Unmarshal(p, &ss) != nil {
		return false
	}
	return ss.Critical.Type == sigpayload.CosignSignatureType && ss.Critical.Image.DockerManifestDigest == d.DigestStr()
}

// attestsPayload reports whether a classic attestation layer is a DSSE
// envelope of predicateType whose payload hashes to payloadSHA256.
func attestsPayload(l oci.Signature, predicateType, payloadSHA256 string) bool {
	ann, err := l.Annotations()
	if err != nil || ann["predicateType"] != predicateType {
		return false
	}
	raw, err := l.Payload()
	if err != nil {
		return false
	}
	var env dsse.Envelope
	if json.Unmarshal(raw, &env) != nil {
		return false
	}
	p, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return false
	}
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:]) == payloadSHA256
}

// signClassic signs d's simple-signing payload and appends it to the
// sha256-<hex>.sig image, unless a signature of d by our signer is there
// already.
func (s *Session) signClassic(ctx context.Context, d name.Digest) error {
	payload, err := sigpayload.Cosign{Image: d}.MarshalJSON()
	if err != nil {
		return fmt.Errorf("sign %s: %w", d, err)
	}
	tag, _, err := classicTags(d)
	if err != nil {
		return err
	}
	same := func(l oci.Signature) bool { return signsDigest(l, d) }
	return s.writeClassic(ctx, d, tag, PredicateSignature, false, same, func() (oci.Signature, error) {
		sig, _, err := s.keypair.SignData(ctx, payload)
		if err != nil {
			return nil, err
		}
		opts, err := s.classicMaterial(ctx, sig) // cosign timestamps the raw signature
		if err != nil {
			return nil, err
		}
		return static.NewSignature(payload, base64.StdEncoding.EncodeToString(sig), opts...)
	})
}

// attestClassic signs payload (an in-toto statement) as a DSSE envelope and
// appends it to the sha256-<hex>.att image, unless an envelope of the same
// predicate type and payload by our signer is there already.
func (s *Session) attestClassic(ctx context.Context, d name.Digest, predicateType string, payload []byte) error {
	sum := sha256.Sum256(payload)
	same := func(l oci.Signature) bool { return attestsPayload(l, predicateType, hex.EncodeToString(sum[:])) }
	_, tag, err := classicTags(d)
	if err != nil {
		return err
	}
	return s.writeClassic(ctx, d, tag, predicateType, true, same, func() (oci.Signature, error) {
		sig, _, err := s.keypair.SignData(ctx, dsse.PAE(ctypes.IntotoPayloadType, payload))
		if err != nil {
			return nil, err
		}
		env, err := json.Marshal(dsse.Envelope{PayloadType: ctypes.IntotoPayloadType,
			Payload:    base64.StdEncoding.EncodeToString(payload),
			Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}})
		if err != nil {
			return nil, err
		}
		// cosign attest (classic) timestamps the whole envelope, and cosign
		// verify-attestation checks the timestamp against it.
		opts, err := s.classicMaterial(ctx, env)
		if err != nil {
			return nil, err
		}
		opts = append(opts, static.WithLayerMediaType(ctypes.DssePayloadType),
			static.WithAnnotations(map[string]string{"predicateType": predicateType}))
		return static.NewAttestation(env, opts...)
	})
}

// classicMaterial is the certificate (keyless) and the RFC 3161 timestamp
// over covered, as layer options. A classic layer holds one timestamp: the
// first timestamp authority the signing config selected.
func (s *Session) classicMaterial(ctx context.Context, covered []byte) ([]static.Option, error) {
	var opts []static.Option
	if s.certs != nil {
		der, err := s.certs.GetCertificate(ctx, s.keypair, nil)
		if err != nil {
			return nil, err
		}
		opts = append(opts, static.WithCertChain(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil))
	}
	ts, err := s.k.opts.TimestampAuthorities[0].GetTimestamp(ctx, covered)
	if err != nil {
		return nil, fmt.Errorf("timestamp: %w", err)
	}
	return append(opts, static.WithRFC3161Timestamp(cbundle.TimestampToRFC3161Timestamp(ts))), nil
}

// writeClassic makes a layer with mk and appends it to the image under tag
// — unless ownLayer finds an equal one of ours there (same accepts it, and
// it verifies for our signer), before signing or (re-read under the
// subject's lock) before writing: a retried job adds nothing.
func (s *Session) writeClassic(ctx context.Context, d name.Digest, tag name.Tag, predicateType string, attestation bool,
	same func(oci.Signature) bool, mk func() (oci.Signature, error)) error {
	_, list, err := s.k.classicLayers(ctx, tag)
	if err != nil {
		return err
	}
	if found, err := s.ownLayer(ctx, d, list, attestation, same, true); err != nil {
		return err
	} else if found {
		s.k.log.InfoContext(ctx, "already attached", "digest", d.String(), "predicate_type", predicateType, "format", "classic")
		return nil
	}
	layer, err := mk()
	if err != nil {
		return fmt.Errorf("sign %s (%s): %w", d, predicateType, err)
	}
	st := s.subject(d)
	st.attach.Lock()
	defer st.attach.Unlock()
	base, list, err := s.k.classicLayers(ctx, tag)
	if err != nil {
		return err
	}
	if found, err := s.ownLayer(ctx, d, list, attestation, same, false); err != nil || found {
		return err
	}
	next, err := mutate.AppendSignatures(base, false, layer)
	if err != nil {
		return fmt.Errorf("attach %s (%s): %w", d, predicateType, err)
	}
	if err := remote.Write(tag, next, s.reg.RemoteOptions(ctx)...); err != nil {
		return fmt.Errorf("attach %s (%s) to %s: %w", d, predicateType, tag.TagStr(), err)
	}
	ldig, err := layer.Digest()
	if err != nil {
		return err
	}
	s.record(ctx, Written{Subject: d.DigestStr(), PredicateType: predicateType, Bundle: ldig.String(), Timestamps: 1})
	return nil
}

// ownLayer reports whether list holds a layer that same accepts and that
// verifies for our signer (ownCheck). A layer same accepts that does not
// verify is ignored — anyone who can write to the registry can append one
// with our payload, to suppress signing — and logged when logIt.
func (s *Session) ownLayer(ctx context.Context, d name.Digest, list []oci.Signature, attestation bool,
	same func(oci.Signature) bool, logIt bool) (bool, error) {
	var check *ownCheck
	for _, l := range list {
		if !same(l) {
			continue
		}
		if check == nil {
			var err error
			if check, err = s.ownCheck(ctx); err != nil {
				return false, err
			}
		}
		if _, err := check.classic(l, d, attestation); err != nil {
			if logIt {
				s.k.log.InfoContext(ctx, "attached classic layer does not verify for our identity, signing anew",
					"digest", d.String(), "referrer", layerDigest(l), "reason", err.Error(), "format", "classic")
			}
			continue
		}
		return true, nil
	}
	return false, nil
}

func layerDigest(l oci.Signature) string {
	h, err := l.Digest()
	if err != nil {
		return ""
	}
	return h.String()
}

// classicTypes lists the predicate types of want attached to d in the
// classic layout by our signer: the signature predicate type when a
// signature of ours names d, and the predicate type of each attestation of
// ours (its annotation and its verified statement agreeing).
func (s *Session) classicTypes(ctx context.Context, d name.Digest, want []string) (map[string]bool, error) {
	have := map[string]bool{}
	sigTag, attTag, err := classicTags(d)
	if err != nil {
		return nil, err
	}
	if slices.Contains(want, PredicateSignature) {
		_, sigs, err := s.k.classicLayers(ctx, sigTag)
		if err != nil {
			return nil, err
		}
		found, err := s.ownLayer(ctx, d, sigs, false, func(l oci.Signature) bool { return signsDigest(l, d) }, false)
		if err != nil {
			return nil, err
		}
		have[PredicateSignature] = found
	}
	_, atts, err := s.k.classicLayers(ctx, attTag)
	if err != nil {
		return nil, err
	}
	var check *ownCheck
	for _, l := range atts {
		ann, err := l.Annotations()
		if err != nil {
			continue
		}
		pt := ann["predicateType"]
		if pt == "" || have[pt] || !slices.Contains(want, pt) {
			continue
		}
		if check == nil {
			if check, err = s.ownCheck(ctx); err != nil {
				return nil, err
			}
		}
		res, err := check.classic(l, d, true)
		if err == nil && res.Statement.GetPredicateType() != pt {
			err = fmt.Errorf("the statement is a %s", res.Statement.GetPredicateType())
		}
		if err != nil {
			s.k.log.InfoContext(ctx, "attached classic layer does not verify for our identity, not counted",
				"digest", d.String(), "referrer", layerDigest(l), "predicate_type", pt, "reason", err.Error(), "format", "classic")
			continue
		}
		have[pt] = true
	}
	return have, nil
}
