package analyze

import "errors"

// ErrLimit is an image over one of the analysis limits that are not the
// layer cache's (those are layers.ErrTooLarge): too many index entries, an
// image config over 4 MiB.
// The image is addressed by digest, so analysing it again gives the same
// answer; Stage makes it permanent.
var ErrLimit = errors.New("over an analysis limit")
