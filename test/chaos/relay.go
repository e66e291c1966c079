package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"
)

// relay sits between the registry's notifications and the daemon. It
// forwards each delivery unchanged and answers what the daemon answers;
// while the daemon is down it answers 503, so the registry keeps the events
// and retries, as it would against a real outage. It remembers every
// manifest push the daemon acknowledged with a 2xx: the events attestd has
// promised not to lose.
type relay struct {
	target string // the daemon's hook URL
	client *http.Client

	mu    sync.Mutex
	acked map[string]bool // repository@digest
	codes map[int]int     // daemon answers (0: unreachable)
}

func newRelay(target string) *relay {
	return &relay{target: target, client: &http.Client{Timeout: 10 * time.Second}, acked: map[string]bool{}, codes: map[int]int{}}
}

// envelope is what the relay needs of a Distribution notification.
type envelope struct {
	Events []struct {
		Action string `json:"action"`
		Target struct {
			MediaType  string `json:"mediaType"`
			Repository string `json:"repository"`
			Digest     string `json:"digest"`
		} `json:"target"`
	} `json:"events"`
}

func (r *relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 8<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	fwd, err := http.NewRequestWithContext(ctx, http.MethodPost, r.target, bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fwd.Header = req.Header.Clone()
	resp, err := r.client.Do(fwd)
	if err != nil {
		r.count(0)
		http.Error(w, "attestd unreachable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r.count(resp.StatusCode)
	if resp.StatusCode/100 == 2 {
		var env envelope
		if json.Unmarshal(body, &env) == nil {
			r.mu.Lock()
			for _, e := range env.Events {
				if e.Action == "push" && isManifest(e.Target.MediaType) && e.Target.Digest != "" {
					r.acked[e.Target.Repository+"@"+e.Target.Digest] = true
				}
			}
			r.mu.Unlock()
		}
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

func (r *relay) count(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.codes[code]++
}

// ackedSet returns the acknowledged repository@digest pairs.
func (r *relay) ackedSet() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]bool, len(r.acked))
	for k := range r.acked {
		out[k] = true
	}
	return out
}

func (r *relay) answers() map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[int]int{}
	for k, v := range r.codes {
		out[k] = v
	}
	return out
}

func isManifest(mt string) bool {
	switch mt {
	case "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
		"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json":
		return true
	}
	return false
}
