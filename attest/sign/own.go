package sign

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// maxBundleBytes bounds one bundle (or classic layer) read from the registry.
const maxBundleBytes = 64 << 20

// ownCheck decides whether a signature attached to a subject is the
// signer's own, so that re-running a stage neither duplicates it nor — the
// point — trusts what anyone else with write access to the registry put
// there: a bundle with attestd's (deterministic) payload and predicate type
// but someone else's signature, or none, must not stop attestd from signing,
// nor count as attached. Own means: it verifies with sigstore-go against our
// trust material, with the proof of time our signing config produces, as a
// statement about the subject's digest, for our identity — the SAN and OIDC
// issuer of the session's Fulcio certificate, or our public key.
type ownCheck struct {
	v      *sgverify.Verifier
	policy sgverify.PolicyOption // the identity: WithCertificateIdentity or WithKey
	hint   string                // key pair: the key hint classic layers are checked under
}

// ownCheck builds the check for this session. Keyless, it needs the
// session's certificate (one Fulcio request, cached for the session and
// needed to sign anyway).
func (s *Session) ownCheck(ctx context.Context) (*ownCheck, error) {
	c := &ownCheck{}
	tm := s.k.trusted
	if s.k.key != nil {
		// Only our key: whatever key hint a bundle names.
		tm = ownKey{TrustedMaterial: s.k.trusted, key: s.k.pub}
		c.policy = sgverify.WithKey()
		c.hint = string(s.k.key.GetHint())
	} else {
		der, err := s.certs.GetCertificate(ctx, s.keypair, nil)
		if err != nil {
			return nil, err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("our certificate: %w", err)
		}
		sum, err := certificate.SummarizeCertificate(cert)
		if err != nil {
			return nil, fmt.Errorf("our certificate: %w", err)
		}
		// Exact values; NewShortCertificateIdentity refuses empty ones.
		id, err := sgverify.NewShortCertificateIdentity(sum.Issuer, "", sum.SubjectAlternativeName, "")
		if err != nil {
			return nil, fmt.Errorf("our certificate's identity: %w", err)
		}
		c.policy = sgverify.WithCertificateIdentity(id)
	}
	v, err := sgverify.NewVerifier(tm, s.timeProof()...)
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	c.v = v
	return c, nil
}

// timeProof requires what the signer attaches as proof of time, as
// sigstore-go's sign.Bundle checks its own bundles: a signed timestamp from
// each timestamp authority and an entry in each log the signing config
// selected; with logs only, their integrated time for a certificate (a key
// pair's Rekor v2 entry carries no time). Classic layers hold one timestamp
// and no log entry (WithFormat refuses Rekor).
func (s *Session) timeProof() []sgverify.VerifierOption {
	tsas, logs := len(s.k.opts.TimestampAuthorities), len(s.k.opts.TransparencyLogs)
	if s.k.classic {
		tsas, logs = 1, 0
	}
	var o []sgverify.VerifierOption
	if tsas > 0 {
		o = append(o, sgverify.WithSignedTimestamps(tsas))
	}
	if logs > 0 {
		o = append(o, sgverify.WithTransparencyLog(logs))
		if tsas == 0 {
			if s.k.key == nil {
				o = append(o, sgverify.WithIntegratedTimestamps(logs))
			} else {
				o = append(o, sgverify.WithNoObserverTimestamps())
			}
		}
	}
	return o
}

// ownKey is trust material whose only public key is ours.
type ownKey struct {
	root.TrustedMaterial
	key root.TimeConstrainedVerifier
}

func (o ownKey) PublicKeyVerifier(string) (root.TimeConstrainedVerifier, error) { return o.key, nil }

// digestPolicy requires an in-toto statement whose subject names d.
func digestPolicy(d name.Digest) (sgverify.ArtifactPolicyOption, error) {
	alg, hx, _ := strings.Cut(d.DigestStr(), ":")
	raw, err := hex.DecodeString(hx)
	if err != nil || alg == "" {
		return nil, fmt.Errorf("digest %q", d.DigestStr())
	}
	return sgverify.WithArtifactDigest(alg, raw), nil
}

// bundle verifies raw (a bundle's JSON) as ours: a DSSE envelope of an
// in-toto statement about d, signed by us. The result holds the verified
// statement.
func (c *ownCheck) bundle(raw []byte, d name.Digest) (*sgverify.VerificationResult, error) {
	var b sgbundle.Bundle
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	env := b.GetDsseEnvelope()
	if env == nil {
		return nil, errors.New("not a DSSE envelope")
	}
	if env.GetPayloadType() != ctypes.IntotoPayloadType {
		return nil, fmt.Errorf("payload type %q, not %q", env.GetPayloadType(), ctypes.IntotoPayloadType)
	}
	art, err := digestPolicy(d)
	if err != nil {
		return nil, err
	}
	res, err := c.v.Verify(&b, sgverify.NewPolicy(art, c.policy))
	if err != nil {
		return nil, err
	}
	if res.Statement == nil {
		return nil, errors.New("no in-toto statement")
	}
	return res, nil
}

// classic verifies a layer of cosign's classic layout as ours: a signature
// (a simple-signing payload; the caller checks that it names d) or an
// attestation (a DSSE envelope of an in-toto statement about d), each with
// its certificate (keyless) and RFC 3161 timestamp in annotations. The layer
// becomes a v0.3 bundle as attest/verify builds it (which sign may not
// import): a message signature over the payload, or the envelope with the
// timestamp checked against the envelope bytes, which cosign timestamps.
func (c *ownCheck) classic(l oci.Signature, d name.Digest, attestation bool) (*sgverify.VerificationResult, error) {
	size, err := l.Size()
	if err != nil {
		return nil, err
	}
	if size > maxBundleBytes {
		return nil, fmt.Errorf("layer of %d bytes (limit %d)", size, maxBundleBytes)
	}
	payload, err := l.Payload()
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	vm := &protobundle.VerificationMaterial{}
	cert, err := l.Cert()
	if err != nil {
		return nil, fmt.Errorf("certificate annotation: %w", err)
	}
	switch {
	case c.hint != "":
		if cert != nil {
			return nil, errors.New("signed with a certificate, not our key")
		}
		vm.Content = &protobundle.VerificationMaterial_PublicKey{PublicKey: &protocommon.PublicKeyIdentifier{Hint: c.hint}}
	case cert == nil:
		return nil, errors.New("no certificate")
	default:
		vm.Content = &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: cert.Raw}}
	}
	ts, err := l.RFC3161Timestamp()
	if err != nil {
		return nil, fmt.Errorf("timestamp annotation: %w", err)
	}
	if ts != nil {
		vm.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: ts.SignedRFC3161Timestamp}},
		}
	}
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return nil, err
	}
	pb := &protobundle.Bundle{MediaType: mt, VerificationMaterial: vm}
	var art sgverify.ArtifactPolicyOption
	if attestation {
		var env dsse.Envelope
		if err := json.Unmarshal(payload, &env); err != nil {
			return nil, fmt.Errorf("not a DSSE envelope: %w", err)
		}
		if env.PayloadType != ctypes.IntotoPayloadType {
			return nil, fmt.Errorf("payload type %q, not %q", env.PayloadType, ctypes.IntotoPayloadType)
		}
		p, err := base64.StdEncoding.DecodeString(env.Payload)
		if err != nil {
			return nil, fmt.Errorf("DSSE payload: %w", err)
		}
		pe := &protodsse.Envelope{Payload: p, PayloadType: env.PayloadType}
		for _, sg := range env.Signatures {
			sig, err := base64.StdEncoding.DecodeString(sg.Sig)
			if err != nil {
				return nil, fmt.Errorf("DSSE signature: %w", err)
			}
			pe.Signatures = append(pe.Signatures, &protodsse.Signature{Sig: sig, Keyid: sg.KeyID})
		}
		pb.Content = &protobundle.Bundle_DsseEnvelope{DsseEnvelope: pe}
		if art, err = digestPolicy(d); err != nil {
			return nil, err
		}
	} else {
		b64, err := l.Base64Signature()
		if err != nil {
			return nil, err
		}
		sig, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("signature annotation: %w", err)
		}
		sum := sha256.Sum256(payload)
		pb.Content = &protobundle.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{
			MessageDigest: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: sum[:]},
			Signature:     sig,
		}}
		art = sgverify.WithArtifact(bytes.NewReader(payload))
	}
	b, err := sgbundle.NewBundle(pb)
	if err != nil {
		return nil, err
	}
	var ent sgverify.SignedEntity = b
	if attestation {
		ent = timestampedEnvelope{Bundle: b, covered: payload}
	}
	res, err := c.v.Verify(ent, sgverify.NewPolicy(art, c.policy))
	if err != nil {
		return nil, err
	}
	if attestation && res.Statement == nil {
		return nil, errors.New("no in-toto statement")
	}
	return res, nil
}

// timestampedEnvelope is a classic attestation: its RFC 3161 timestamp
// covers the envelope JSON, not the DSSE signature.
type timestampedEnvelope struct {
	*sgbundle.Bundle
	covered []byte
}

func (t timestampedEnvelope) SignatureContent() (sgverify.SignatureContent, error) {
	sc, err := t.Bundle.SignatureContent()
	if err != nil {
		return nil, err
	}
	return coveredSignature{SignatureContent: sc, covered: t.covered}, nil
}

type coveredSignature struct {
	sgverify.SignatureContent
	covered []byte
}

// Signature is what the timestamp was made over.
func (c coveredSignature) Signature() []byte { return c.covered }
