package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// harnessUA is the User-Agent prefix of the harness's own registry calls
// (pushes, the prod tag check, the floor's reads): never counted as a
// pipeline's.
const harnessUA = "benche2e"

// regLog reads the Debian registry's access log (combined log format, with
// the User-Agent) between two offsets of the file.
type regLog struct{ path string }

func (l regLog) offset() (int64, error) {
	fi, err := os.Stat(l.path)
	if err != nil {
		return 0, fmt.Errorf("registry access log: %w", err)
	}
	return fi.Size(), nil
}

// accessLine: host ident user [time] "METHOD URI PROTO" status size "referer" "user-agent".
var accessLine = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]+\] "(\S+) (\S+) [^"]*" (\d{3}) \S+ "[^"]*" "([^"]*)"`)

// requests counts the access log's requests in [from, to) by class (method,
// what the path addresses, non-2xx status) and by client, leaving out the
// harness's own.
func (l regLog) requests(from, to int64) (requests, error) {
	r := requests{byClass: map[string]int{}, byClient: map[string]int{}}
	f, err := os.Open(l.path)
	if err != nil {
		return r, fmt.Errorf("registry access log: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := accessLine.FindSubmatch(sc.Bytes())
		if m == nil {
			continue // the registry's own log lines
		}
		ua := string(m[4])
		if strings.HasPrefix(ua, harnessUA) {
			continue
		}
		r.total++
		r.byClass[classify(string(m[1]), string(m[2]), string(m[3]))]++
		r.byClient[client(ua)]++
	}
	return r, sc.Err()
}

// requests are registry requests counted from the access log.
type requests struct {
	total    int
	byClass  map[string]int
	byClient map[string]int
}

var digestRef = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
var fallbackTag = regexp.MustCompile(`^sha256-[0-9a-f]{64}$`)

// classify names a request by method and what its path addresses; a
// status outside 2xx/3xx is appended ("GET referrers API → 404").
func classify(method, uri, status string) string {
	path, _, _ := strings.Cut(uri, "?")
	var what string
	switch {
	case path == "/v2/" || path == "/v2":
		what = "/v2/ (ping)"
	case path == "/v2/_catalog":
		what = "catalog"
	case strings.Contains(path, "/blobs/uploads"):
		what = "blob upload"
		if strings.Contains(uri, "mount=") {
			what = "blob mount"
		}
	case strings.Contains(path, "/blobs/"):
		what = "blob"
	case strings.Contains(path, "/referrers/"):
		what = "referrers API"
	case strings.HasSuffix(path, "/tags/list"):
		what = "tags list"
	case strings.Contains(path, "/manifests/"):
		ref := path[strings.LastIndex(path, "/")+1:]
		switch {
		case digestRef.MatchString(ref):
			what = "manifest by digest"
		case fallbackTag.MatchString(ref):
			what = "referrers fallback tag (sha256-…)"
		case strings.HasPrefix(ref, "sha256-"):
			what = "cosign tag (sha256-….sig/.att)"
		default:
			what = "manifest by tag"
		}
	default:
		what = "other"
	}
	c := method + " " + what
	if status[0] != '2' && status[0] != '3' {
		c += " → " + status
	}
	return c
}

// client is the first word of a User-Agent ("attestd/dev", "cosign/v2.6.5").
func client(ua string) string {
	if ua == "" || ua == "-" {
		return "(none)"
	}
	f, _, _ := strings.Cut(ua, " ")
	return f
}

// count reads the whole access log: a check that the registry writes one.
func (l regLog) count() (int, error) {
	b, err := os.ReadFile(l.path)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range bytes.Split(b, []byte("\n")) {
		if accessLine.Match(line) {
			n++
		}
	}
	return n, nil
}
