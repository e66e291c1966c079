package verify

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	ctypes "github.com/sigstore/cosign/v2/pkg/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
)

// classicLayer is one layer of cosign's classic layout: a signature
// (sha256-<hex>.sig: a simple-signing payload, its raw signature from the
// annotation) or an attestation (sha256-<hex>.att: a DSSE envelope, which
// holds its own signature).
type classicLayer struct {
	label       string
	tag         *ClassicTag // the tag image the layer is in
	attestation bool
	payload     []byte // simple-signing JSON, or the DSSE envelope JSON
	signature   []byte // raw signature (signatures only)
	cert        []byte // DER leaf certificate (none: a key-pair signature)
	timestamp   []byte // RFC 3161 response (none: no signed time)
}

// entity turns the layer into a sigstore-go entity, as a v0.3 bundle would
// carry it. cosign timestamps a classic attestation's whole envelope (not the
// DSSE signature, as bundles do): the entity presents those bytes to the
// timestamp check.
func (l classicLayer) entity() (entity, error) {
	if l.cert == nil {
		return entity{}, errors.New("no certificate: a key-pair signature (attestd verifies keyless identities)")
	}
	vm := &protobundle.VerificationMaterial{
		Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: l.cert}},
	}
	if l.timestamp != nil {
		vm.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: l.timestamp}},
		}
	}
	mt, err := sgbundle.MediaTypeString("0.3")
	if err != nil {
		return entity{}, err
	}
	pb := &protobundle.Bundle{MediaType: mt, VerificationMaterial: vm}
	if l.attestation {
		var env struct {
			PayloadType string `json:"payloadType"`
			Payload     string `json:"payload"`
			Signatures  []struct {
				KeyID string `json:"keyid"`
				Sig   string `json:"sig"`
			} `json:"signatures"`
		}
		if err := json.Unmarshal(l.payload, &env); err != nil {
			return entity{}, fmt.Errorf("attestation layer is not a DSSE envelope: %w", err)
		}
		payload, err := base64.StdEncoding.DecodeString(env.Payload)
		if err != nil {
			return entity{}, fmt.Errorf("DSSE payload: %w", err)
		}
		d := &protodsse.Envelope{Payload: payload, PayloadType: env.PayloadType}
		for _, s := range env.Signatures {
			sig, err := base64.StdEncoding.DecodeString(s.Sig)
			if err != nil {
				return entity{}, fmt.Errorf("DSSE signature: %w", err)
			}
			d.Signatures = append(d.Signatures, &protodsse.Signature{Sig: sig, Keyid: s.KeyID})
		}
		pb.Content = &protobundle.Bundle_DsseEnvelope{DsseEnvelope: d}
	} else {
		sum := sha256.Sum256(l.payload)
		pb.Content = &protobundle.Bundle_MessageSignature{MessageSignature: &protocommon.MessageSignature{
			MessageDigest: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: sum[:]},
			Signature:     l.signature,
		}}
	}
	b, err := sgbundle.NewBundle(pb)
	if err != nil {
		return entity{}, err
	}
	e := entity{SignedEntity: b, label: l.label, classic: l.tag}
	if l.attestation {
		e.SignedEntity = timestampedEnvelope{Bundle: b, covered: l.payload}
	} else {
		e.simpleSigning = l.payload
	}
	return e, nil
}

// timestampedEnvelope is a classic attestation: its RFC 3161 timestamp
// covers the envelope JSON.
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

// Signature is what the timestamp (and a log entry, which classic
// attestations written by attestd do not have) was made over.
func (c coveredSignature) Signature() []byte { return c.covered }

// namesDigest reports whether a simple-signing payload is a cosign
// signature of digest.
func namesDigest(payload []byte, digest string) error {
	var ss sigpayload.SimpleContainerImage
	if err := json.Unmarshal(payload, &ss); err != nil {
		return fmt.Errorf("signed payload: %w", err)
	}
	if ss.Critical.Type != sigpayload.CosignSignatureType {
		return fmt.Errorf("signed payload is a %q, not a %q", ss.Critical.Type, sigpayload.CosignSignatureType)
	}
	if ss.Critical.Image.DockerManifestDigest != digest {
		return fmt.Errorf("signed payload names %s, not %s", ss.Critical.Image.DockerManifestDigest, digest)
	}
	return nil
}

// errClassicFlooded: a classic tag lists more layers than attestd reads.
var errClassicFlooded = errors.New("too many classic signatures")

// classic reads d's classic signatures and attestations (the
// sha256-<hex>.sig and .att images; absent tags are no error). A layer that
// cannot be read is a rejection.
func (v *Verifier) classic(ctx context.Context, d name.Digest) ([]entity, []Rejection, []ClassicTag, error) {
	sigTag, err := ociremote.SignatureTag(d)
	if err != nil {
		return nil, nil, nil, err
	}
	attTag, err := ociremote.AttestationTag(d)
	if err != nil {
		return nil, nil, nil, err
	}
	var ents []entity
	var bad []Rejection
	var tags []ClassicTag
	var total int64 // declared bytes read so far, both tags
	for _, tag := range []name.Tag{sigTag, attTag} {
		sigs, err := ociremote.Signatures(tag, ociremote.WithRemoteOptions(v.reg.RemoteOptions(ctx)...))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", tag, err)
		}
		list, err := sigs.Get()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", tag, err)
		}
		if len(list) == 0 {
			continue // no such tag (or an empty image: nothing to verify or copy)
		}
		md, err := sigs.Digest()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", tag, err)
		}
		// Whoever can push to staging can write these tags: their layers
		// are bounded like bundles, by the sizes the manifest declares,
		// before any is read (and each read is checked against its size).
		m, err := sigs.Manifest()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", tag, err)
		}
		if int64(len(m.Layers)) > v.maxBundles || len(m.Layers) != len(list) {
			return nil, nil, nil, fmt.Errorf("%w: %s lists %d layers, attestd verifies at most %d per subject and reads none of them: delete the tag from the registry",
				errClassicFlooded, tag, len(m.Layers), v.maxBundles)
		}
		ct := &ClassicTag{Tag: tag.TagStr(), Manifest: md.String()}
		for i, s := range list {
			l := classicLayer{label: fmt.Sprintf("%s[%d]", tag.TagStr(), i), attestation: tag == attTag, tag: ct}
			if size := m.Layers[i].Size; size < 0 || size > min(v.maxBundle, v.maxBundlesTotal-total) {
				ct.Layers = append(ct.Layers, m.Layers[i].Digest.String())
				bad = append(bad, Rejection{Bundle: m.Layers[i].Digest.String(), Reason: fmt.Sprintf(
					"layer of %d bytes: over the %d bytes read per signature, or the %d per digest; not read", size, v.maxBundle, v.maxBundlesTotal)})
				continue
			}
			total += m.Layers[i].Size
			e, err := func() (entity, error) {
				if dg, err := s.Digest(); err == nil {
					l.label = dg.String()
				}
				ct.Layers = append(ct.Layers, l.label)
				if l.payload, err = s.Payload(); err != nil {
					return entity{}, err
				}
				if !l.attestation {
					b64, err := s.Base64Signature()
					if err != nil {
						return entity{}, err
					}
					if l.signature, err = base64.StdEncoding.DecodeString(b64); err != nil {
						return entity{}, fmt.Errorf("signature annotation: %w", err)
					}
				}
				cert, err := s.Cert()
				if err != nil {
					return entity{}, fmt.Errorf("certificate annotation: %w", err)
				}
				if cert != nil {
					l.cert = cert.Raw
				}
				ts, err := s.RFC3161Timestamp()
				if err != nil {
					return entity{}, fmt.Errorf("timestamp annotation: %w", err)
				}
				if ts != nil {
					l.timestamp = ts.SignedRFC3161Timestamp
				}
				return l.entity()
			}()
			if err != nil {
				bad = append(bad, Rejection{Bundle: l.label, Reason: err.Error()})
				continue
			}
			ents = append(ents, e)
		}
		tags = append(tags, *ct)
	}
	return ents, bad, tags, nil
}

// ClassicTag is one of cosign's classic tags of a digest as it was read:
// the manifest the tag pointed at and every layer in it (verified or not).
type ClassicTag struct {
	Tag      string   // sha256-<hex>.sig or .att
	Manifest string   // sha256:… of the tag's manifest when it was read
	Layers   []string // sha256:… of each layer, in order
}

// signaturePredicate is the predicate type a verified classic image
// signature counts as: the one bundle-format signatures carry.
const signaturePredicate = ctypes.CosignSignPredicateType
