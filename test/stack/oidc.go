package stack

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"time"
)

// Issuer is a minimal OpenID Connect issuer: discovery document, JWKS, and
// RS256 ID tokens with the claims Fulcio's email issuer type requires
// (email, email_verified). It is our own code, used in place of a real IdP.
type Issuer struct {
	URL string
	key *rsa.PrivateKey
	kid string
	srv *http.Server
}

// StartIssuer serves the issuer on a free loopback port.
func StartIssuer() (*Issuer, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	iss := &Issuer{URL: "http://" + ln.Addr().String(), key: key, kid: "attestd-test"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{
			"issuer": iss.URL, "jwks_uri": iss.URL + "/jwks",
			"authorization_endpoint": iss.URL + "/auth", "token_endpoint": iss.URL + "/token",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"keys": []map[string]string{{
			"kty": "RSA", "alg": "RS256", "use": "sig", "kid": iss.kid,
			"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
		}}})
	})
	// /token?email=… mints a token over HTTP, for shell scripts and make demo.
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		tok, err := iss.Token(r.URL.Query().Get("email"), time.Hour)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, tok)
	})
	iss.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go iss.srv.Serve(ln) //nolint:errcheck // ends with Close
	return iss, nil
}

// Token mints an ID token for email with audience "sigstore". A negative
// ttl mints one that expired that long ago (issued a minute before).
func (i *Issuer) Token(email string, ttl time.Duration) (string, error) {
	return i.TokenWithAudience(email, "sigstore", ttl)
}

// TokenWithAudience mints a token for another audience (negative tests).
func (i *Issuer) TokenWithAudience(email, aud string, ttl time.Duration) (string, error) {
	if email == "" {
		return "", fmt.Errorf("token: email is required")
	}
	now := time.Now()
	iat := now
	if ttl < 0 {
		iat = now.Add(ttl - time.Minute)
	}
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": i.kid})
	claims, _ := json.Marshal(map[string]any{
		"iss": i.URL, "sub": email, "aud": aud, "email": email, "email_verified": true,
		"iat": iat.Unix(), "nbf": iat.Add(-time.Minute).Unix(), "exp": now.Add(ttl).Unix(),
	})
	signing := b64(hdr) + "." + b64(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, i.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + b64(sig), nil
}

// Close stops the issuer.
func (i *Issuer) Close() error { return i.srv.Close() }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
