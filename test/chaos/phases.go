package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/attestd/attestd/store"
)

// rndDur is a uniformly random duration in [lo, hi).
func (c *Campaign) rndDur(lo, hi time.Duration) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return lo + time.Duration(c.rnd.Int64N(int64(hi-lo)))
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// killPhase pushes the images in bursts while a killer SIGKILLs the daemon
// at random moments and starts it again on the same data directory.
func (c *Campaign) killPhase(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		killErr error
		mine    []*pushed
		pmu     sync.Mutex
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range c.o.Kills {
			if err := sleep(ctx, c.rndDur(300*time.Millisecond, 3*time.Second)); err != nil {
				return
			}
			c.d.kill()
			c.logf("kill -9 #%d", i+1)
			if err := sleep(ctx, c.rndDur(0, 800*time.Millisecond)); err != nil {
				return
			}
			if err := c.d.start(ctx); err != nil {
				killErr = fmt.Errorf("restart after kill #%d: %w", i+1, err)
				cancel()
				return
			}
		}
	}()
	for n := 0; n < c.o.Images; {
		var bw sync.WaitGroup
		var perr error
		for range min(c.o.Burst, c.o.Images-n) {
			i := n
			n++
			bw.Add(1)
			go func() {
				defer bw.Done()
				p, err := c.push(ctx, "kill", i%5 != 4, i%7 == 3)
				pmu.Lock()
				defer pmu.Unlock()
				if err != nil {
					perr = err
					return
				}
				mine = append(mine, p)
			}()
		}
		bw.Wait()
		if perr != nil {
			cancel()
			wg.Wait()
			return perr
		}
		c.logf("pushed %d/%d images", n, c.o.Images)
		if err := sleep(ctx, c.rndDur(500*time.Millisecond, 2*time.Second)); err != nil {
			break
		}
	}
	wg.Wait()
	if killErr != nil {
		return killErr
	}
	c.rep.Kills = c.d.kills
	_, err := c.waitFinal(ctx, mine, 5*time.Minute+time.Duration(c.o.Images)*3*time.Second)
	return err
}

// faultPhase: for each dependency, random faults for a while, then an
// outage, then recovery; images pushed throughout. Nothing pushed during a
// signing outage may be promoted before the outage ends.
func (c *Campaign) faultPhase(ctx context.Context) error {
	for _, comp := range []string{"registry", "fulcio", "tsa", "rekor", "oidc-token"} {
		var step []*pushed
		pushN := func(phase string) ([]*pushed, error) {
			var out []*pushed
			for range c.o.FaultImages {
				p, err := c.push(ctx, phase, true, false)
				if err != nil {
					return nil, err
				}
				out = append(out, p)
			}
			return out, nil
		}
		p := c.prox[comp]
		if p != nil {
			c.logf("%s: random faults (30%% of requests: 503, 429, resets, stalls, slow bodies) for %s", comp, c.o.FaultWindow)
			p.Mix(0.3)
			ps, err := pushN("faults:" + comp)
			if err != nil {
				return err
			}
			step = append(step, ps...)
			if err := sleep(ctx, c.o.FaultWindow); err != nil {
				return err
			}
			c.logf("%s: down for %s", comp, c.o.Outage)
			p.Down()
		} else {
			c.logf("oidc token: file missing for %s, then expired for %s", c.o.Outage/2, c.o.Outage/2)
			if err := os.Rename(c.tokenFile, c.tokenFile+".away"); err != nil {
				return err
			}
		}
		outageStart := time.Now()
		during, err := pushN("outage:" + comp)
		if err != nil {
			return err
		}
		step = append(step, during...)
		if p == nil {
			if err := sleep(ctx, c.o.Outage/2); err != nil {
				return err
			}
			// Expired before it is written: a token that is still valid
			// for a moment would be used, as it should be.
			expired, err := c.stk.Issuer.Token(identity, -time.Minute)
			if err != nil {
				return err
			}
			if err := os.WriteFile(c.tokenFile, []byte(expired), 0o600); err != nil {
				return err
			}
			if err := sleep(ctx, c.o.Outage/2); err != nil {
				return err
			}
		} else if err := sleep(ctx, max(0, c.o.Outage-time.Since(outageStart))); err != nil {
			return err
		}
		// Before recovery: nothing pushed during the outage is promoted.
		recs, err := c.d.records(ctx, c.regHost+"/staging/")
		if err != nil {
			return fmt.Errorf("records at the end of the %s outage: %w", comp, err)
		}
		for _, r := range recs {
			for _, x := range during {
				if r.Ref == x.ref && r.State == store.StatePromoted && comp != "registry" {
					c.rep.PromotedInOutage = append(c.rep.PromotedInOutage, comp+": "+x.ref)
				}
			}
		}
		if p != nil {
			p.Set()
		} else {
			_ = os.Remove(c.tokenFile + ".away")
			tok, err := c.stk.Issuer.Token(identity, 6*time.Hour)
			if err != nil {
				return err
			}
			if err := os.WriteFile(c.tokenFile, []byte(tok), 0o600); err != nil {
				return err
			}
		}
		end := time.Now()
		c.logf("%s: back", comp)
		if _, err := c.waitFinal(ctx, step, 3*time.Minute); err != nil {
			return fmt.Errorf("after the %s outage: %w", comp, err)
		}
		f := faultFigures{Component: comp, Outage: c.o.Outage, Recovery: time.Since(end), Images: len(step)}
		if p != nil {
			f.Counts, f.Refused = p.Counts()
		}
		c.rep.Faults = append(c.rep.Faults, f)
		if !c.d.alive() {
			return errors.New("the daemon exited during the fault phase")
		}
	}
	return nil
}

// diskPhase fills the data directory's filesystem, pushes images while it
// is full, then frees it: intake must answer 503 (the registry retries),
// /readyz must say why, and everything must resume by itself.
func (c *Campaign) diskPhase(ctx context.Context) error {
	if c.mount == "" {
		c.rep.Disk = diskFigures{Skipped: "the data directory is not on a filesystem the campaign could mount (needs root)"}
		return nil
	}
	before := c.rly.answers()[http.StatusServiceUnavailable]
	filler := filepath.Join(c.d.dataDir, "chaos-filler")
	f, err := os.Create(filler)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	var filled int64
	for {
		n, err := f.Write(buf)
		filled += int64(n)
		if err != nil {
			break
		}
	}
	f.Close()
	c.logf("disk: filled (%d MiB written until ENOSPC)", filled>>20)
	full := time.Now()
	var during []*pushed
	for range c.o.FaultImages {
		p, err := c.push(ctx, "disk", true, false)
		if err != nil {
			return err
		}
		during = append(during, p)
	}
	var said string
	for time.Since(full) < c.o.DiskHold {
		code, body, err := c.d.get(ctx, "/readyz", nil)
		if err == nil && code != http.StatusOK && said == "" {
			said = fmt.Sprintf("%d %s", code, strings.Join(strings.Fields(string(body)), " "))
			c.rep.Disk.ReadyzAfter = time.Since(full)
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	c.rep.Disk.Readyz = said
	ans := c.rly.answers()
	c.rep.Disk.Intake503 = ans[http.StatusServiceUnavailable] - before
	if !c.d.alive() {
		return errors.New("the daemon exited while the disk was full")
	}
	if err := os.Remove(filler); err != nil {
		return err
	}
	freed := time.Now()
	c.logf("disk: freed")
	if _, err := c.waitFinal(ctx, during, 3*time.Minute); err != nil {
		return fmt.Errorf("after the disk was freed: %w", err)
	}
	c.rep.Disk.Recovery = time.Since(freed)
	for {
		code, _, err := c.d.get(ctx, "/readyz", nil)
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Since(freed) > time.Minute {
			c.rep.Disk.ReadyAgain = "not ready a minute after the disk was freed"
			break
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	c.rep.Disk.Images = len(during)
	c.rep.Disk.Filled = filled
	return nil
}

// waitFinal polls the daemon until every image in ps is in a final state.
func (c *Campaign) waitFinal(ctx context.Context, ps []*pushed, timeout time.Duration) (map[string]store.Record, error) {
	deadline := time.Now().Add(timeout)
	for {
		recs, err := c.d.records(ctx, c.regHost+"/")
		byRef := map[string]store.Record{}
		for _, r := range recs {
			byRef[r.Ref] = r
		}
		var waiting []string
		for _, p := range ps {
			if r, ok := byRef[p.ref]; !ok || !r.State.Final() {
				st := "unknown to the daemon"
				if ok {
					st = string(r.State)
					if r.LastError != "" {
						st += ": " + r.LastError
					}
				}
				waiting = append(waiting, p.ref+" ("+st+")")
			}
		}
		if err == nil && len(waiting) == 0 {
			return byRef, nil
		}
		if !c.d.alive() {
			return nil, errors.New("the daemon exited by itself")
		}
		if time.Now().After(deadline) {
			slices.Sort(waiting)
			if len(waiting) > 10 {
				waiting = append(waiting[:10], fmt.Sprintf("… and %d more", len(waiting)-10))
			}
			return nil, fmt.Errorf("%w after %s waiting for final states (err %v):\n  %s", errTimeout, timeout, err, strings.Join(waiting, "\n  "))
		}
		if err := sleep(ctx, time.Second); err != nil {
			return nil, err
		}
	}
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, de os.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if fi, err := de.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
