package slsa

import (
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// VSAPredicateType is the SLSA Verification Summary Attestation v1.
const VSAPredicateType = "https://slsa.dev/verification_summary/v1"

// VSA results.
const (
	VSAPassed = "PASSED"
	VSAFailed = "FAILED"
)

// VSAInput is what the gate decided about one digest.
type VSAInput struct {
	VerifierID      string
	VerifierVersion string
	TimeVerified    time.Time
	ResourceURI     string // oci://host/repo@sha256:…
	PolicyURI       string
	PolicyDigest    string // sha256:…
	Inputs          []VSAAttestation
	Passed          bool
	VerifiedLevels  []string
	ValidUntil      time.Time
}

// VSAAttestation is an attestation the decision rested on.
type VSAAttestation struct {
	URI    string // oci://host/repo@sha256:<bundle manifest>
	Digest string // sha256:…
}

type vsaDigestSet map[string]string

type vsaRef struct {
	URI    string       `json:"uri"`
	Digest vsaDigestSet `json:"digest,omitempty"`
}

type vsaPredicate struct {
	Verifier struct {
		ID      string            `json:"id"`
		Version map[string]string `json:"version,omitempty"`
	} `json:"verifier"`
	TimeVerified       time.Time         `json:"timeVerified"`
	ResourceURI        string            `json:"resourceUri"`
	Policy             vsaRef            `json:"policy"`
	InputAttestations  []vsaRef          `json:"inputAttestations"`
	VerificationResult string            `json:"verificationResult"`
	VerifiedLevels     []string          `json:"verifiedLevels"`
	DependencyLevels   map[string]uint64 `json:"dependencyLevels,omitempty"`
	SlsaVersion        string            `json:"slsaVersion"`
	// ValidUntil is attestd's addition (consumers ignore unknown fields):
	// the decision is not to be relied on after it.
	ValidUntil time.Time `json:"attestd.dev/validUntil"`
}

func digestSet(d string) vsaDigestSet {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok {
		return nil
	}
	return vsaDigestSet{alg: hex}
}

// VSAPredicate builds the verification_summary/v1 predicate.
func VSAPredicate(in VSAInput) ([]byte, error) {
	if in.VerifierID == "" || in.ResourceURI == "" || in.PolicyDigest == "" || in.TimeVerified.IsZero() {
		return nil, errors.New("vsa: verifier id, resource URI, policy digest and time are required")
	}
	var p vsaPredicate
	p.Verifier.ID = in.VerifierID
	if in.VerifierVersion != "" {
		p.Verifier.Version = map[string]string{"attestd": in.VerifierVersion}
	}
	p.TimeVerified = in.TimeVerified.UTC()
	p.ResourceURI = in.ResourceURI
	p.Policy = vsaRef{URI: in.PolicyURI, Digest: digestSet(in.PolicyDigest)}
	if p.Policy.URI == "" {
		p.Policy.URI = "attestd:policy/" + in.PolicyDigest
	}
	p.InputAttestations = []vsaRef{}
	for _, a := range in.Inputs {
		p.InputAttestations = append(p.InputAttestations, vsaRef{URI: a.URI, Digest: digestSet(a.Digest)})
	}
	p.VerificationResult = VSAFailed
	if in.Passed {
		p.VerificationResult = VSAPassed
	}
	p.VerifiedLevels = in.VerifiedLevels
	if p.VerifiedLevels == nil {
		p.VerifiedLevels = []string{}
	}
	p.SlsaVersion = "1.0"
	p.ValidUntil = in.ValidUntil.UTC()
	return json.Marshal(p)
}
