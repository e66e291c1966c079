package registry

import "errors"

// ErrManifestTooLarge is a manifest larger than MaxManifestBytes. It is
// addressed by digest, so reading it again gives the same answer.
var ErrManifestTooLarge = errors.New("manifest too large")
