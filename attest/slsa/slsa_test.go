package slsa

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var digestA = "sha256:" + strings.Repeat("a", 64)

func TestStatementSeparatesToldFromObserved(t *testing.T) {
	st, err := Statement(Input{
		Subjects:   []Subject{{Name: "r.example/team/app", Digest: digestA}},
		Repository: "r.example/team/app", Tags: []string{"v2", "v1"}, Platform: "linux/amd64",
		Labels: map[string]string{
			LabelSource: "https://git.example/team/app", LabelRevision: strings.Repeat("1", 40),
			LabelBaseName: "gcr.io/distroless/static:nonroot", LabelBaseDigest: "sha256:" + strings.Repeat("b", 64),
			"maintainer": "not copied",
		},
		EventSource: "webhook:dist", Pusher: "ci-bot",
		BuilderID:  "https://ci.example/builders/main",
		BuildKit:   &Attached{Digest: "sha256:" + strings.Repeat("c", 64), MediaType: "application/vnd.oci.image.manifest.v1+json", PredicateType: "https://slsa.dev/provenance/v0.2", URI: "oci://r.example/team/app@sha256:" + strings.Repeat("c", 64)},
		ObservedAt: time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC),
	})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Type          string `json:"_type"`
		PredicateType string
		Subject       []struct {
			Name   string
			Digest map[string]string
		}
		Predicate struct {
			BuildDefinition struct {
				BuildType            string
				ExternalParameters   map[string]any
				InternalParameters   map[string]any
				ResolvedDependencies []struct {
					Name, URI string
					Digest    map[string]string
				}
			}
			RunDetails struct {
				Builder    struct{ ID string }
				Byproducts []struct {
					Name   string
					Digest map[string]string
				}
			}
		}
	}
	if err := json.Unmarshal(st, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Type != "https://in-toto.io/Statement/v1" || doc.PredicateType != PredicateType {
		t.Errorf("header %q %q", doc.Type, doc.PredicateType)
	}
	if doc.Subject[0].Digest["sha256"] != strings.Repeat("a", 64) {
		t.Errorf("subject %+v", doc.Subject)
	}
	bd := doc.Predicate.BuildDefinition
	if _, ok := bd.ExternalParameters["labels"].(map[string]any)["maintainer"]; ok {
		t.Error("non-OCI label copied")
	}
	if ev := bd.ExternalParameters["event"].(map[string]any); ev["pusher"] != "ci-bot" {
		t.Errorf("event %v", ev)
	}
	if bd.InternalParameters["observer"] != "attestd" || bd.InternalParameters["platform"] != "linux/amd64" {
		t.Errorf("observed %v", bd.InternalParameters)
	}
	if len(bd.ResolvedDependencies) != 2 || bd.ResolvedDependencies[0].Digest["sha256"] != strings.Repeat("b", 64) ||
		bd.ResolvedDependencies[1].Digest["gitCommit"] != strings.Repeat("1", 40) {
		t.Errorf("resolved dependencies %+v", bd.ResolvedDependencies)
	}
	if doc.Predicate.RunDetails.Builder.ID != "https://ci.example/builders/main" {
		t.Errorf("builder %q", doc.Predicate.RunDetails.Builder.ID)
	}
	if bp := doc.Predicate.RunDetails.Byproducts; len(bp) != 1 || bp[0].Name != "buildkit-provenance" {
		t.Errorf("byproducts %+v", bp)
	}
}

func TestStatementDefaultsAndErrors(t *testing.T) {
	st, err := Statement(Input{Subjects: []Subject{{Name: "r/a", Digest: digestA}}, Labels: map[string]string{LabelRevision: "main"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), ObserverBuilderID) {
		t.Error("no builder mapping, but the statement does not say observer-only")
	}
	if strings.Contains(string(st), "resolvedDependencies") {
		t.Error("resolved dependencies invented without source or base labels")
	}
	for _, in := range []Input{
		{},
		{Subjects: []Subject{{Name: "r/a", Digest: "sha256:short"}}},
		{Subjects: []Subject{{Name: "r/a", Digest: digestA}}, BuildKit: &Attached{Digest: "md5:x"}},
	} {
		if _, err := Statement(in); err == nil {
			t.Errorf("Statement(%+v) succeeded", in)
		}
	}
}

func TestBuilderFor(t *testing.T) {
	m := []Builder{
		{Pusher: "ci-*", ID: "https://ci/pusher"},
		{Repository: "r.example/team/*", ID: "https://ci/team"},
	}
	for _, tc := range []struct{ repo, pusher, want string }{
		{"r.example/team/app", "ci-bot", "https://ci/pusher"},
		{"r.example/team/app", "alice", "https://ci/team"},
		{"r.example/team/app", "", "https://ci/team"},
		{"r.example/other/app", "", ""},
	} {
		if got := BuilderFor(m, tc.repo, tc.pusher); got != tc.want {
			t.Errorf("BuilderFor(%q, %q) = %q, want %q", tc.repo, tc.pusher, got, tc.want)
		}
	}
}

// TestReadProvenanceRoundTrip: attestd's own provenance reads back as an
// observation — the observer builder, no sources — with the labels and the
// configured builder as claims; a builder's own provenance yields its
// sources and base images, except what it marks as claimed.
func TestReadProvenanceRoundTrip(t *testing.T) {
	st, err := Statement(Input{
		Subjects:   []Subject{{Name: "r.example/app", Digest: "sha256:" + strings.Repeat("a", 64)}},
		Repository: "r.example/app",
		Labels:     map[string]string{LabelSource: "https://github.com/acme/app", LabelRevision: strings.Repeat("b", 40), LabelBaseName: "debian:12"},
		BuilderID:  "https://ci.acme.example/builders/main", ObservedAt: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	pred, err := Predicate(st)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ReadProvenance(pred)
	if err != nil {
		t.Fatal(err)
	}
	want := &Read{BuilderID: ObserverBuilderID, BuildType: BuildType, Observed: true,
		ClaimedSources: []string{"https://github.com/acme/app"}, ClaimedBaseImage: "debian:12", ClaimedBuilderID: "https://ci.acme.example/builders/main"}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("observed (-want +got):\n%s", diff)
	}

	builder := `{"buildDefinition":{"buildType":"https://ci.example/v1","resolvedDependencies":[
	  {"uri":"git+https://github.com/acme/app@refs/heads/main"},
	  {"uri":"pkg:docker/gcr.io/distroless/static@nonroot?platform=linux%2Famd64"},
	  {"uri":"oci://cgr.dev/chainguard/static:latest"},
	  {"uri":"git+https://github.com/evil/app","annotations":{"attestd.dev/claimedBy":"label x"}}]},
	 "runDetails":{"builder":{"id":"https://ci.example/builder"}}}`
	r, err = ReadProvenance([]byte(builder))
	if err != nil {
		t.Fatal(err)
	}
	want = &Read{BuilderID: "https://ci.example/builder", BuildType: "https://ci.example/v1",
		Sources: []string{"https://github.com/acme/app"}, BaseImages: []string{"gcr.io/distroless/static:nonroot", "cgr.dev/chainguard/static:latest"}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("builder (-want +got):\n%s", diff)
	}
	if _, err := ReadProvenance([]byte(`{"runDetails":{}}`)); err == nil {
		t.Error("a provenance without a builder id was read")
	}
}
