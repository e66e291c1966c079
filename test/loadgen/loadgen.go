// Package loadgen drives webhook intake benchmarks: it sends numbered
// requests on an open- or closed-loop schedule and measures their latency,
// and builds the Distribution envelopes they carry. Used by the in-process
// BenchmarkIntakeHTTP and by test/cmd/benchintake (a separate process).
package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load is how requests are sent: Per events each, either by Senders
// concurrent senders, each sending again as soon as answered (closed loop:
// the most a server answers at that concurrency), or at Rate events/s on a
// fixed schedule whatever the answers (open loop: latency counts from the
// scheduled send, so a stall is not hidden by senders that wait).
type Load struct {
	Per     int
	Senders int
	Rate    float64
}

func (l Load) String() string {
	if l.Rate > 0 {
		return fmt.Sprintf("rate=%.0f/events-per-post=%d", l.Rate, l.Per)
	}
	return fmt.Sprintf("senders=%d/events-per-post=%d", l.Senders, l.Per)
}

// ParseLoad reads a load in String's form: "rate=R/events-per-post=P" or
// "senders=N/events-per-post=P".
func ParseLoad(s string) (Load, error) {
	var l Load
	var err error
	switch {
	case strings.HasPrefix(s, "rate="):
		_, err = fmt.Sscanf(s, "rate=%g/events-per-post=%d", &l.Rate, &l.Per)
	case strings.HasPrefix(s, "senders="):
		_, err = fmt.Sscanf(s, "senders=%d/events-per-post=%d", &l.Senders, &l.Per)
	default:
		err = errors.New("starts with neither rate= nor senders=")
	}
	switch {
	case err != nil:
	case l.Per < 1 || l.Rate < 0 || l.Senders < 0 || (l.Rate == 0 && l.Senders == 0):
		err = errors.New("rate or senders, and events-per-post, must be positive")
	case l.String() != s:
		err = fmt.Errorf("reads back as %q (whole numbers, nothing after the count)", l)
	}
	if err != nil {
		return Load{}, fmt.Errorf("load %q: want rate=R/events-per-post=P or senders=N/events-per-post=P (e.g. rate=15000/events-per-post=10): %w", s, err)
	}
	return l, nil
}

// openLoopPool bounds the requests in flight in an open loop; far more than
// a server that keeps up ever has.
const openLoopPool = 512

// Run calls send(i) for every i in [0, posts) as l says and returns each
// call's latency, or the first error (the run stops sending then).
func Run(l Load, posts int, send func(i int) error) ([]time.Duration, error) {
	lat := make([]time.Duration, posts)
	var (
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
	)
	do := func(i int, since time.Time) bool {
		if firstErr.Load() != nil {
			return false
		}
		if err := send(i); err != nil {
			firstErr.CompareAndSwap(nil, &err)
			return false
		}
		lat[i] = time.Since(since)
		return true
	}
	start := time.Now()
	if l.Rate > 0 {
		interval := time.Duration(float64(time.Second) * float64(l.Per) / l.Rate)
		due := make(chan int, posts)
		for range openLoopPool {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range due {
					do(i, start.Add(time.Duration(i)*interval))
				}
			}()
		}
		for i := range posts {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
			due <- i
		}
		close(due)
	} else {
		var next atomic.Int64
		for range l.Senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= posts || !do(i, time.Now()) {
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return nil, *err
	}
	return lat, nil
}

// DistributionBody is a Distribution notification envelope of per pushes
// to host/bench/app, events numbered first to first+per-1 (event ID and
// digest derive from the number); tagged pushes name tag v<number>.
func DistributionBody(first, per int, host string, tagged bool) []byte {
	buf := []byte(`{"events":[`)
	for k := range per {
		n := first + k
		if k > 0 {
			buf = append(buf, ',')
		}
		tag := ""
		if tagged {
			tag = fmt.Sprintf(`,"tag":"v%d"`, n)
		}
		buf = fmt.Appendf(buf, `{"id":"ev-%d","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064x","repository":"bench/app"%s},"request":{"host":%q,"useragent":"docker/27"}}`, n, n, tag, host)
	}
	return append(buf, "]}"...)
}

// Post sends a Distribution envelope to url with the Authorization header
// auth and wants a 202.
func Post(c *http.Client, url, auth string, body []byte) error {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	req.Header.Set("Authorization", auth)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	return nil
}
