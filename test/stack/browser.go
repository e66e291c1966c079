package stack

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/net/websocket"
)

// Chromium is Debian's chromium, installed with apt-get when missing.
func Chromium(ctx context.Context, log io.Writer) (string, error) {
	return AptBinary(ctx, log, "chromium", "chromium", "/usr/bin/chromium")
}

// Rendered is a page as headless Chromium rendered it.
type Rendered struct {
	Text string // document.body.innerText: what a reader sees
	PNG  []byte // a full-page screenshot
}

// Render opens pageURL in a fresh headless Chromium (its own profile, no
// background networking) at width×height, waits for the load, and returns
// the rendered text and a screenshot, through the DevTools protocol.
func Render(ctx context.Context, chromium, pageURL string, width, height int) (*Rendered, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	profile, err := os.MkdirTemp("", "attestd-chromium-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(profile)
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--user-data-dir="+profile,
		fmt.Sprintf("--window-size=%d,%d", width, height), "about:blank")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	// Chromium writes the port it chose to DevToolsActivePort.
	var port string
	for port == "" {
		if b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort")); err == nil {
			port, _, _ = strings.Cut(string(b), "\n")
		}
		if port == "" {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("chromium did not open its DevTools port: %w\n%s", ctx.Err(), tail(stderr.String(), 20))
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	base := "http://127.0.0.1:" + port
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, base+"/json/new?"+url.QueryEscape(pageURL), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("devtools: new page: %w", err)
	}
	var target struct {
		WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
	}
	err = json.NewDecoder(resp.Body).Decode(&target)
	resp.Body.Close()
	if err != nil || target.WebSocketDebuggerURL == "" {
		return nil, fmt.Errorf("devtools: new page: %v", err)
	}
	ws, err := websocket.Dial(target.WebSocketDebuggerURL, "", base)
	if err != nil {
		return nil, fmt.Errorf("devtools: %w", err)
	}
	defer ws.Close()
	cdp := &devtools{ws: ws}
	if dl, ok := ctx.Deadline(); ok {
		_ = ws.SetDeadline(dl)
	}
	// Wait for the document to finish loading.
	for {
		var st struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		// The new page starts as about:blank: wait for the URL asked for.
		if err := cdp.call("Runtime.evaluate", map[string]any{"expression": "document.readyState + ' ' + location.href", "returnByValue": true}, &st); err != nil {
			return nil, err
		}
		if state, href, _ := strings.Cut(st.Result.Value, " "); state == "complete" && href == pageURL {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var text struct {
		Result struct {
			Value string `json:"value"`
		} `json:"result"`
	}
	if err := cdp.call("Runtime.evaluate", map[string]any{"expression": "document.body.innerText", "returnByValue": true}, &text); err != nil {
		return nil, err
	}
	var shot struct {
		Data string `json:"data"`
	}
	if err := cdp.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot); err != nil {
		return nil, err
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		return nil, fmt.Errorf("devtools: screenshot: %w", err)
	}
	return &Rendered{Text: text.Result.Value, PNG: png}, nil
}

// devtools is a minimal Chrome DevTools Protocol client: one call at a
// time, events skipped.
type devtools struct {
	ws   *websocket.Conn
	next int
}

func (d *devtools) call(method string, params any, out any) error {
	d.next++
	id := d.next
	if err := websocket.JSON.Send(d.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		return fmt.Errorf("devtools %s: %w", method, err)
	}
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := websocket.JSON.Receive(d.ws, &msg); err != nil {
			return fmt.Errorf("devtools %s: %w", method, err)
		}
		if msg.ID != id {
			continue // an event
		}
		if msg.Error != nil {
			return errors.New("devtools " + method + ": " + msg.Error.Message)
		}
		return json.Unmarshal(msg.Result, out)
	}
}
