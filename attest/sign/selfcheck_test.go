package sign

import (
	"testing"

	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// TestSelfCheckSkipsOnlyTheParse: the check after signing still refuses a
// bundle whose signature does not cover its payload, and no longer parses
// the statement (a payload protojson would refuse still passes: the
// signature over its bytes is what the check is for).
func TestSelfCheckSkipsOnlyTheParse(t *testing.T) {
	t.Parallel()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	v, err := sgverify.NewVerifier(vs, sgverify.WithSignedTimestamps(1), sgverify.WithTransparencyLog(1))
	if err != nil {
		t.Fatal(err)
	}
	notAStatement, err := vs.Attest("attestd@example.test", "https://issuer.example.test", []byte(`{"noSuchField": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkUnparsed(v, notAStatement); err != nil {
		t.Fatalf("statement parsed (or signature refused): %v", err)
	}
	if _, err := v.Verify(notAStatement, sgverify.NewPolicy(sgverify.WithoutArtifactUnsafe(), sgverify.WithoutIdentitiesUnsafe())); err == nil {
		t.Fatal("sigstore-go's own check accepted the payload: the test proves nothing")
	}
	other, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Attest("attestd@example.test", "https://issuer.example.test", []byte(`{"_type": "https://in-toto.io/Statement/v1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := checkUnparsed(v, foreign); err == nil {
		t.Fatal("a bundle of other trust material passed the self-check")
	}
}
