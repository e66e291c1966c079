// Package attest is attestd's attestation vocabulary: predicate types and the
// in-toto Statement v1 that wraps every document attestd signs. It imports
// nothing of attestd.
package attest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// StatementType is in-toto Statement v1.
const StatementType = "https://in-toto.io/Statement/v1"

// Predicate types attestd signs (and the stock cosign CLI verifies with
// `verify-attestation --type <type>`).
const (
	PredicateSignature  = "https://sigstore.dev/cosign/sign/v1" // image signature (bundle format)
	PredicateSPDX       = "https://spdx.dev/Document"           // cosign --type spdxjson
	PredicateCycloneDX  = "https://cyclonedx.org/bom"           // cosign --type cyclonedx
	PredicateSLSA1      = "https://slsa.dev/provenance/v1"      // cosign --type slsaprovenance1
	PredicateHardening  = "https://attestd.dev/attestation/hardening/v1"
	PredicateVulnCosign = "https://cosign.sigstore.dev/attestation/vuln/v1" // cosign --type vuln
)

// DocumentRefType is the predicate type of a document-ref attestation for a
// document kind ("spdx", "cyclonedx"): it points at a document too large to
// sign inline (above signing.max_payload), stored as its own OCI artifact
// referring to the image; the predicate is a DocumentRef. One type per kind,
// so each kind is attached (and deduplicated) on its own.
func DocumentRefType(kind string) string {
	return "https://attestd.dev/attestation/document-ref/" + kind + "/v1"
}

// DocumentRef is the predicate of PredicateDocumentRef: the signed
// statement carries the digest of the document, so verifying the statement
// and checking the artifact's digest verifies the document.
type DocumentRef struct {
	PredicateType string `json:"predicateType"` // what the document would have been attested as
	MediaType     string `json:"mediaType"`
	Digest        string `json:"digest"` // sha256 of the document bytes (= the artifact's layer)
	Size          int64  `json:"size"`
	URI           string `json:"uri"` // oci://host/repo@sha256:… of the artifact manifest
}

// Subject is what a statement is about: an image by digest.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// statementHead is a statement without its predicate, which comes last.
type statementHead struct {
	Type          string    `json:"_type"`
	Subject       []Subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
}

type statement struct {
	statementHead
	Predicate json.RawMessage `json:"predicate"`
}

// Statement wraps predicate (a JSON object, compacted, nothing else
// changed) in an in-toto Statement v1 about name@digest. Predicates are
// megabytes (SBOMs): the predicate is checked and compacted in one pass
// and appended, not marshalled again.
func Statement(name, digest, predicateType string, predicate []byte) ([]byte, error) {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hex) != 64 {
		return nil, fmt.Errorf("statement: digest %q is not sha256:<64 hex>", digest)
	}
	if predicateType == "" {
		return nil, fmt.Errorf("statement: no predicate type")
	}
	p := bytes.TrimSpace(predicate)
	if len(p) == 0 {
		p = []byte("{}")
	}
	head, err := json.Marshal(statementHead{StatementType, []Subject{{Name: name, Digest: map[string]string{alg: hex}}}, predicateType})
	if err != nil {
		return nil, err
	}
	out := bytes.NewBuffer(make([]byte, 0, len(head)+len(p)+16))
	out.Write(head[:len(head)-1]) // without its closing brace
	out.WriteString(`,"predicate":`)
	if p[0] != '{' || json.Compact(out, p) != nil {
		return nil, fmt.Errorf("statement: the %s predicate is not a JSON object", predicateType)
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// ParseStatement reads a statement's predicate type and subject digests.
func ParseStatement(b []byte) (predicateType string, digests []string, err error) {
	var st statement
	if err := json.Unmarshal(b, &st); err != nil {
		return "", nil, fmt.Errorf("statement: %w", err)
	}
	if st.Type != StatementType {
		return "", nil, fmt.Errorf("statement: _type %q, want %s", st.Type, StatementType)
	}
	for _, s := range st.Subject {
		for alg, h := range s.Digest {
			digests = append(digests, alg+":"+h)
		}
	}
	return st.PredicateType, digests, nil
}
