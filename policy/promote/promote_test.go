package promote

import (
	"strings"
	"testing"
)

const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"

func TestPlan(t *testing.T) {
	rules := []Rule{
		{From: "staging.test/team/*", To: "prod.test/team/{name}", Tags: TagsSemver},
		{From: "staging.test/legacy/*", To: "prod.test/{path}", Tags: TagsRename, Match: `rc-(.+)`, Replace: "v$1"},
		{From: "staging.test/**", To: "prod.test/all"},
	}
	if err := Validate(rules); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		repo string
		tags []string
		want string
	}{
		{"staging.test/team/app", []string{"v1.2.3", "latest", "1.0.0-rc.1"}, "staging.test/team/app@" + d + " → prod.test/team/app:1.0.0-rc.1\nstaging.test/team/app@" + d + " → prod.test/team/app:v1.2.3"},
		{"staging.test/legacy/app", []string{"rc-2", "main"}, "staging.test/legacy/app@" + d + " → prod.test/legacy/app:v2"},
		{"staging.test/team/app", []string{"latest"}, ""},
		{"other.test/app", []string{"v1.0.0"}, ""},
	} {
		edges, why := Plan(rules, tc.repo, d, tc.tags)
		var got []string
		for _, e := range edges {
			got = append(got, e.String())
		}
		if strings.Join(got, "\n") != tc.want {
			t.Errorf("%s %v: got\n%s\nwant\n%s", tc.repo, tc.tags, strings.Join(got, "\n"), tc.want)
		}
		if tc.want == "" && why == "" {
			t.Errorf("%s %v: no edges and no reason", tc.repo, tc.tags)
		}
	}
}

func TestValidate(t *testing.T) {
	err := Validate([]Rule{{From: "[", To: "x"}, {From: "a", To: "b", Tags: "rename"}, {From: "a", To: "b", Tags: "all"}})
	for _, w := range []string{"rules[0].from", "rules[1]: rename needs match", `rules[2].tags: "all"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("want %q in %v", w, err)
		}
	}
}
