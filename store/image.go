package store

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// State is where a digest is in the pipeline (ARCHITECTURE.md, "State machine").
type State string

const (
	StateDiscovered State = "discovered"
	StateAnalysed   State = "analysed"
	StateAttested   State = "attested"
	StateEvaluated  State = "evaluated"
	StatePromoted   State = "promoted"
	StateDenied     State = "denied"
	StateFailed     State = "failed"
)

// Final reports whether no stage will move the record on by itself.
func (s State) Final() bool {
	return s == StatePromoted || s == StateDenied || s == StateFailed
}

// next lists the forward moves of the state machine. Any non-final state may
// also move to failed, and failed may move back to the state it failed in
// (re-drive); see allowed.
var next = map[State][]State{
	StateDiscovered: {StateAnalysed},
	StateAnalysed:   {StateAttested},
	StateAttested:   {StateEvaluated},
	StateEvaluated:  {StatePromoted, StateDenied},
}

func allowed(r *Record, from, to State) bool {
	if from == to {
		return true // annotate (stage results) without moving
	}
	if to == StateFailed {
		return !from.Final()
	}
	if from == StateFailed {
		return to == r.FailedFrom
	}
	for _, s := range next[from] {
		if s == to {
			return true
		}
	}
	return false
}

// StageStatus is the outcome of one pipeline stage for one digest.
type StageStatus string

const (
	StagePassed  StageStatus = "passed"
	StageFailed  StageStatus = "failed"
	StageSkipped StageStatus = "skipped"
)

// StageResult records what a stage did. Detail says why when it did not pass.
type StageResult struct {
	Status StageStatus `json:"status"`
	Detail string      `json:"detail,omitempty"`
	At     time.Time   `json:"at"`
}

// Decision is the promotion gate's verdict for a digest.
type Decision struct {
	Allow   bool     `json:"allow"`
	Reasons []string `json:"reasons,omitempty"`
	// Warnings are violations a warn-mode policy let through.
	Warnings     []string  `json:"warnings,omitempty"`
	Mode         string    `json:"mode,omitempty"`
	PolicyDigest string    `json:"policyDigest,omitempty"`
	Time         time.Time `json:"time,omitzero"`
	// Tags are the staging tags the digest carried when it was evaluated:
	// promotion uses these, never a fresh lookup (a moved tag cannot
	// promote another digest).
	Tags []string `json:"tags,omitempty"`
	// VSA is the digest of the signed verification summary statement.
	VSA string `json:"vsa,omitempty"`
	// Inputs are the bundles (manifest digests) the decision's facts came
	// from: a promotion refuses when one of them is gone.
	Inputs []string `json:"inputs,omitempty"`
}

// Child is one platform manifest of an image index.
type Child struct {
	Digest   string `json:"digest"`
	Platform string `json:"platform,omitempty"`
}

// Artifact is one document attestd produced about a subject digest (the
// image, or one platform child of an index).
type Artifact struct {
	Subject       string `json:"subject"` // sha256:… the document is about
	Platform      string `json:"platform,omitempty"`
	Kind          string `json:"kind"` // spdx, cyclonedx, hardening, provenance, …
	MediaType     string `json:"mediaType"`
	PredicateType string `json:"predicateType,omitempty"` // in-toto predicate type it is attested as
	Digest        string `json:"digest"`                  // sha256 of the bytes in the blobs bucket
	Size          int64  `json:"size"`
}

// Facts is the analysis summary of one subject digest.
type Facts struct {
	Subject   string   `json:"subject"`
	Platform  string   `json:"platform,omitempty"`
	Packages  int      `json:"packages"`
	Size      int64    `json:"size"`             // config + compressed layers, bytes
	Failed    []string `json:"failed,omitempty"` // hardening check IDs that failed
	BaseImage string   `json:"baseImage,omitempty"`
	// Vulns are the vulnerability findings; nil when the scan is disabled.
	Vulns *VulnCounts `json:"vulnerabilities,omitempty"`
}

// VulnCounts are a platform's vulnerability findings by severity, after
// exceptions and VEX. Findings of Unknown severity are counted in Unknown;
// UnknownAs is the severity they gate as.
type VulnCounts struct {
	Critical    int       `json:"critical"`
	High        int       `json:"high"`
	Medium      int       `json:"medium"`
	Low         int       `json:"low"`
	Negligible  int       `json:"negligible"`
	Unknown     int       `json:"unknown"`
	UnknownAs   string    `json:"unknownAs"`
	Suppressed  int       `json:"suppressed"`
	MaxSeverity string    `json:"maxSeverity,omitempty"`
	DB          string    `json:"db"` // digest of the database matched against
	DBBuilt     time.Time `json:"dbBuilt"`
	ScannedAt   time.Time `json:"scannedAt"`
	// Findings are the unsuppressed findings, "ID package@version", sorted:
	// what a re-scan compares against to tell new findings.
	Findings []string `json:"findings,omitempty"`
}

// Record is the per-digest state. Ref is "host/repo@sha256:…", the key.
type Record struct {
	Ref        string                 `json:"ref"`
	Registry   string                 `json:"registry"`
	Repository string                 `json:"repository"`
	Digest     string                 `json:"digest"`
	MediaType  string                 `json:"mediaType,omitempty"`
	Children   []Child                `json:"children,omitempty"`
	Parent     string                 `json:"parent,omitempty"` // the index this platform child was folded into
	State      State                  `json:"state"`
	Rev        uint64                 `json:"rev"`
	Stages     map[string]StageResult `json:"stages,omitempty"`
	Decision   *Decision              `json:"decision,omitempty"`
	// Artifacts are the documents analysis made about this digest and its
	// platform children; their bytes live in the blobs bucket.
	Artifacts []Artifact `json:"artifacts,omitempty"`
	// Facts summarise analysis per subject digest, for status and policy.
	Facts      []Facts   `json:"facts,omitempty"`
	FailedFrom State     `json:"failedFrom,omitempty"`
	LastError  string    `json:"lastError,omitempty"`
	Source     string    `json:"source,omitempty"`
	Pusher     string    `json:"pusher,omitempty"` // who pushed it, when the event said
	Note       string    `json:"note,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// SplitRef splits "host/repo@sha256:hex" into its parts.
func SplitRef(ref string) (registry, repo, digest string, err error) {
	at := strings.LastIndex(ref, "@")
	if at < 0 {
		return "", "", "", fmt.Errorf("image ref %q: want host/repo@sha256:<hex>", ref)
	}
	name, digest := ref[:at], ref[at+1:]
	slash := strings.Index(name, "/")
	if slash <= 0 || slash == len(name)-1 {
		return "", "", "", fmt.Errorf("image ref %q: want host/repo@sha256:<hex>", ref)
	}
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 {
		return "", "", "", fmt.Errorf("image ref %q: digest must be sha256:<64 hex>", ref)
	}
	return name[:slash], name[slash+1:], digest, nil
}

func getRecord(tx *bolt.Tx, ref string) (*Record, error) {
	v := tx.Bucket(bucketImages).Get([]byte(ref))
	if v == nil {
		return nil, fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("image %s: decode: %w", ref, err)
	}
	return &r, nil
}

func putRecord(tx *bolt.Tx, r *Record) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketImages).Put([]byte(r.Ref), v)
}

// Image returns the record for ref.
func (db *DB) Image(ctx context.Context, ref string) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var r *Record
	err := db.bolt.View(func(tx *bolt.Tx) error {
		var err error
		r, err = getRecord(tx, ref)
		return err
	})
	return r, err
}

// Images returns the records whose ref starts with prefix ("" for all), in key order.
func (db *DB) Images(ctx context.Context, prefix string) ([]Record, error) {
	var out []Record
	err := db.bolt.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketImages).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("image %s: decode: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Transition moves ref from state `from` to state `to` in one transaction,
// calling fn (may be nil) on the record first. It is a compare-and-set: when
// the stored state is not `from`, it returns ErrConflict and changes nothing;
// when the state machine forbids the move, ErrInvalidTransition. An error
// from fn aborts the whole transaction.
func (db *DB) Transition(ctx context.Context, ref string, from, to State, fn func(*Record) error) (*Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Record
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, ref)
		if err != nil {
			return err
		}
		if r.State != from {
			return fmt.Errorf("image %s: %w: state is %s, expected %s", ref, ErrConflict, r.State, from)
		}
		if !allowed(r, from, to) {
			return fmt.Errorf("image %s: %w: %s → %s", ref, ErrInvalidTransition, from, to)
		}
		before := *r
		before.Stages = maps.Clone(r.Stages)
		if r.Decision != nil {
			d := *r.Decision
			before.Decision = &d
		}
		if fn != nil {
			if err := fn(r); err != nil {
				return err
			}
		}
		if to == StateFailed && from != StateFailed {
			r.FailedFrom = from
		}
		if from == StateFailed && to != StateFailed {
			r.FailedFrom = ""
			r.LastError = ""
		}
		r.State = to
		r.Rev++
		r.UpdatedAt = db.now().UTC()
		out = r
		if err := auditTransition(tx, &before, r, actorFrom(ctx), r.UpdatedAt); err != nil {
			return err
		}
		return putRecord(tx, r)
	})
	return out, err
}
