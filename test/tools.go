//go:build tools

// This file pins library versions that attestd's next packages build on, so
// that go.mod records the combination ../shared/LOCAL-STACK.md verified
// (cosign v2.6.5 with sigstore-go v1.1.4 and ggcr v0.22.1) before attest/sign
// and attest/verify import them. The "tools" build tag keeps it out of every
// build; `go mod tidy` still honours it.
package test

import (
	_ "github.com/sigstore/cosign/v2/pkg/cosign"
)
