package vuln

import (
	"encoding/json"
	"fmt"
	"time"
)

// PredicateType is cosign's vulnerability scan predicate (cosign's
// `--type vuln`).
const PredicateType = "https://cosign.sigstore.dev/attestation/vuln/v1"

// predicate is cosign's vuln/v1 predicate (cosign's
// attestation.CosignVulnPredicate, field for field: only attest/sign and
// attest/verify may import cosign).
type predicate struct {
	Invocation struct {
		Parameters any    `json:"parameters"`
		URI        string `json:"uri"`
		EventID    string `json:"event_id"`
		BuilderID  string `json:"builder.id"`
	} `json:"invocation"`
	Scanner struct {
		URI     string `json:"uri"`
		Version string `json:"version"`
		DB      struct {
			URI     string `json:"uri"`
			Version string `json:"version"`
		} `json:"db"`
		Result any `json:"result"`
	} `json:"scanner"`
	Metadata struct {
		ScanStartedOn  time.Time `json:"scanStartedOn"`
		ScanFinishedOn time.Time `json:"scanFinishedOn"`
	} `json:"metadata"`
}

// Predicate is the cosign vuln/v1 predicate of a report: the scanner and
// database that produced it, grype's JSON report as the result (with the
// suppressed findings and why), and when the scan ran. Parameters carries
// the severity rule attestd gated with and the counts.
func (r *Report) Predicate(invocationURI, eventID, builderID string) ([]byte, error) {
	var p predicate
	p.Invocation.Parameters = map[string]any{"unknownSeverityAs": r.Counts.UnknownAs, "counts": r.Counts, "suppressed": r.Suppressed}
	p.Invocation.URI, p.Invocation.EventID, p.Invocation.BuilderID = invocationURI, eventID, builderID
	p.Scanner.URI, p.Scanner.Version = ScannerURI, GrypeVersion
	p.Scanner.DB.URI, p.Scanner.DB.Version = dbURI(r.DB), r.DB.Schema
	p.Scanner.Result = r.Document
	p.Metadata.ScanStartedOn, p.Metadata.ScanFinishedOn = r.Started, r.Finished
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
