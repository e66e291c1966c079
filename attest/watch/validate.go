package watch

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// FieldError is a delivery's fault in one field: the receiver answers 400
// with both, so the sender's operator sees what to fix where.
type FieldError struct {
	Field string // JSON path or header name, e.g. "events[0].target.digest"
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErr wraps err (when not nil) as a FieldError of field.
func fieldErr(field string, err error) error {
	if err == nil {
		return nil
	}
	return &FieldError{Field: field, Err: err}
}

// Limits of the OCI distribution spec and Docker's reference grammar.
const (
	maxNameLen = 255 // registry host + "/" + repository
	maxTagLen  = 128
)

var (
	tagRe  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	hostRe = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$`)
	// digestAlgs are the registered algorithms (OCI image-spec) and the
	// length of their hex encoding.
	digestAlgs = map[string]int{"sha256": 64, "sha512": 128}
)

// ValidRepository checks a repository name against the distribution-spec
// grammar and says what is wrong in terms a sender's operator can act on.
func ValidRepository(s string) error {
	switch {
	case s == "":
		return errors.New("repository is empty")
	case !utf8.ValidString(s):
		return errors.New("repository is not valid UTF-8")
	case strings.IndexFunc(s, func(r rune) bool { return r > unicode.MaxASCII }) >= 0:
		return fmt.Errorf("repository %q has non-ASCII characters (look-alike names are refused: the grammar is [a-z0-9] with . _ - separators)", s)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("repository %q has control characters", s)
	case strings.HasPrefix(s, "/"):
		return fmt.Errorf("repository %q is an absolute path; names are relative to the registry (team/app)", s)
	case strings.Contains(s, ".."):
		return fmt.Errorf("repository %q contains \"..\"", s)
	case s != strings.ToLower(s):
		return fmt.Errorf("repository %q has upper-case letters; repository names are lower case", s)
	case len(s) > maxNameLen:
		return fmt.Errorf("repository is %d characters, more than %d", len(s), maxNameLen)
	case !repoRe.MatchString(s):
		return fmt.Errorf("repository %q is not a valid name: path components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'", s)
	}
	return nil
}

// ValidTag checks a tag: [\w][\w.-]{0,127}.
func ValidTag(s string) error {
	if len(s) > maxTagLen {
		return fmt.Errorf("tag is %d characters, more than %d", len(s), maxTagLen)
	}
	if !tagRe.MatchString(s) {
		return fmt.Errorf("tag %q is not valid: a letter, digit or '_', then up to 127 of letters, digits, '_', '.', '-'", s)
	}
	return nil
}

// ValidDigest checks "algorithm:hex" for a registered algorithm, its exact
// length and lower-case hex.
func ValidDigest(s string) error {
	alg, hx, ok := strings.Cut(s, ":")
	n, known := digestAlgs[alg]
	switch {
	case !ok:
		return fmt.Errorf("digest %q is not algorithm:hex", s)
	case !known:
		return fmt.Errorf("digest algorithm %q is not sha256 or sha512", alg)
	case len(hx) != n:
		return fmt.Errorf("%s digest has %d hex characters, want %d", alg, len(hx), n)
	case strings.Trim(hx, "0123456789abcdef") != "":
		return fmt.Errorf("digest %q is not lower-case hex", s)
	}
	return nil
}

// ValidHost checks a registry host[:port] as it appears in image references.
func ValidHost(s string) error {
	if s == "" {
		return errors.New("registry host is empty")
	}
	if len(s) > maxNameLen || !hostRe.MatchString(s) {
		return fmt.Errorf("registry host %q is not a host name or IP address with an optional port", s)
	}
	return nil
}

// checkManifest reports whether manifest hashes to digest.
func checkManifest(digest string, manifest []byte) error {
	alg, hx, _ := strings.Cut(digest, ":")
	var h hash.Hash
	switch alg {
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return fmt.Errorf("digest algorithm %q is not sha256 or sha512", alg)
	}
	h.Write(manifest)
	if got := hex.EncodeToString(h.Sum(nil)); got != hx {
		return fmt.Errorf("manifest hashes to %s:%s, not the event's digest %s", alg, got, digest)
	}
	return nil
}

// Fields names where an Incoming's values came from in the delivery, for
// error messages; empty names default to the Event field's name.
type Fields struct {
	Registry, Repository, Digest, Tag, Manifest string
}

// check validates every value the event carries (present or required) and
// the included manifest, naming the delivery's field in the error.
func (in *Incoming) check() error {
	e := &in.Event
	f := in.Fields
	if e.Action != ActionPush && e.Action != ActionDelete {
		// Irrelevant (a pull, a ping): its values do not matter, and a
		// sender that gets a 4xx for it may retry forever — behind it,
		// every later push.
		return nil
	}
	e.Registry = strings.ToLower(e.Registry) // host names are case-insensitive
	if err := ValidHost(e.Registry); err != nil {
		return fieldErr(orDefault(f.Registry, "registry"), err)
	}
	if err := ValidRepository(e.Repository); err != nil {
		return fieldErr(orDefault(f.Repository, "repository"), err)
	}
	if len(e.Registry)+1+len(e.Repository) > maxNameLen {
		return fieldErr(orDefault(f.Repository, "repository"), fmt.Errorf("registry host and repository are %d characters, more than %d", len(e.Registry)+1+len(e.Repository), maxNameLen))
	}
	if e.Digest != "" {
		if err := ValidDigest(e.Digest); err != nil {
			return fieldErr(orDefault(f.Digest, "digest"), err)
		}
	}
	if e.Tag != "" {
		if err := ValidTag(e.Tag); err != nil {
			return fieldErr(orDefault(f.Tag, "tag"), err)
		}
	}
	for i, c := range e.Children {
		if err := ValidDigest(c); err != nil {
			return fieldErr(fmt.Sprintf("children[%d]", i), err)
		}
	}
	if e.Digest == "" && e.Tag == "" {
		return fieldErr(orDefault(f.Digest, "digest"), errors.New("the event names neither a digest nor a tag"))
	}
	if in.Manifest != nil {
		if e.Digest == "" {
			return fieldErr(orDefault(f.Manifest, "manifest"), errors.New("a manifest came without its digest"))
		}
		if err := checkManifest(e.Digest, in.Manifest); err != nil {
			return fieldErr(orDefault(f.Manifest, "manifest"), err)
		}
	}
	return nil
}
