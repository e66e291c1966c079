package registry

import "errors"

// Sentinels of the registry client; match them with errors.Is.
var (
	// ErrPlainHTTP: a request would have gone over plain HTTP where
	// attestd does not allow it (credentials to a host that is not
	// loopback).
	ErrPlainHTTP = errors.New("plain HTTP refused")
	// ErrTooManyReferrers: a subject lists more referrers than the
	// client considers (WithMaxReferrers); none of them were read.
	ErrTooManyReferrers = errors.New("too many referrers")
	// ErrManifestTooLarge is a manifest larger than MaxManifestBytes. It
	// is addressed by digest, so reading it again gives the same answer.
	ErrManifestTooLarge = errors.New("manifest too large")
)

// ErrStalled: the registry sent nothing for the stall timeout, in the
// middle of an answer or before it. It is temporary (Temporary): the
// registry, not the request, is at fault.
var ErrStalled error = stalled{}

type stalled struct{}

func (stalled) Error() string   { return "registry stalled" }
func (stalled) Temporary() bool { return true }
