package attest

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestStatement(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	st, err := Statement("r.example/app", digest, PredicateSPDX, []byte("  {\"b\": [1, 2],\n \"a\": \"<x>\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"r.example/app","digest":{"sha256":"` + strings.Repeat("ab", 32) +
		`"}}],"predicateType":"https://spdx.dev/Document","predicate":{"b":[1,2],"a":"<x>"}}`
	if string(st) != want {
		t.Errorf("statement\n got %s\nwant %s", st, want)
	}
	if !json.Valid(st) {
		t.Error("not JSON")
	}
	pt, ds, err := ParseStatement(st)
	if err != nil || pt != PredicateSPDX || len(ds) != 1 || ds[0] != digest {
		t.Errorf("ParseStatement = %q %q %v", pt, ds, err)
	}
	if st, err := Statement("r.example/app", digest, PredicateSPDX, nil); err != nil || !strings.HasSuffix(string(st), `"predicate":{}}`) {
		t.Errorf("empty predicate: %s, %v", st, err)
	}
	for _, bad := range []string{`[]`, `"x"`, `{`, `{"a":1} {"b":2}`, `{"a":1}}`, `{"a":}`, `null`} {
		if _, err := Statement("r.example/app", digest, PredicateSPDX, []byte(bad)); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
			t.Errorf("predicate %s: err = %v, want 'not a JSON object'", bad, err)
		}
	}
	if _, err := Statement("r.example/app", "sha256:abc", PredicateSPDX, nil); err == nil {
		t.Error("a short digest was accepted")
	}
}
