package registry

import (
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxManifestBytes bounds every manifest (and index) attestd reads: the OCI
// distribution spec asks registries to accept manifests of at least 4 MiB,
// so no portable image needs more, and ggcr alone would buffer up to
// 100 MiB of whatever a staging writer pushed, per read.
const MaxManifestBytes = 4 << 20

// capManifests refuses manifest bodies over MaxManifestBytes as they
// stream: a declared Content-Length over it fails before any byte is read,
// an undeclared one on the first byte past it. It sits under the shared
// Transport (it wraps the base transport), so retries see it too.
type capManifests struct{ inner http.RoundTripper }

func (c capManifests) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.inner.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	var over error
	switch {
	case strings.Contains(req.URL.Path, "/manifests/"):
		over = fmt.Errorf("%w: %s is larger than %d bytes (4MiB: the size every registry must accept, so no portable image needs more): attestd does not read it; push a smaller manifest",
			ErrManifestTooLarge, req.URL.Path, MaxManifestBytes)
	case strings.Contains(req.URL.Path, "/referrers/"):
		// The referrers API's listing is an index too; a registry copies
		// each referrer's annotations into it, so a staging writer sets
		// its size.
		over = fmt.Errorf("%w: the referrers listing %s is larger than %d bytes: attestd reads none of it; delete the stray referrers",
			ErrTooManyReferrers, req.URL.Path, MaxManifestBytes)
	default:
		return resp, nil
	}
	if resp.ContentLength > MaxManifestBytes {
		resp.Body.Close()
		resp.Body = io.NopCloser(errReader{over})
		return resp, nil
	}
	resp.Body = &cappedBody{rc: resp.Body, left: MaxManifestBytes, over: over}
	return resp, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// cappedBody fails on the first byte past left.
type cappedBody struct {
	rc   io.ReadCloser
	left int64
	over error
}

func (c *cappedBody) Read(b []byte) (int, error) {
	if c.left < 0 {
		return 0, c.over
	}
	if int64(len(b)) > c.left+1 {
		b = b[:c.left+1]
	}
	n, err := c.rc.Read(b)
	if c.left -= int64(n); c.left < 0 {
		return n, c.over
	}
	return n, err
}

func (c *cappedBody) Close() error { return c.rc.Close() }
