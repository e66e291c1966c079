package vuln

import (
	"encoding/json"
	"fmt"

	"github.com/sigstore/cosign/v2/pkg/cosign/attestation"
)

// PredicateType is cosign's vulnerability scan predicate (cosign's
// `--type vuln`).
const PredicateType = "https://cosign.sigstore.dev/attestation/vuln/v1"

// Predicate is the cosign vuln/v1 predicate of a report: the scanner and
// database that produced it, grype's JSON report as the result (with the
// suppressed findings and why), and when the scan ran. Parameters carries
// the severity rule attestd gated with and the counts.
func (r *Report) Predicate(invocationURI, eventID, builderID string) ([]byte, error) {
	p := attestation.CosignVulnPredicate{
		Invocation: attestation.Invocation{
			Parameters: map[string]any{"unknownSeverityAs": r.Counts.UnknownAs, "counts": r.Counts, "suppressed": r.Suppressed},
			URI:        invocationURI,
			EventID:    eventID,
			BuilderID:  builderID,
		},
		Scanner: attestation.Scanner{
			URI:     ScannerURI,
			Version: GrypeVersion,
			DB:      attestation.DB{URI: dbURI(r.DB), Version: r.DB.Schema},
			Result:  r.Document,
		},
		Metadata: attestation.Metadata{ScanStartedOn: r.Started, ScanFinishedOn: r.Finished},
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("vuln: predicate: %w", err)
	}
	return b, nil
}

// dbURI names the database by content: its digest, where it came from.
func dbURI(st Status) string {
	u := "grype-db:" + st.Digest
	if st.From != "" {
		u += "?from=" + st.From
	}
	return u
}
