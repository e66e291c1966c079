package app

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
)

// Bounds of the API's token file.
const (
	// maxTokenFileBytes bounds what is read per change of the file: a few
	// tokens and comments, never a file someone pointed at by mistake.
	maxTokenFileBytes = 64 << 10
	// minTokenLen refuses guessable tokens; generated ones have 43
	// characters (32 random bytes).
	minTokenLen = 20
	// generatedTokenBytes is the entropy of the token serve creates.
	generatedTokenBytes = 32
	// tokenRecheck is how long a read of the file is trusted without
	// reading it again, even when a stat shows no change: a file rewritten
	// in place within one tick of the filesystem's clock keeps its inode,
	// and may keep its size and modification time.
	tokenRecheck = time.Second
)

// tokenFile is the API's set of bearer tokens: the file's lines, re-read
// when the file changes (another inode, size or modification time) and at
// least every tokenRecheck, so that rotating a token needs no restart.
// Only SHA-256 sums are kept.
//
// A file that cannot be read or holds no valid token accepts nothing (fail
// closed): deleting the file revokes every token at once.
type tokenFile struct {
	path string
	log  *slog.Logger

	mu   sync.Mutex
	fi   os.FileInfo // of the version sums came from; nil: none read
	read time.Time   // when it was read
	sums [][sha256.Size]byte
	err  error // why the current version accepts nothing
}

func newTokenFile(path string, log *slog.Logger) (*tokenFile, error) {
	t := &tokenFile{path: path, log: log}
	if _, err := t.current(); err != nil {
		return nil, err
	}
	return t, nil
}

// valid reports whether presented is one of the file's tokens. Every
// token is compared (in constant time, over sums of equal length) whatever
// matched, so the answer's timing says nothing about which or how close.
func (t *tokenFile) valid(presented string) (bool, error) {
	sums, err := t.current()
	if err != nil {
		return false, err
	}
	p := sha256.Sum256([]byte(presented))
	ok := 0
	for _, s := range sums {
		ok |= subtle.ConstantTimeCompare(p[:], s[:])
	}
	return ok == 1, nil
}

// current returns the sums of the file as it is now: one stat per call,
// a read only when the file changed or the last read is tokenRecheck old.
func (t *tokenFile) current() ([][sha256.Size]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fi, err := os.Stat(t.path)
	if err == nil && t.fi != nil && os.SameFile(fi, t.fi) && fi.ModTime().Equal(t.fi.ModTime()) && fi.Size() == t.fi.Size() &&
		time.Since(t.read) < tokenRecheck {
		return t.sums, nil
	}
	now := time.Now()
	toks, fi, err := readTokens(t.path)
	if err != nil {
		if t.err == nil || t.err.Error() != err.Error() {
			t.log.Error("API token file unusable: every authenticated API request is refused", "err", err)
		}
		t.fi, t.sums, t.err = nil, nil, err
		return nil, err
	}
	if changed := t.fi == nil || !os.SameFile(fi, t.fi) || !fi.ModTime().Equal(t.fi.ModTime()) || fi.Size() != t.fi.Size(); changed && (t.fi != nil || t.err != nil) {
		t.log.Info("API token file re-read", "file", t.path, "tokens", len(toks))
	}
	t.sums = make([][sha256.Size]byte, len(toks))
	for i, tok := range toks {
		t.sums[i] = sha256.Sum256([]byte(tok))
	}
	t.fi, t.read, t.err = fi, now, nil
	return t.sums, nil
}

// readTokens reads a token file: one token per line, blank lines and lines
// starting with # ignored. The FileInfo is of the descriptor read, so a
// change after the read is seen as one on the next stat.
func readTokens(path string) ([]string, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("API token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("API token file: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("API token file %s: %w", path, err)
	}
	if len(b) > maxTokenFileBytes {
		return nil, nil, fmt.Errorf("API token file %s: larger than %d bytes; is this the right file?", path, maxTokenFileBytes)
	}
	toks, err := parseTokens(b)
	if err != nil {
		return nil, nil, fmt.Errorf("API token file %s: %w", path, err)
	}
	return toks, fi, nil
}

// parseTokens never quotes a token in its errors: they are logged.
func parseTokens(b []byte) ([]string, error) {
	var toks []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < minTokenLen {
			return nil, fmt.Errorf("line %d: a token must have at least %d characters", i+1, minTokenLen)
		}
		for _, c := range []byte(line) {
			if c <= ' ' || c > '~' {
				return nil, fmt.Errorf("line %d: a token is printable ASCII without spaces", i+1)
			}
		}
		toks = append(toks, line)
	}
	if len(toks) == 0 {
		return nil, errors.New("holds no token (one per line; # starts a comment)")
	}
	return toks, nil
}

// ensureTokenFile creates path with a random token unless it exists. The
// file is written under another name and hard-linked into place, so it is
// never seen half-written and never replaces one that exists (a second
// daemon starting at the same moment keeps the first one's token).
func ensureTokenFile(path string) (created bool, err error) {
	if _, err := os.Stat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	raw := make([]byte, generatedTokenBytes)
	if _, err := rand.Read(raw); err != nil {
		return false, err
	}
	var b bytes.Buffer
	b.WriteString("# attestd API bearer token, generated by attestd serve (api.token_file unset).\n")
	b.WriteString("# Send it as: Authorization: Bearer <token>. One token per line; every line is accepted,\n")
	b.WriteString("# so add a new one, move clients over, then remove the old one. No restart needed.\n")
	b.WriteString(base64.RawURLEncoding.EncodeToString(raw) + "\n")
	f, err := os.CreateTemp(filepath.Dir(path), ".api.token-*") // mode 0600
	if err != nil {
		return false, fmt.Errorf("API token file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path)
	}
	switch {
	case errors.Is(err, fs.ErrExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("API token file: %w", err)
	}
	// The link survives a crash, or clients holding the token would meet
	// a new one after it.
	if err := store.SyncDir(filepath.Dir(path)); err != nil {
		return false, fmt.Errorf("API token file: %w", err)
	}
	return true, nil
}

// guard decides who reaches the API. Three checks, each for a different
// attacker:
//
//   - Host, on /api/ and /debug/: a web page whose DNS name was rebound to
//     the daemon's address sends its own name. IP literals, localhost and
//     api.hosts (plus listen's host when it is a name) are accepted. Not on
//     /hooks/: registries address the daemon by whatever name it has on
//     their network, and each source authenticates its sender itself; not
//     on /healthz, /readyz, /metrics, which probes reach by any name.
//   - Cross-origin, on every unsafe method (webhooks included: no registry
//     sends a browser's Sec-Fetch-Site or a foreign Origin) and on every
//     authenticated endpoint whatever its method: net/http's
//     CrossOriginProtection (Sec-Fetch-Site, else Origin against Host).
//   - Bearer token, on authenticated endpoints: what the network path
//     cannot tell (a same-host proxy or a pod sidecar makes every client
//     loopback).
type guard struct {
	tokens *tokenFile
	hosts  map[string]bool // lower case, no trailing dot
	cop    *http.CrossOriginProtection
	log    *slog.Logger
}

func newGuard(tokens *tokenFile, hosts []string, log *slog.Logger) *guard {
	g := &guard{tokens: tokens, hosts: map[string]bool{"localhost": true}, cop: http.NewCrossOriginProtection(), log: log}
	for _, h := range hosts {
		g.hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return g
}

// guardFor builds the guard serve uses: the token file (created under
// data_dir when api.token_file is unset; a configured one must exist and
// hold a token, or serve does not start) and the accepted names.
func guardFor(cfg *configs.Config, log *slog.Logger) (*guard, error) {
	path := cfg.APITokenFile()
	if cfg.API.TokenFile == "" {
		created, err := ensureTokenFile(path)
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("API token created: clients send it as a bearer token", "file", path)
		}
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("API token file is readable by other users", "file", path, "mode", fi.Mode().Perm().String())
	}
	tokens, err := newTokenFile(path, log)
	if err != nil {
		if cfg.API.TokenFile != "" {
			return nil, &configs.Error{File: cfg.File(), Field: "api.token_file", Msg: err.Error()}
		}
		return nil, err
	}
	hosts := cfg.API.Hosts
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil && h != "" {
		if _, err := netip.ParseAddr(h); err != nil {
			hosts = append(slices.Clip(hosts), h)
		}
	}
	return newGuard(tokens, hosts, log), nil
}

// handler guards everything mux serves: the Host check on /api/ and
// /debug/, the cross-origin check on unsafe methods.
func (g *guard) handler(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if p := req.URL.Path; (strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/debug/")) && !g.hostAllowed(req.Host) {
			g.refuse(req, "host")
			writeError(w, http.StatusForbidden, "Host "+req.Host+" is not a name this daemon's API answers to: use its IP address or localhost, or add the name to api.hosts")
			return
		}
		if err := g.cop.Check(req); err != nil {
			g.refuse(req, "cross-origin")
			writeError(w, http.StatusForbidden, "cross-origin request refused: "+err.Error())
			return
		}
		mux.ServeHTTP(w, req)
	})
}

// auth wraps an endpoint that needs a bearer token. A browser's
// cross-origin request is refused whatever its method: these endpoints
// change state or hand out what the store holds.
func (g *guard) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		// CrossOriginProtection lets safe methods through unchecked; judge
		// this request as if it were unsafe.
		unsafe := req.WithContext(req.Context())
		unsafe.Method = http.MethodPost
		if err := g.cop.Check(unsafe); err != nil {
			g.refuse(req, "cross-origin")
			writeError(w, http.StatusForbidden, "cross-origin request refused: "+err.Error())
			return
		}
		tok, ok := bearer(req)
		if !ok {
			g.refuse(req, "no token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="attestd"`)
			writeError(w, http.StatusUnauthorized, "this endpoint needs a bearer token: send Authorization: Bearer <token>, a token from "+g.tokens.path+" on the daemon's host (api.token_file)")
			return
		}
		valid, err := g.tokens.valid(tok)
		if !valid {
			reason := "wrong token"
			if err != nil {
				reason = "token file unusable"
			}
			g.refuse(req, reason)
			w.Header().Set("WWW-Authenticate", `Bearer realm="attestd", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "the bearer token is not one of those in "+g.tokens.path+" on the daemon's host (api.token_file)")
			return
		}
		h(w, req)
	}
}

// refuse logs a refused request: who and what, never the credentials.
func (g *guard) refuse(req *http.Request, reason string) {
	g.log.Info("API request refused", "reason", reason, "method", req.Method, "path", req.URL.Path, "remote", req.RemoteAddr, "host", req.Host)
}

// bearer returns the token of an Authorization: Bearer header (RFC 6750;
// the scheme is case-insensitive). Tokens in the query are not accepted:
// URLs end up in logs and histories.
func bearer(req *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(req.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// hostAllowed: an empty Host (HTTP/1.0), an IP literal, localhost or a
// configured name.
func (g *guard) hostAllowed(host string) bool {
	if host == "" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return g.hosts[strings.ToLower(strings.TrimSuffix(host, "."))]
}

// apiToken is what the CLI sends to a running daemon: the first token of
// its token file (during a rotation, put the new token first).
func apiToken(path string) (configs.Secret, error) {
	toks, _, err := readTokens(path)
	if err != nil {
		return "", err
	}
	return configs.Secret(toks[0]), nil
}
