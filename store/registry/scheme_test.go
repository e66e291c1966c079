package registry

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// recordingRT records the requests that reach the network and answers
// 200 (or err).
type recordingRT struct {
	mu   sync.Mutex
	urls []string
	err  error
}

func (r *recordingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.urls = append(r.urls, req.URL.String())
	r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Header: http.Header{}, Request: req}, nil
}

// TestPlainHTTPOnlyWhereAllowed: plain HTTP reaches the network only for
// loopback hosts and hosts configured insecure; ggcr's http for private
// addresses becomes HTTPS; credentials never go in plain HTTP beyond
// loopback.
func TestPlainHTTPOnlyWhereAllowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		insecure []string
		method   string
		url      string
		header   map[string]string
		want     string // URL that reaches the network; "" : refused
	}{
		{name: "rfc1918 10/8 upgraded", url: "http://10.0.0.5:5000/v2/", want: "https://10.0.0.5:5000/v2/"},
		{name: "rfc1918 192.168/16 upgraded", url: "http://192.168.1.2/v2/", want: "https://192.168.1.2/v2/"},
		{name: "rfc1918 172.16/12 upgraded", url: "http://172.16.0.9/v2/", want: "https://172.16.0.9/v2/"},
		{name: "ula ipv6 upgraded", url: "http://[fd00::1]/v2/", want: "https://[fd00::1]/v2/"},
		{name: ".local name upgraded", url: "http://registry.local:5000/v2/", want: "https://registry.local:5000/v2/"},
		{name: "public name upgraded", url: "http://registry.example.com/v2/", want: "https://registry.example.com/v2/"},
		{name: "upgraded with credentials", url: "http://10.0.0.5:5000/v2/", header: map[string]string{"Authorization": "Basic dTpw"}, want: "https://10.0.0.5:5000/v2/"},
		{name: "https untouched", url: "https://10.0.0.5:5000/v2/", header: map[string]string{"Authorization": "Bearer t"}, want: "https://10.0.0.5:5000/v2/"},
		{name: "localhost", url: "http://localhost:5000/v2/", header: map[string]string{"Authorization": "Basic dTpw"}, want: "http://localhost:5000/v2/"},
		{name: "127.0.0.1", url: "http://127.0.0.1:5000/v2/", header: map[string]string{"Authorization": "Bearer t"}, want: "http://127.0.0.1:5000/v2/"},
		{name: "127/8", url: "http://127.1.2.3:5000/v2/", want: "http://127.1.2.3:5000/v2/"},
		{name: "::1", url: "http://[::1]:5000/v2/", header: map[string]string{"Authorization": "Bearer t"}, want: "http://[::1]:5000/v2/"},
		{name: "insecure anonymous", insecure: []string{"10.0.0.5:5000"}, url: "http://10.0.0.5:5000/v2/", want: "http://10.0.0.5:5000/v2/"},
		{name: "insecure other port upgraded", insecure: []string{"10.0.0.5:5000"}, url: "http://10.0.0.5:5001/v2/", want: "https://10.0.0.5:5001/v2/"},
		{name: "insecure basic refused", insecure: []string{"10.0.0.5:5000"}, url: "http://10.0.0.5:5000/v2/", header: map[string]string{"Authorization": "Basic dTpw"}},
		{name: "insecure bearer refused", insecure: []string{"192.168.1.2"}, url: "http://192.168.1.2/v2/app/manifests/v1", header: map[string]string{"Authorization": "Bearer t"}},
		{name: "insecure ipv6 bearer refused", insecure: []string{"[fd00::1]"}, url: "http://[fd00::1]/v2/", header: map[string]string{"Authorization": "Bearer t"}},
		{name: "insecure oauth token form refused", insecure: []string{"10.0.0.5:5000"}, method: http.MethodPost, url: "http://10.0.0.5:5000/token",
			header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &recordingRT{}
			c, err := New(WithBaseTransport(rt), WithRateLimit(0, 0), WithMaxRetries(0), WithInsecureRegistriesUnsafe(tc.insecure...))
			if err != nil {
				t.Fatal(err)
			}
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			var body io.Reader
			if method == http.MethodPost {
				body = strings.NewReader("grant_type=refresh_token&refresh_token=secret")
			}
			req, err := http.NewRequestWithContext(context.Background(), method, tc.url, body)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := c.transport.RoundTrip(req)
			if resp != nil {
				resp.Body.Close()
			}
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("sent %v; want refused", rt.urls)
			case tc.want == "" && (!errors.Is(err, ErrPlainHTTP) || !strings.Contains(err.Error(), "insecure")):
				t.Fatalf("error %v; want ErrPlainHTTP saying how to fix it", err)
			case tc.want == "" && len(rt.urls) != 0:
				t.Fatalf("refused, but %v reached the network", rt.urls)
			case tc.want != "" && err != nil:
				t.Fatalf("refused: %v; want %s", err, tc.want)
			case tc.want != "" && (len(rt.urls) != 1 || rt.urls[0] != tc.want):
				t.Fatalf("network saw %v; want %s", rt.urls, tc.want)
			}
			if tc.want != "" && req.URL.String() != tc.url {
				t.Errorf("the caller's request was changed to %s", req.URL)
			}
		})
	}
}

// TestUpgradedToPlainHTTPServerSaysHowToFix: a private-address registry
// that speaks only plain HTTP fails, once, with what to do.
func TestUpgradedToPlainHTTPServerSaysHowToFix(t *testing.T) {
	t.Parallel()
	rt := &recordingRT{err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}}
	c, err := New(WithBaseTransport(rt), WithRateLimit(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://10.0.0.5:5000/v2/", nil)
	_, err = c.transport.RoundTrip(req)
	if err == nil || !strings.Contains(err.Error(), "insecure: true") {
		t.Fatalf("error %v; want one naming the insecure setting", err)
	}
	if len(rt.urls) != 1 {
		t.Errorf("%d attempts; a TLS/HTTP mismatch is not retried", len(rt.urls))
	}
}

// handlerRT serves every plain HTTP request, whatever its host, from h
// in-process: a plain HTTP registry "at" a private address without
// binding one. HTTPS fails as it does against a plain HTTP server.
type handlerRT struct {
	h http.Handler

	mu   sync.Mutex
	seen []string // method, URL, and whether credentials came along
}

func (rt *handlerRT) RoundTrip(req *http.Request) (*http.Response, error) {
	cred := ""
	if req.Header.Get("Authorization") != "" {
		cred = " +authorization"
	}
	if req.Body != nil && req.Body != http.NoBody {
		b, _ := io.ReadAll(req.Body)
		if strings.Contains(string(b), "secret") {
			cred += " +form-credentials"
		}
	}
	rt.mu.Lock()
	rt.seen = append(rt.seen, req.Method+" "+req.URL.String()+cred)
	rt.mu.Unlock()
	if req.URL.Scheme == "https" {
		return nil, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}
	}
	rec := httptest.NewRecorder()
	rt.h.ServeHTTP(rec, req)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// tokenRegistry is a ggcr registry behind bearer authentication whose
// token realm is realm (plain HTTP, as an insecure registry's is).
func tokenRegistry(realm string) http.Handler {
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			_ = json.NewEncoder(w).Encode(map[string]string{"token": "t0ken"})
			return
		}
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	})
}

// TestNoCredentialsInPlainHTTP: an insecure registry at a private
// address with token authentication: neither the password (ggcr's token
// exchange over the http realm), nor an identity token (the OAuth2
// form), nor the bearer token reaches the network; the call fails with
// ErrPlainHTTP.
func TestNoCredentialsInPlainHTTP(t *testing.T) {
	t.Parallel()
	const host = "10.0.0.5:5000"
	for name, cfg := range map[string]authn.AuthConfig{
		"password":       {Username: "u", Password: "secret"},
		"identity token": {IdentityToken: "secret"},
		"anonymous":      {},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rt := &handlerRT{h: tokenRegistry("http://" + host + "/token")}
			kc := staticKeychain{host: cfg}
			c, err := New(WithBaseTransport(rt), WithRateLimit(0, 0), WithMaxRetries(0), WithKeychain(kc), WithInsecureRegistriesUnsafe(host))
			if err != nil {
				t.Fatal(err)
			}
			ref, err := c.ParseReference(host + "/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = c.Resolve(context.Background(), ref)
			if !errors.Is(err, ErrPlainHTTP) {
				t.Fatalf("resolve: %v; want ErrPlainHTTP", err)
			}
			for _, s := range rt.seen {
				if strings.Contains(s, "+") {
					t.Errorf("credentials went in plain HTTP: %s", s)
				}
				if u := strings.Fields(s)[1]; !strings.HasPrefix(u, "http://"+host+"/") && !strings.HasPrefix(u, "https://"+host+"/") {
					t.Errorf("unexpected request %s", s)
				}
			}
		})
	}
}

type staticKeychain map[string]authn.AuthConfig

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if c, ok := k[r.RegistryStr()]; ok && c != (authn.AuthConfig{}) {
		return authn.FromConfig(c), nil
	}
	return authn.Anonymous, nil
}

// TestLoopbackPlainHTTPWithCredentials: on loopback, plain HTTP with
// token authentication keeps working end to end (push, resolve).
func TestLoopbackPlainHTTPWithCredentials(t *testing.T) {
	t.Parallel()
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	h = tokenRegistry(srv.URL + "/token")
	host := strings.TrimPrefix(srv.URL, "http://")
	c, err := New(WithRateLimit(0, 0), WithKeychain(staticKeychain{host: {Username: "u", Password: "secret"}}))
	if err != nil {
		t.Fatal(err)
	}
	img, _ := random.Image(64, 1)
	ref, err := c.ParseReference(host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, c.RemoteOptions(context.Background())...); err != nil {
		t.Fatal(err)
	}
	got, _, err := c.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := img.Digest(); got.DigestStr() != want.String() {
		t.Errorf("resolved %s, want %s", got, want)
	}
}
