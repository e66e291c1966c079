package sign

import (
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"syscall"
)

// ErrUnavailable marks a signature that failed because a signing service
// (Fulcio, a TSA, a Rekor log) was down or overloaded — the connection was
// refused, reset or cut, or it answered 408, 429, 499 or 5xx — or because
// the signing identity was (the OIDC token could not be read, or Fulcio
// refused it as expired: 401). The same signature can be made once the
// service or the token is back, so callers retry it without counting it
// against the job.
// It says so to the pipeline with Temporary (see pipeline.Transient).
var ErrUnavailable error = serviceUnavailable{}

type serviceUnavailable struct{}

func (serviceUnavailable) Error() string   { return "signing service unavailable" }
func (serviceUnavailable) Temporary() bool { return true }

// serviceStatus matches the status sigstore-go (Fulcio, TSA) and the Rekor
// v2 client put in their error text; they return no typed error.
var serviceStatus = regexp.MustCompile(`(?:Fulcio returned (?:401|408|429|5\d\d)|(?:timestamp authority returned|unexpected response:) (?:408|429|499|5\d\d))\b`)

// unavailable wraps err with ErrUnavailable when it says a service was
// unreachable or overloaded.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && !ne.Timeout(),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.ErrUnexpectedEOF),
		serviceStatus.MatchString(err.Error()):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}
