package vuln

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// Read is what a policy may use of a vuln/v1 predicate attestd wrote.
type Read struct {
	Counts     Counts
	Suppressed []Suppression
	// Findings are "ID package@version", sorted and unique (Report.Findings).
	Findings []string
	DB       string // the database's URI (grype-db:<digest>…)
	Finished time.Time
}

// ReadPredicate reads a vuln/v1 predicate written by Report.Predicate. One
// without attestd's counts (another scanner's) or without a finish time
// is refused: the gate must not guess at counts or at a scan's age.
func ReadPredicate(pred []byte) (*Read, error) {
	var p struct {
		Invocation struct {
			Parameters struct {
				Counts     Counts        `json:"counts"`
				Suppressed []Suppression `json:"suppressed"`
			} `json:"parameters"`
		} `json:"invocation"`
		Scanner struct {
			DB struct {
				URI string `json:"uri"`
			} `json:"db"`
			Result struct {
				Matches []struct {
					Vulnerability struct {
						ID string `json:"id"`
					} `json:"vulnerability"`
					Artifact struct {
						Name    string `json:"name"`
						Version string `json:"version"`
					} `json:"artifact"`
				} `json:"matches"`
			} `json:"result"`
		} `json:"scanner"`
		Metadata struct {
			ScanFinishedOn time.Time `json:"scanFinishedOn"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(pred, &p); err != nil {
		return nil, fmt.Errorf("vuln predicate: %w", err)
	}
	r := &Read{Counts: p.Invocation.Parameters.Counts, Suppressed: p.Invocation.Parameters.Suppressed,
		DB: p.Scanner.DB.URI, Finished: p.Metadata.ScanFinishedOn, Findings: []string{}}
	switch {
	case r.Counts.UnknownAs == "":
		return nil, errors.New("vuln predicate: no counts in invocation.parameters (not written by attestd?)")
	case r.Finished.IsZero():
		return nil, errors.New("vuln predicate: no metadata.scanFinishedOn")
	}
	for _, m := range p.Scanner.Result.Matches {
		r.Findings = append(r.Findings, m.Vulnerability.ID+" "+m.Artifact.Name+"@"+m.Artifact.Version)
	}
	slices.Sort(r.Findings)
	r.Findings = slices.Compact(r.Findings)
	return r, nil
}
