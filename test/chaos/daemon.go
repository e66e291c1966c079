package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/attestd/attestd/store"
)

// daemon runs `attestd serve` processes one after another on the same data
// directory and address: start, kill -9, start again.
type daemon struct {
	bin, cfg, addr, dataDir, logPath string
	token                            func() string // the API token, "" if none

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	starts  int
	kills   int
	peakRSS atomic.Int64 // bytes, the highest VmHWM of any process
	client  *http.Client
}

func (d *daemon) base() string { return "http://" + d.addr }

// start launches a process and waits until /readyz answers 200 or the
// process exits. A daemon that does not come up by itself fails the
// campaign: that is the point.
func (d *daemon) start(ctx context.Context) error {
	lf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.bin, "serve", "-c", d.cfg)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start attestd: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		lf.Close()
		close(done)
	}()
	go d.sampleRSS(cmd.Process.Pid, done)
	d.mu.Lock()
	d.cmd, d.done = cmd, done
	d.starts++
	d.mu.Unlock()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if code, _, err := d.get(ctx, "/readyz", nil); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("attestd exited before it was ready:\n%s", tail(d.logPath, 25))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("attestd not ready after 90s (it must come back by itself):\n%s", tail(d.logPath, 25))
		}
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) kill() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.kills++
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	d.recordRSS(cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop ends the process with SIGTERM, as an operator would.
func (d *daemon) stop() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	d.recordRSS(cmd.Process.Pid)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// alive reports whether the current process still runs.
func (d *daemon) alive() bool {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (d *daemon) sampleRSS(pid int, done chan struct{}) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			d.recordRSS(pid)
		}
	}
}

// recordRSS folds the process's peak resident set (VmHWM) into peakRSS.
func (d *daemon) recordRSS(pid int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					for {
						cur := d.peakRSS.Load()
						if kb*1024 <= cur || d.peakRSS.CompareAndSwap(cur, kb*1024) {
							break
						}
					}
				}
			}
		}
	}
}

func (d *daemon) get(ctx context.Context, path string, q url.Values) (int, []byte, error) {
	return d.do(ctx, http.MethodGet, path, q)
}

// submit hands image to the daemon as POST /api/v1/submit does for an
// operator. refused is the daemon's answer when it would not queue it.
func (d *daemon) submit(ctx context.Context, image string) (refused string, err error) {
	code, body, err := d.do(ctx, http.MethodPost, "/api/v1/submit", url.Values{"image": {image}})
	switch {
	case err != nil:
		return "", err
	case code == http.StatusAccepted:
		return "", nil
	case code >= 500 && code != http.StatusBadGateway:
		return "", errStatus("POST /api/v1/submit", code, body)
	}
	return fmt.Sprintf("%d %s", code, strings.TrimSpace(string(body))), nil
}

func (d *daemon) do(ctx context.Context, method, path string, q url.Values) (int, []byte, error) {
	u := d.base() + path
	if q != nil {
		u += "?" + q.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if d.token != nil {
		if t := d.token(); t != "" {
			req.Header.Set("Authorization", "Bearer "+t)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return resp.StatusCode, body, err
}

// records lists the daemon's records under prefix.
func (d *daemon) records(ctx context.Context, prefix string) ([]store.Record, error) {
	code, body, err := d.get(ctx, "/api/v1/images", url.Values{"prefix": {prefix}})
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, errStatus("GET /api/v1/images", code, body)
	}
	var recs []store.Record
	return recs, json.Unmarshal(body, &recs)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
