package layers

import (
	"errors"
	"fmt"
)

// ErrTooLarge is what every LimitError wraps: the layer (or the image it
// belongs to) is over a size limit. The content is addressed by digest, so
// fetching it again gives the same answer: callers should not retry.
var ErrTooLarge = errors.New("over a size limit")

// Limit is a byte (or entry) count and the setting that chose it, named in
// errors so that whoever reads one knows what to raise.
type Limit struct {
	N       int64
	Setting string // e.g. "analysis.max_layer_bytes"; "" for the manifest's declared size
}

// LimitError says which limit a layer ran into. Nothing of the layer is
// kept when a Get returns one.
type LimitError struct {
	Digest string // the layer that crossed the limit
	Limit  Limit
	// Compressed: the limit is on the blob as downloaded (else on the
	// uncompressed tar). Image: the limit is shared by the image's layers
	// (see Budget). Entries: the limit counts tar entries, not bytes.
	Compressed, Image, Entries bool
}

func (e *LimitError) Error() string {
	const fix = ": raise it if this image is legitimate"
	l := e.Limit
	switch {
	case l.Setting == "":
		return fmt.Sprintf("layer %s is larger than the %d bytes its manifest declares: the manifest is wrong (or the registry serves other content under this digest); push a correct manifest", e.Digest, l.N)
	case e.Entries && e.Image:
		return fmt.Sprintf("the image's layers hold more than %s (%d) files, directories and links, counted up to layer %s%s", l.Setting, l.N, e.Digest, fix)
	case e.Entries:
		return fmt.Sprintf("layer %s holds more than %s (%d) files, directories and links%s", e.Digest, l.Setting, l.N, fix)
	case e.Image && e.Compressed:
		return fmt.Sprintf("the image's layers are larger than %s (%s) as downloaded, counted up to layer %s%s", l.Setting, bytesString(l.N), e.Digest, fix)
	case e.Image:
		return fmt.Sprintf("the image's layers expand past %s (%s), counted up to layer %s%s", l.Setting, bytesString(l.N), e.Digest, fix)
	case e.Compressed:
		return fmt.Sprintf("layer %s is larger than %s (%s) as downloaded%s", e.Digest, l.Setting, bytesString(l.N), fix)
	}
	return fmt.Sprintf("layer %s expands past %s (%s)%s", e.Digest, l.Setting, bytesString(l.N), fix)
}

func (e *LimitError) Unwrap() error { return ErrTooLarge }

// bytesString writes n in the largest binary unit that divides it, and as
// a byte count: "4GiB = 4294967296 bytes".
func bytesString(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d%s = %d bytes", n/u.size, u.name, n)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
