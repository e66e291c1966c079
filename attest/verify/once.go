package verify

import (
	"sync"

	in_toto "github.com/in-toto/attestation/go/v1"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// statementOnce wraps an entity for one verification so that sigstore-go
// parses its in-toto statement once instead of twice (for the subject check,
// then again for the result): an SBOM statement is megabytes of protojson
// Struct, and the second parse was a tenth of the daemon's CPU in a fleet.
// The parse is sigstore-go's own, so it is exactly as strict; only its
// result is shared.
type statementOnce struct {
	sgverify.SignedEntity
	once sync.Once
	sc   sgverify.SignatureContent
	err  error
}

func (s *statementOnce) SignatureContent() (sgverify.SignatureContent, error) {
	s.once.Do(func() {
		s.sc, s.err = s.SignedEntity.SignatureContent()
		if s.err == nil && s.sc != nil {
			if env := s.sc.EnvelopeContent(); env != nil {
				s.sc = onceContent{SignatureContent: s.sc, env: &onceEnvelope{EnvelopeContent: env}}
			}
		}
	})
	return s.sc, s.err
}

type onceContent struct {
	sgverify.SignatureContent
	env *onceEnvelope
}

func (c onceContent) EnvelopeContent() sgverify.EnvelopeContent { return c.env }

type onceEnvelope struct {
	sgverify.EnvelopeContent
	once sync.Once
	st   *in_toto.Statement
	err  error
}

func (e *onceEnvelope) Statement() (*in_toto.Statement, error) {
	e.once.Do(func() { e.st, e.err = e.EnvelopeContent.Statement() })
	return e.st, e.err
}
