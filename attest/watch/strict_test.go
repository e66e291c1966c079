package watch

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckJSON(t *testing.T) {
	t.Parallel()
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, tc := range []struct {
		name, body string
		err        string // "" = accepted; else a substring of the error
	}{
		{"empty object", `{}`, ""},
		{"array at top level", `[{"digest":"a"},{"digest":"b"}]`, ""},
		{"scalars at top level", `"sha256:x"`, ""},
		{"null at top level", `null`, ""},
		{"number at top level", ` 1.5e3 `, ""},
		{"same key in sibling objects", `{"a":{"digest":1},"b":{"digest":2},"c":[{"digest":3},{"digest":4}]}`, ""},
		{"keys that only look alike", `{"digest":1,"digests":2,"dіgest":3}`, ""}, // Cyrillic і does not fold to i
		{"trailing whitespace", "{\"a\":1}\n\t ", ""},
		{"depth 32", nest(32), ""},
		{"duplicate key", `{"digest":"a","digest":"b"}`, `$.digest: duplicate key "digest"`},
		{"duplicate key at depth", `{"events":[{"target":{"tag":"a"}},{"target":{"tag":"a","x":{},"tag":"b"}}]}`, `$.events[1].target.tag`},
		{"duplicate key after a nested value", `{"a":{"b":[1,{"c":2}]},"a":1}`, `$.a: duplicate key "a"`},
		{"case-folded duplicate", `{"Digest":"a","digest":"b"}`, `"Digest" and "digest" name the same field`},
		{"upper-case duplicate", `{"repository":"a","REPOSITORY":"b"}`, `"repository" and "REPOSITORY"`},
		{"long s (U+017F) folds to s", `{"digest":"a","digeſt":"b"}`, `"digest" and "digeſt"`},
		{"long s against upper case", `{"DIGEST":"a","digeſt":"b"}`, `"DIGEST" and "digeſt"`},
		{"Kelvin sign (U+212A) folds to k", `{"kind":"a","\u212Aind":"b"}`, "\"kind\" and \"\u212Aind\""},
		{"Kelvin sign against upper case", "{\"KIND\":\"a\",\"\u212Aind\":\"b\"}", "\"KIND\" and \"\u212Aind\""},
		{"folded duplicate at depth", `{"data":{"resources":[{"resource_url":"a","Resource_URL":"b"}]}}`, `$.data.resources[0].Resource_URL`},
		{"trailing object", `{}{}`, "data after the JSON document at byte 2"},
		{"trailing garbage", `{"a":1} x`, "data after the JSON document"},
		{"trailing bracket", `[]]`, "data after the JSON document"},
		{"invalid UTF-8 in a value", "{\"a\":\"\xff\"}", "not valid UTF-8"},
		{"invalid UTF-8 in a key", "{\"\xc3\":1}", "not valid UTF-8"},
		{"overlong encoding", "{\"a\":\"\xc0\xaf\"}", "not valid UTF-8"},
		{"depth 33", nest(33), "nested more than 32 levels"},
		{"deep objects", strings.Repeat(`{"a":`, 33) + `1` + strings.Repeat(`}`, 33), "nested more than 32 levels at $" + strings.Repeat(".a", 32)},
		{"empty body", ``, "empty body"},
		{"only whitespace", " \n", "empty body"},
		{"unterminated", `{"a":`, "unexpected end"},
		{"syntax error", `{"a" 1}`, "malformed JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := checkJSON([]byte(tc.body))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.err != "" && err == nil:
				t.Fatal("accepted")
			case tc.err != "" && !strings.Contains(err.Error(), tc.err):
				t.Fatalf("error %q does not say %q", err, tc.err)
			}
		})
	}
}

func TestDecodeStrict(t *testing.T) {
	t.Parallel()
	type target struct {
		Digest string `json:"digest"`
		Tags   []string
	}
	for _, tc := range []struct {
		name, body string
		want       target
		err        string
	}{
		{name: "fields", body: `{"digest":"sha256:a","Tags":["v1"]}`, want: target{Digest: "sha256:a", Tags: []string{"v1"}}},
		{name: "unknown fields are ignored", body: `{"digest":"d","other":{"x":1}}`, want: target{Digest: "d"}},
		{name: "one spelling that folds is still one field", body: `{"DIGEST":"d"}`, want: target{Digest: "d"}},
		{name: "folded duplicate the decoder would merge", body: `{"digest":"a","digeſt":"b"}`, err: "name the same field"},
		{name: "wrong type names the field", body: `{"digest":5}`, err: `field "digest"`},
		{name: "trailing data", body: `{"digest":"a"} {"digest":"b"}`, err: "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got target
			err := decodeStrict([]byte(tc.body), &got)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != tc.want.Digest || strings.Join(got.Tags, ",") != strings.Join(tc.want.Tags, ",") {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidRepository(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, err string }{
		{"a", ""}, {"library/nginx", ""}, {"team/app", ""}, {"a/b/c/d", ""}, {"a.b", ""}, {"a_b", ""}, {"a__b", ""}, {"a-b", ""}, {"a---b", ""},
		{"0", ""}, {strings.Repeat("a", 255), ""},
		{"", "is empty"},
		{"team/\xffapp", "not valid UTF-8"},
		{"tеam/app", "non-ASCII"}, // Cyrillic е
		{"team/аpp", "non-ASCII"}, // Cyrillic а
		{"team/app\x00", "control characters"},
		{"team/\tapp", "control characters"},
		{"/team/app", "absolute path"},
		{"team/../admin", `contains ".."`},
		{"team/..", `contains ".."`},
		{"Team/app", "upper-case"},
		{strings.Repeat("a", 256), "more than 255"},
		{"team//app", "not a valid name"},
		{"team/app/", "not a valid name"},
		{"-team", "not a valid name"},
		{"team-", "not a valid name"},
		{"_team", "not a valid name"},
		{"a___b", "not a valid name"},
		{"a.-b", "not a valid name"},
		{"team app", "not a valid name"},
		{"team:app", "not a valid name"},
	} {
		checkValid(t, "ValidRepository", tc.in, ValidRepository(tc.in), tc.err)
	}
}

func TestValidTag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, err string }{
		{"v1", ""}, {"latest", ""}, {"_x", ""}, {"1.36", ""}, {"v1.2.3-rc.1_build", ""}, {"A", ""}, {strings.Repeat("v", 128), ""},
		{strings.Repeat("v", 129), "more than 128"},
		{"", "not valid"},
		{".v1", "not valid"},
		{"-v1", "not valid"},
		{"v1 2", "not valid"},
		{"v1/2", "not valid"},
		{"v1:2", "not valid"},
		{"sha256:" + strings.Repeat("a", 64), "not valid"},
		{"v1\n", "not valid"},
		{"vé", "not valid"},
	} {
		checkValid(t, "ValidTag", tc.in, ValidTag(tc.in), tc.err)
	}
}

func TestValidDigest(t *testing.T) {
	t.Parallel()
	h64, h128 := strings.Repeat("0a", 32), strings.Repeat("f9", 64)
	for _, tc := range []struct{ in, err string }{
		{"sha256:" + h64, ""}, {"sha512:" + h128, ""},
		{"", "not algorithm:hex"},
		{h64, "not algorithm:hex"},
		{"md5:" + h64[:32], "not sha256 or sha512"},
		{"sha384:" + h128[:96], "not sha256 or sha512"},
		{"SHA256:" + h64, "not sha256 or sha512"},
		{"sha256:" + h64[:63], "has 63 hex characters, want 64"},
		{"sha256:" + h64 + "0", "has 65 hex characters, want 64"},
		{"sha512:" + h64, "has 64 hex characters, want 128"},
		{"sha256:", "has 0 hex characters"},
		{"sha256:" + strings.ToUpper(h64), "not lower-case hex"},
		{"sha256:" + h64[:63] + "g", "not lower-case hex"},
		{"sha256:" + h64[:62] + "\u00e9", "not lower-case hex"},
	} {
		checkValid(t, "ValidDigest", tc.in, ValidDigest(tc.in), tc.err)
	}
}

func TestValidHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, err string }{
		{"localhost", ""}, {"localhost:5000", ""}, {"127.0.0.1:5000", ""}, {"[::1]:5000", ""}, {"[fe80::1]", ""}, {"registry.example.com", ""},
		{"a-b.example.com:443", ""}, {"harbor.dev", ""}, {"docker.io", ""},
		{"", "is empty"},
		{strings.Repeat("a", 256), "not a host name"},
		{"https://registry.example.com", "not a host name"},
		{"registry.example.com/team", "not a host name"},
		{"registry_example.com", "not a host name"},
		{"-registry.example.com", "not a host name"},
		{"registry-.example.com", "not a host name"},
		{"registry..example.com", "not a host name"},
		{"registry.example.com:", "not a host name"},
		{"registry.example.com:123456", "not a host name"},
		{"registry.example.com:http", "not a host name"},
		{"user@registry.example.com", "not a host name"},
		{"rеgistry.example.com", "not a host name"}, // Cyrillic е
		{"registry.example.com\n", "not a host name"},
		{"[::1", "not a host name"},
	} {
		checkValid(t, "ValidHost", tc.in, ValidHost(tc.in), tc.err)
	}
}

func checkValid(t *testing.T, fn, in string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s(%q) = %v, want nil", fn, in, err)
	case want != "" && err == nil:
		t.Errorf("%s(%q) accepted, want %q", fn, in, want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s(%q) = %q, want it to say %q", fn, in, err, want)
	}
}

func FuzzCheckJSON(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, n := range files {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{`{}`, `[]`, `null`, `"x"`, `{"a":1,"A":2}`, `{"digeſt":1}`, `[[[[1]]]]`, `{} {}`, "{\"\xff\":1}", `{"a":[1,2,{"b":null}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if checkJSON(body) == nil && !json.Valid(body) {
			t.Fatalf("checkJSON accepted what encoding/json calls invalid: %q", body)
		}
	})
}
