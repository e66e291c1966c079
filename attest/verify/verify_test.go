package verify

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	in_toto "github.com/in-toto/attestation/go/v1"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

const (
	issuer = "https://issuer.example.test"
	signer = "attestd@example.test"
)

func statement(t *testing.T, digest, predicateType string) []byte {
	t.Helper()
	b, _ := json.Marshal(map[string]any{
		"_type": "https://in-toto.io/Statement/v1", "predicateType": predicateType,
		"subject":   []map[string]any{{"name": "r.example/app", "digest": map[string]string{"sha256": strings.TrimPrefix(digest, "sha256:")}}},
		"predicate": map[string]any{"x": 1},
	})
	return b
}

func TestEntities(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	other := "sha256:" + strings.Repeat("cd", 32)
	attest := func(id, iss, dgst, pt string) sgverify.SignedEntity {
		e, err := vs.Attest(id, iss, statement(t, dgst, pt))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	good := attest(signer, issuer, digest, "https://slsa.dev/provenance/v1")
	sig := attest(signer, issuer, digest, "https://sigstore.dev/cosign/sign/v1")
	wrongSigner := attest("mallory@example.test", issuer, digest, "https://spdx.dev/Document")
	wrongIssuer := attest(signer, "https://evil.example", digest, "https://cyclonedx.org/bom")
	otherDigest := attest(signer, issuer, other, "https://example.test/vuln")

	v, err := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{TransparencyLog: 1, SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Entities(digest, []sgverify.SignedEntity{good, sig, wrongSigner, wrongIssuer, otherDigest}, []string{"good", "sig", "wrong-signer", "wrong-issuer", "other-digest"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"https://sigstore.dev/cosign/sign/v1", "https://slsa.dev/provenance/v1"}, res.PredicateTypes()); diff != "" {
		t.Errorf("verified (-want +got):\n%s", diff)
	}
	var rejected []string
	for _, r := range res.Rejected {
		rejected = append(rejected, r.Bundle)
	}
	if diff := cmp.Diff([]string{"wrong-signer", "wrong-issuer", "other-digest"}, rejected); diff != "" {
		t.Errorf("rejected (-want +got):\n%s", diff)
	}
	if ev := res.Verified["https://slsa.dev/provenance/v1"]; ev.Subject != signer {
		t.Errorf("evidence = %+v", ev)
	}

	// A regex identity accepts the wrong-signer's sibling only when it matches.
	vr, err := New(vs, []Identity{{Issuer: issuer, SubjectRegex: `^.*@example\.test$`}}, nil, Options{TransparencyLog: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, _ = vr.Entities(digest, []sgverify.SignedEntity{wrongSigner}, nil)
	if _, ok := res.Verified["https://spdx.dev/Document"]; !ok {
		t.Errorf("regex identity did not match: %+v", res.Rejected)
	}

	// Trust material of another Sigstore: nothing verifies.
	vs2, _ := ca.NewVirtualSigstore()
	v2, _ := New(vs2, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{TransparencyLog: 1})
	res, _ = v2.Entities(digest, []sgverify.SignedEntity{good}, nil)
	if len(res.Verified) != 0 {
		t.Errorf("verified against foreign trust material: %+v", res.Verified)
	}
}

func TestNewFailsClosed(t *testing.T) {
	t.Parallel()
	vs, _ := ca.NewVirtualSigstore()
	for name, tc := range map[string]struct {
		ids []Identity
		o   Options
	}{
		"no identities": {nil, Options{TransparencyLog: 1}},
		"no time proof": {[]Identity{{Issuer: issuer, Subject: signer}}, Options{}},
		"bad regex":     {[]Identity{{Issuer: issuer, SubjectRegex: "("}}, Options{TransparencyLog: 1}},
	} {
		if _, err := New(vs, tc.ids, nil, tc.o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	v, _ := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{TransparencyLog: 1})
	for _, d := range []string{"", "sha256:12", "md5:" + strings.Repeat("a", 32), fmt.Sprintf("sha256:%064d", 0)[:70]} {
		if _, err := v.Entities(d, nil, nil); err == nil {
			t.Errorf("digest %q accepted", d)
		}
	}
}

// A signer allowed for some predicate types never supplies another type's
// facts: its bundle of that type is rejected with the reason, not counted.
func TestSignerLimitedToItsTypes(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	const (
		ci   = "ci@example.test"
		vuln = "https://cosign.sigstore.dev/attestation/vuln/v1"
		prov = "https://slsa.dev/provenance/v1"
	)
	digest := "sha256:" + strings.Repeat("ab", 32)
	attest := func(id, pt string) sgverify.SignedEntity {
		e, err := vs.Attest(id, issuer, statement(t, digest, pt))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	v, err := New(vs, []Identity{
		{Issuer: issuer, Subject: signer},
		{Issuer: issuer, Subject: ci, Types: []string{"https://sigstore.dev/cosign/sign/v1", prov}},
	}, nil, Options{TransparencyLog: 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Entities(digest, []sgverify.SignedEntity{attest(ci, vuln), attest(ci, prov), attest(signer, vuln)},
		[]string{"ci-vuln", "ci-provenance", "attestd-vuln"})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.All[vuln]; len(got) != 1 || got[0].Bundle != "attestd-vuln" {
		t.Errorf("vuln evidence = %+v, want only attestd's", got)
	}
	if got := res.All[prov]; len(got) != 1 || got[0].Subject != ci {
		t.Errorf("provenance evidence = %+v, want the CI identity's", got)
	}
	if len(res.Rejected) != 1 || res.Rejected[0].Bundle != "ci-vuln" || !strings.Contains(res.Rejected[0].Reason, "may not sign "+vuln) {
		t.Errorf("rejected = %+v, want ci-vuln: may not sign", res.Rejected)
	}
}

// TestPredicateAsSigned: the evidence carries the predicate as signed
// (numbers exact), and a statement that names its predicate twice, or in
// another case, is rejected (so the one read is the one verified).
func TestPredicateAsSigned(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	stmt := func(predicates string) string {
		return `{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"x","digest":{"sha256":"` + strings.Repeat("ab", 32) +
			`"}}],"predicateType":"https://example.test/p",` + predicates + `}`
	}
	v, err := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{TransparencyLog: 1, SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		payload string
		want    string // "" : rejected
	}{
		"as signed":  {stmt(`"predicate":{"n":9007199254740993,"s":"a"}`), `{"n":9007199254740993,"s":"a"}`},
		"twice":      {stmt(`"predicate":{"pass":false},"predicate":{"pass":true}`), ""},
		"other case": {stmt(`"predicate":{"pass":false},"PREDICATE":{"pass":true}`), ""},
	} {
		e, err := vs.Attest(signer, issuer, []byte(tc.payload))
		if err != nil {
			t.Fatal(err)
		}
		res, err := v.Entities(digest, []sgverify.SignedEntity{e}, []string{name})
		if err != nil {
			t.Fatal(err)
		}
		ev, ok := res.Verified["https://example.test/p"]
		switch {
		case tc.want == "" && ok:
			t.Errorf("%s: verified with predicate %s, want rejected", name, ev.Predicate)
		case tc.want != "" && (!ok || string(ev.Predicate) != tc.want):
			t.Errorf("%s: predicate %s (verified %v), want %s", name, ev.Predicate, ok, tc.want)
		}
	}
}

// countingEntity counts how often its statement is parsed.
type countingEntity struct {
	sgverify.SignedEntity
	parses *int
}

func (c countingEntity) SignatureContent() (sgverify.SignatureContent, error) {
	sc, err := c.SignedEntity.SignatureContent()
	if err != nil {
		return nil, err
	}
	return countingContent{sc, c.parses}, nil
}

type countingContent struct {
	sgverify.SignatureContent
	parses *int
}

func (c countingContent) EnvelopeContent() sgverify.EnvelopeContent {
	return countingEnvelope{c.SignatureContent.EnvelopeContent(), c.parses}
}

type countingEnvelope struct {
	sgverify.EnvelopeContent
	parses *int
}

func (c countingEnvelope) Statement() (*in_toto.Statement, error) {
	*c.parses++
	return c.EnvelopeContent.Statement()
}

// TestStatementParsedOnce: sigstore-go asks for the statement twice per
// verification (subject check, result); the megabytes of an SBOM are parsed
// once, and the verdict is the same.
func TestStatementParsedOnce(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	e, err := vs.Attest(signer, issuer, statement(t, digest, "https://spdx.dev/Document"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(vs, []Identity{{Issuer: issuer, Subject: signer}}, nil, Options{TransparencyLog: 1, SignedTimestamps: 1})
	if err != nil {
		t.Fatal(err)
	}
	var parses int
	res, err := v.Entities(digest, []sgverify.SignedEntity{countingEntity{e, &parses}}, []string{"sbom"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Verified["https://spdx.dev/Document"]; !ok || parses != 1 {
		t.Fatalf("verified %v, statement parsed %d times (want once): %+v", ok, parses, res.Rejected)
	}
}
