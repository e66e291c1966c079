package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting in a delivery (real payloads nest < 10 deep).
const maxJSONDepth = 32

// decodeStrict unmarshals one JSON document into v after checking what
// encoding/json lets through silently: invalid UTF-8 (replaced), duplicate
// object keys (the last one wins — and keys match struct fields
// case-insensitively, with Unicode folding, so "Digest", "DIGEST" and
// "digeſt" all set Digest), data after the document, and absurd nesting.
// A sender can use each to make a delivery mean one thing to a proxy or log
// and another to attestd, so each is a 400 that names where it is.
func decodeStrict(body []byte, v any) error {
	if err := checkJSON(body); err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return jsonError(body, err)
	}
	return nil
}

// checkJSON walks body's tokens (see decodeStrict).
func checkJSON(body []byte) error {
	if !utf8.Valid(body) {
		return errors.New("body is not valid UTF-8")
	}
	type frame struct {
		obj       bool
		keys      map[string]string // folded → as sent
		key       string            // current key (object)
		idx       int               // current index (array)
		expectKey bool
	}
	var stack []*frame
	path := func() string {
		var b strings.Builder
		b.WriteString("$")
		for _, f := range stack {
			if f.obj {
				b.WriteString("." + f.key)
			} else {
				b.WriteString("[" + strconv.Itoa(f.idx) + "]")
			}
		}
		return b.String()
	}
	valueDone := func() {
		if len(stack) == 0 {
			return
		}
		if f := stack[len(stack)-1]; f.obj {
			f.expectKey = true
		} else {
			f.idx++
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	started := false
	for !started || len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				return errors.New("malformed JSON: empty body or unexpected end")
			}
			return jsonError(body, err)
		}
		started = true
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if len(stack) >= maxJSONDepth {
					return fmt.Errorf("JSON nested more than %d levels at %s", maxJSONDepth, path())
				}
				stack = append(stack, &frame{obj: d == '{', keys: map[string]string{}, expectKey: d == '{'})
			case '}', ']':
				stack = stack[:len(stack)-1]
				valueDone()
			}
			continue
		}
		if len(stack) > 0 {
			if f := stack[len(stack)-1]; f.obj && f.expectKey {
				k := tok.(string)
				fk := foldKey(k)
				if prev, dup := f.keys[fk]; dup {
					f.key = k
					if prev == k {
						return &FieldError{Field: path(), Err: fmt.Errorf("duplicate key %q: a JSON object may name a field once", k)}
					}
					return &FieldError{Field: path(), Err: fmt.Errorf("duplicate key: %q and %q name the same field", prev, k)}
				}
				f.keys[fk], f.key, f.expectKey = k, k, false
				continue
			}
		}
		valueDone()
	}
	if off := dec.InputOffset(); len(bytes.TrimSpace(body[off:])) > 0 {
		return fmt.Errorf("data after the JSON document at byte %d: send one JSON value per request", off)
	}
	return nil
}

// foldKey maps a key to one representative of its Unicode simple-folding
// class, the equivalence encoding/json uses to match keys to fields.
func foldKey(s string) string {
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}
