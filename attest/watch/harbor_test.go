package watch

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHarborAndCloudEvents(t *testing.T) {
	t.Parallel()
	harborWatch := Filter{Rules: []Rule{{Registry: "harbor.example.com", Repositories: []string{"library/*"}}, {Registry: "registry.example.com", Repositories: []string{"**"}}, {Registry: "zot.local:5000", Repositories: []string{"**"}}}}
	a64, b64, c64 := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64), "sha256:"+strings.Repeat("c", 64)
	for _, tc := range []struct {
		name    string
		parser  Parser
		file    string
		headers map[string]string
		want    Event
		reason  string
	}{
		{name: "harbor default push", parser: Harbor{}, file: "harbor-default-push.json",
			want: Event{Action: ActionPush, Registry: "harbor.example.com", Repository: "library/app", Digest: a64, Tag: "v1", Pusher: "admin"}},
		{name: "harbor cloudevents push", parser: Harbor{}, file: "harbor-cloudevents-push.json",
			want: Event{ID: "4b2f89a6-548d-4c12-9993-a1f5790b97d2", Action: ActionPush, Registry: "harbor.example.com", Repository: "library/app", Digest: a64, Tag: "v1", Pusher: "admin"}},
		{name: "harbor pull ignored", parser: Harbor{}, file: "harbor-default-pull.json", want: Event{Action: "PULL_ARTIFACT"}, reason: ReasonAction},
		{name: "cloudevents structured harbor", parser: CloudEvents{}, file: "harbor-cloudevents-push.json",
			want: Event{ID: "4b2f89a6-548d-4c12-9993-a1f5790b97d2", Action: ActionPush, Registry: "harbor.example.com", Repository: "library/app", Digest: a64, Tag: "v1", Pusher: "admin"}},
		{name: "cloudevents attestd type", parser: CloudEvents{}, file: "cloudevents-attestd.json",
			want: Event{ID: "ci-1", Action: ActionPush, Registry: "registry.example.com", Repository: "team/app", Digest: b64}},
		{name: "cloudevents binary zot", parser: CloudEvents{Registry: "zot.local:5000"}, file: "cloudevents-zot-binary-data.json",
			headers: map[string]string{"Ce-Specversion": "1.0", "Ce-Type": "zotregistry.image.updated", "Ce-Id": "z-1", "Ce-Source": "zot"},
			want:    Event{ID: "z-1", Action: ActionPush, Registry: "zot.local:5000", Repository: "team/app", Digest: c64, Tag: "v2", MediaType: "application/vnd.oci.image.manifest.v1+json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest("POST", "/", nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			in, err := tc.parser.Parse(req, load(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if len(in) != 1 {
				t.Fatalf("%d events", len(in))
			}
			if diff := cmp.Diff(tc.want, in[0].Event); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
			if got := harborWatch.Classify(in[0]); got != tc.reason {
				t.Errorf("classify = %q, want %q", got, tc.reason)
			}
		})
	}
	for name, body := range map[string]string{
		"no specversion":   `{"type":"x","id":"1"}`,
		"bad attestd data": `{"specversion":"1.0","type":"dev.attestd.image.pushed","id":"1","data":{"image":"app:v1"}}`,
		"zot without host": `{"specversion":"1.0","type":"zotregistry.image.updated","id":"1","data":{}}`,
		"harbor no data":   `{"specversion":"1.0","type":"harbor.artifact.pushed","id":"1"}`,
	} {
		if _, err := (CloudEvents{}).Parse(httptest.NewRequest("POST", "/", nil), []byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzHarbor(f *testing.F) {
	for _, n := range []string{"harbor-default-push.json", "harbor-cloudevents-push.json", "harbor-default-pull.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = Harbor{}.Parse(nil, body)
	})
}

func FuzzCloudEvents(f *testing.F) {
	for _, n := range []string{"harbor-cloudevents-push.json", "cloudevents-attestd.json"} {
		f.Add(load(f, n))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := CloudEvents{Registry: "zot.local"}.Parse(httptest.NewRequest("POST", "/", bytes.NewReader(nil)), body)
		if err != nil {
			return
		}
		for _, x := range in {
			if x.Event.Action == ActionPush && x.Event.Registry == "" {
				t.Fatalf("push without registry: %+v", x.Event)
			}
		}
	})
}
