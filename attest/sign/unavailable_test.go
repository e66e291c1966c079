package sign

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"
)

func TestUnavailable(t *testing.T) {
	t.Parallel()
	refused := &url.Error{Op: "Post", URL: "http://fulcio/api/v2/signingCert", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("certificate from Fulcio: %w", refused), true},
		{fmt.Errorf("adding rekor v2 entry: %w", errors.New(`unexpected response: 499 {"code":1,"message":"add entry: await: context canceled"}`)), true},
		{errors.New("adding rekor v2 entry: unexpected response: 503 busy"), true},
		{errors.New("Fulcio returned 429: slow down"), true},
		{errors.New("timestamp authority returned 502: bad gateway"), true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		// The job's own problems are not the service's.
		{errors.New("Fulcio returned 400: the token's audience is not sigstore"), false},
		{errors.New("adding rekor v2 entry: unexpected response: 400 invalid entry"), false},
		{errors.New("Fulcio returned 401: token expired"), true},
		{errors.New("timestamp authority returned 401: no"), false},
		{&url.Error{Op: "Post", URL: "http://rekor", Err: timeoutErr{}}, false},
	} {
		got := errors.Is(unavailable(tc.err), ErrUnavailable)
		if got != tc.want {
			t.Errorf("unavailable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if unavailable(nil) != nil {
		t.Error("nil became an error")
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
