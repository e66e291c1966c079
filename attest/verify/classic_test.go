package verify

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
)

// TestClassicLayers: cosign's classic signatures and attestations (as
// `cosign sign` / `cosign attest` without --new-bundle-format lay them out:
// a signature over the simple-signing payload timestamped over the raw
// signature; a DSSE envelope timestamped over the whole envelope) verify
// through the same sigstore-go verifier, and every way they can be wrong is
// a rejection.
func TestClassicLayers(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	other := "sha256:" + strings.Repeat("cd", 32)

	sign := func(identity string, data []byte) (der, sig []byte) {
		t.Helper()
		cert, key, err := vs.GenerateLeafCert(identity, issuer)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		sig, err = ecdsa.SignASN1(rand.Reader, key.(*ecdsa.PrivateKey), sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return cert.Raw, sig
	}
	stamp := func(b []byte) []byte {
		t.Helper()
		ts, err := vs.TimestampResponse(b)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	signature := func(label, identity, dgst string) classicLayer {
		d, _ := name.NewDigest("r.example/app@" + dgst)
		payload, _ := sigpayload.Cosign{Image: d}.MarshalJSON()
		der, sig := sign(identity, payload)
		return classicLayer{label: label, payload: payload, signature: sig, cert: der, timestamp: stamp(sig)}
	}
	// envelopeTimestamped: the classic rule (timestamp over the envelope)
	// or the bundle rule (over the DSSE signature).
	attestation := func(label, identity, dgst, pt string, envelopeTimestamped bool, edit func([]byte) []byte) classicLayer {
		st := statement(t, dgst, pt)
		der, sig := sign(identity, dsse.PAE("application/vnd.in-toto+json", st))
		if edit != nil {
			st = edit(st)
		}
		env, _ := json.Marshal(dsse.Envelope{PayloadType: "application/vnd.in-toto+json", Payload: base64.StdEncoding.EncodeToString(st),
			Signatures: []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}}})
		covered := env
		if !envelopeTimestamped {
			covered = sig
		}
		return classicLayer{label: label, attestation: true, payload: env, cert: der, timestamp: stamp(covered)}
	}

	layers := []classicLayer{
		signature("sig", signer, digest),
		signature("sig-other-digest", signer, other),
		signature("sig-wrong-signer", "mallory@example.test", digest),
		attestation("att", signer, digest, "https://slsa.dev/provenance/v1", true, nil),
		attestation("att-bundle-timestamp", signer, digest, "https://spdx.dev/Document", false, nil),
		attestation("att-tampered", signer, digest, "https://cyclonedx.org/bom", true, func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"x":1`, `"x":2`, 1))
		}),
		attestation("att-other-digest", signer, other, "https://example.test/vuln", true, nil),
	}
	noTimestamp := signature("sig-no-timestamp", signer, digest)
	noTimestamp.timestamp = nil
	keyPair := signature("sig-key-pair", signer, digest)
	keyPair.cert = nil
	layers = append(layers, noTimestamp, keyPair)

	v, err := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	var ents []entity
	var rejected []string
	for _, l := range layers {
		e, err := l.entity()
		if err != nil {
			rejected = append(rejected, l.label)
			continue
		}
		ents = append(ents, e)
	}
	res, err := v.entities(digest, ents)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"https://sigstore.dev/cosign/sign/v1", "https://slsa.dev/provenance/v1"}, res.PredicateTypes()); diff != "" {
		t.Errorf("verified (-want +got):\n%s", diff)
	}
	for _, r := range res.Rejected {
		rejected = append(rejected, r.Bundle)
	}
	want := []string{"sig-key-pair", "sig-other-digest", "sig-wrong-signer", "att-bundle-timestamp", "att-tampered", "att-other-digest", "sig-no-timestamp"}
	if diff := cmp.Diff(want, rejected); diff != "" {
		t.Errorf("rejected (-want +got):\n%s\n%s", diff, fmt.Sprint(res.Rejected))
	}
	if ev := res.Verified["https://sigstore.dev/cosign/sign/v1"]; ev.Subject != signer || ev.Issuer != issuer || ev.Bundle != "sig" {
		t.Errorf("signature evidence = %+v", ev)
	}
	var pred struct{ X int }
	if ev := res.Verified["https://slsa.dev/provenance/v1"]; json.Unmarshal(ev.Predicate, &pred) != nil || pred.X != 1 {
		t.Errorf("attestation predicate = %s", ev.Predicate)
	}
}
