package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"sync"
)

// ownCap bounds the manifests remembered as written by this process (a
// registry notifies within seconds; 64k entries is hours of a busy daemon).
const ownCap = 1 << 16

// ownSet remembers the manifests this process PUT, by host/repository@digest,
// so that intake can ignore the registry's events for attestd's own writes
// from what attestd did — never from a delivery's User-Agent, which any
// client sets. Recorded before the request is sent: the registry's event can
// arrive before its answer does. Bounded, oldest forgotten first.
type ownSet struct {
	mu    sync.Mutex
	set   map[string]struct{}
	order []string
	next  int
}

func (o *ownSet) add(key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.set == nil {
		o.set = map[string]struct{}{}
	}
	if _, ok := o.set[key]; ok {
		return
	}
	if len(o.order) < ownCap {
		o.order = append(o.order, key)
	} else {
		delete(o.set, o.order[o.next])
		o.order[o.next] = key
		o.next = (o.next + 1) % ownCap
	}
	o.set[key] = struct{}{}
}

func (o *ownSet) has(key string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.set[key]
	return ok
}

// noteManifestPut records a manifest PUT (/v2/REPO/manifests/REF) by the
// digest of its body (the reference, when that is a digest, names the same).
func (o *ownSet) noteManifestPut(req *http.Request) {
	if req.Method != http.MethodPut {
		return
	}
	p := req.URL.Path
	i := strings.LastIndex(p, "/manifests/")
	if !strings.HasPrefix(p, "/v2/") || i < len("/v2/") {
		return
	}
	repo, ref := p[len("/v2/"):i], p[i+len("/manifests/"):]
	dgst := ""
	if req.GetBody != nil {
		if body, err := req.GetBody(); err == nil {
			h := sha256.New()
			if _, err := io.Copy(h, body); err == nil {
				dgst = "sha256:" + hex.EncodeToString(h.Sum(nil))
			}
			body.Close()
		}
	}
	if dgst == "" && strings.HasPrefix(ref, "sha256:") {
		dgst = ref
	}
	if dgst != "" {
		o.add(ownKey(req.URL.Host, repo, dgst))
	}
}

// ownKey names a manifest as registry events do: host in lower case, and
// Docker Hub's API hosts as docker.io.
func ownKey(host, repo, dgst string) string {
	host = strings.ToLower(host)
	switch host {
	case "index.docker.io", "registry-1.docker.io":
		host = "docker.io"
	}
	return host + "/" + repo + "@" + dgst
}

// Own reports whether this process wrote the manifest registry/repository@digest
// (recently: see ownCap).
func (c *Client) Own(registry, repository, digest string) bool {
	return c.transport.own.has(ownKey(registry, repository, digest))
}
