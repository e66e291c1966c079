package chaos

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/audit"
)

// Report is what a campaign measured and the invariants it checked.
type Report struct {
	Seed   uint64
	Wall   time.Duration
	Phases []phaseTime

	Kills            int
	Starts           int
	Interrupted      int // jobs a kill cut short (resumed at the next start)
	Faults           []faultFigures
	PromotedInOutage []string
	Disk             diskFigures
	Hostile          []hostileResult
	Escaped          []string

	Acked, AckedRecorded int
	Answers              map[int]int
	States               map[string]int
	Promotions           int
	PromotedTwice        []string
	ProdTags             int
	ProdBad              []string // prod tags without a verified allow
	AllowMissing         []string // allowed images not in prod
	AuditErr             string
	AuditEntries         int
	NotFinal             []string
	TempFiles            []string
	CacheBytes, CacheCap int64
	PeakRSS, RSSCeiling  int64
	DiedByItself         bool

	Invariants []Invariant
}

// Invariant is one row of the table.
type Invariant struct {
	Name, Value string
	OK          bool
}

type phaseTime struct {
	Name string
	Took time.Duration
}

type faultFigures struct {
	Component        string
	Counts           map[Fault]int64
	Refused          int64
	Outage, Recovery time.Duration
	Images           int
}

type diskFigures struct {
	Skipped     string
	Filled      int64
	Readyz      string
	ReadyzAfter time.Duration
	Intake503   int
	Recovery    time.Duration
	ReadyAgain  string
	Images      int
}

// Failed lists the invariants that do not hold.
func (r *Report) Failed() []string {
	var out []string
	for _, in := range r.Invariants {
		if !in.OK {
			out = append(out, in.Name+": "+in.Value)
		}
	}
	return out
}

// finish waits for every image, stops the daemon and checks the
// invariants against the store, the registry and the stock cosign CLI.
func (c *Campaign) finish(ctx context.Context) error {
	c.mu.Lock()
	all := append([]*pushed(nil), c.images...)
	c.mu.Unlock()
	_, werr := c.waitFinal(ctx, all, 5*time.Minute)
	if werr != nil {
		c.logf("not every image is final: %v", werr)
	}
	c.rep.DiedByItself = !c.d.alive()
	c.d.stop()
	c.rep.Starts, c.rep.PeakRSS, c.rep.RSSCeiling = c.d.starts, c.d.peakRSS.Load(), c.o.RSSCeiling
	c.rep.Answers = c.rly.answers()

	db, err := store.Open(filepath.Join(c.d.dataDir, "attestd.db"))
	if err != nil {
		return fmt.Errorf("open the daemon's store after the run: %w", err)
	}
	defer db.Close()
	// Every image the campaign pushed whose event the daemon acknowledged
	// is recorded (the registry also notifies about attestd's own
	// referrers and index children: those are not images to record).
	acked := c.rly.ackedSet()
	for _, p := range all {
		if !acked[p.repo+"@"+p.digest] {
			continue
		}
		c.rep.Acked++
		if _, err := db.Image(ctx, p.ref); err == nil {
			c.rep.AckedRecorded++
		}
	}
	if jobs, err := db.Jobs(ctx); err == nil {
		for _, j := range jobs {
			if j.Interrupted > 0 {
				c.rep.Interrupted++
			}
		}
	}
	c.rep.States = map[string]int{}
	for _, p := range all {
		r, err := db.Image(ctx, p.ref)
		if err != nil {
			c.rep.NotFinal = append(c.rep.NotFinal, p.ref+": not recorded")
			continue
		}
		c.rep.States[string(r.State)]++
		if !r.State.Final() {
			c.rep.NotFinal = append(c.rep.NotFinal, fmt.Sprintf("%s: %s (%s)", p.ref, r.State, r.LastError))
		}
	}
	// Promotions, from the audit log; and the chain.
	seen := map[string]int{}
	err = db.AuditEntries(ctx, 0, func(e store.AuditEntry, _ []byte) error {
		c.rep.AuditEntries++
		if e.Action == store.AuditPromotion {
			c.rep.Promotions++
			seen[e.Digest+" → "+e.Details["to"]]++
		}
		return nil
	})
	if err != nil {
		return err
	}
	for k, n := range seen {
		if n > 1 {
			c.rep.PromotedTwice = append(c.rep.PromotedTwice, fmt.Sprintf("%s (%d times)", k, n))
		}
	}
	if _, err := audit.Verify(ctx, db); err != nil {
		c.rep.AuditErr = err.Error()
	}
	c.checkProd(ctx, all)
	c.checkFiles()
	c.invariants(werr)
	return nil
}

// checkProd lists every prod repository of the registry (directly, not
// through attestd) and verifies each tag with the stock cosign CLI: the
// image signature, and a VSA that says PASSED.
func (c *Campaign) checkProd(ctx context.Context, all []*pushed) {
	reg, _ := name.NewRegistry(c.stk.RegistryHost)
	repos, err := remote.Catalog(ctx, reg, remote.WithContext(ctx))
	if err != nil {
		c.rep.ProdBad = append(c.rep.ProdBad, "catalog: "+err.Error())
		return
	}
	allowed := map[string]*pushed{}
	for _, p := range all {
		if p.allow {
			allowed[p.digest] = p
		}
	}
	type tagged struct {
		ref    name.Tag
		digest string
	}
	var prod []tagged
	for _, repo := range repos {
		if !strings.HasPrefix(repo, "prod/") {
			continue
		}
		r, _ := name.NewRepository(c.stk.RegistryHost + "/" + repo)
		tags, err := remote.List(r, remote.WithContext(ctx))
		if err != nil {
			c.rep.ProdBad = append(c.rep.ProdBad, repo+": "+err.Error())
			continue
		}
		for _, t := range tags {
			if strings.HasPrefix(t, "sha256-") {
				continue // referrers fallback tags
			}
			desc, err := remote.Head(r.Tag(t), remote.WithContext(ctx))
			if err != nil {
				c.rep.ProdBad = append(c.rep.ProdBad, r.Tag(t).String()+": "+err.Error())
				continue
			}
			prod = append(prod, tagged{r.Tag(t), desc.Digest.String()})
		}
	}
	c.rep.ProdTags = len(prod)
	// The stock cosign CLI checks each tag, four at a time.
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		sem    = make(chan struct{}, 4)
		inProd = map[string]bool{}
	)
	for _, pt := range prod {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := c.verifyVSA(ctx, pt.ref.String())
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				c.rep.ProdBad = append(c.rep.ProdBad, pt.ref.String()+" ("+pt.digest+"): "+err.Error())
			case allowed[pt.digest] == nil:
				c.rep.ProdBad = append(c.rep.ProdBad, pt.ref.String()+": "+pt.digest+" was not expected to be promoted")
			default:
				inProd[pt.digest] = true
			}
		}()
	}
	wg.Wait()
	for d, p := range allowed {
		if !inProd[d] {
			c.rep.AllowMissing = append(c.rep.AllowMissing, p.ref+" ("+p.phase+")")
		}
	}
	slices.Sort(c.rep.AllowMissing)
}

// verifyVSA runs cosign verify and cosign verify-attestation --type
// verification_summary on ref and checks the VSA says PASSED.
func (c *Campaign) verifyVSA(ctx context.Context, ref string) error {
	vctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := c.stk.Cosign(vctx, append(append([]string{"verify"}, c.stk.VerifyArgs(identity)...), ref)...); err != nil {
		return fmt.Errorf("cosign verify: %w", err)
	}
	out, err := c.stk.Cosign(vctx, append(append([]string{"verify-attestation", "--type", "https://slsa.dev/verification_summary/v1"}, c.stk.VerifyArgs(identity)...), ref)...)
	if err != nil {
		return fmt.Errorf("cosign verify-attestation (VSA): %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var env struct {
			Payload string `json:"payload"`
		}
		if json.Unmarshal([]byte(line), &env) != nil || env.Payload == "" {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(env.Payload)
		if err != nil {
			continue
		}
		var st struct {
			Predicate struct {
				VerificationResult string `json:"verificationResult"`
			} `json:"predicate"`
		}
		if json.Unmarshal(raw, &st) == nil && st.Predicate.VerificationResult == "PASSED" {
			return nil
		}
	}
	return fmt.Errorf("no VSA with verificationResult PASSED")
}

// checkFiles: no temp files left behind, the layer cache within its cap.
func (c *Campaign) checkFiles() {
	_ = filepath.WalkDir(c.d.dataDir, func(p string, de os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		n := de.Name()
		if strings.HasPrefix(n, "partial-") || strings.HasSuffix(n, ".tmp") || strings.HasPrefix(n, ".tmp") || strings.Contains(n, "-tmp-") {
			c.rep.TempFiles = append(c.rep.TempFiles, p)
		}
		return nil
	})
	c.rep.CacheBytes = dirBytes(filepath.Join(c.d.dataDir, "cache", "layers"))
	c.rep.CacheCap = 256 << 20
}

func (c *Campaign) invariants(werr error) {
	r := &c.rep
	add := func(name string, ok bool, format string, args ...any) {
		r.Invariants = append(r.Invariants, Invariant{name, fmt.Sprintf(format, args...), ok})
	}
	add("acknowledged events recorded", r.Acked > 0 && r.Acked == r.AckedRecorded, "%d of %d (%d lost)", r.AckedRecorded, r.Acked, r.Acked-r.AckedRecorded)
	final := "all final"
	if werr != nil || len(r.NotFinal) > 0 {
		final = fmt.Sprintf("%d not final: %s", len(r.NotFinal), strings.Join(first(r.NotFinal, 5), "; "))
	}
	add("every image final (or retrying with a reason)", len(r.NotFinal) == 0, "%s; states %v", final, r.States)
	add("no digest promoted twice", len(r.PromotedTwice) == 0, "%d promotions; twice: %v", r.Promotions, r.PromotedTwice)
	add("every prod tag has a verified allow (cosign)", len(r.ProdBad) == 0 && r.ProdTags > 0, "%d prod tags; bad: %v", r.ProdTags, first(r.ProdBad, 5))
	add("every allowed image reached prod", len(r.AllowMissing) == 0, "missing: %v", first(r.AllowMissing, 5))
	add("nothing promoted while signing was down", len(r.PromotedInOutage) == 0, "%v", r.PromotedInOutage)
	add("audit chain verifies", r.AuditErr == "", "%d entries %s", r.AuditEntries, r.AuditErr)
	add("no temp files left", len(r.TempFiles) == 0, "%v", first(r.TempFiles, 5))
	add("layer cache within its cap", r.CacheBytes <= r.CacheCap, "%d MiB of %d MiB", r.CacheBytes>>20, r.CacheCap>>20)
	add("peak RSS under the ceiling", r.PeakRSS > 0 && r.PeakRSS <= r.RSSCeiling, "%d MiB (ceiling %d MiB)", r.PeakRSS>>20, r.RSSCeiling>>20)
	add("never needed a manual restart", !r.DiedByItself, "%d starts for %d kills", r.Starts, r.Kills)
	if r.Disk.Skipped == "" {
		ok := r.Disk.Readyz != "" && r.Disk.ReadyAgain == ""
		add("disk full: /readyz said so, then recovered by itself", ok, "readyz %q after %s; intake 503s %d; recovered in %s %s",
			r.Disk.Readyz, r.Disk.ReadyzAfter.Round(time.Millisecond), r.Disk.Intake503, r.Disk.Recovery.Round(time.Second), r.Disk.ReadyAgain)
	}
	var bad []string
	for _, h := range r.Hostile {
		if !h.OK {
			bad = append(bad, h.Name+": "+h.Outcome)
		}
	}
	add("hostile images denied or read safely", len(bad) == 0 && len(r.Escaped) == 0, "bad: %v; files outside: %v", bad, r.Escaped)
}

func first(xs []string, n int) []string {
	if len(xs) > n {
		return append(xs[:n:n], fmt.Sprintf("… %d more", len(xs)-n))
	}
	return xs
}

// Write prints the report: figures, then the invariant table.
func (r *Report) Write(w io.Writer) {
	fmt.Fprintf(w, "\n# attestd chaos campaign (seed %d, %s)\n\n", r.Seed, r.Wall.Round(time.Second))
	for _, p := range r.Phases {
		fmt.Fprintf(w, "- phase %-15s %s\n", p.Name, p.Took.Round(time.Second))
	}
	fmt.Fprintf(w, "\nkill -9: %d kills survived, %d daemon starts, %d jobs cut short by a kill and resumed\n", r.Kills, r.Starts, r.Interrupted)
	fmt.Fprintf(w, "webhook answers seen by the registry (0: daemon unreachable): %v\n\n", r.Answers)
	fmt.Fprintln(w, "| component | 503 | 429 | reset | stall | slow body | refused in outage | outage | recovery (push→final of its images) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, f := range r.Faults {
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d | %s | %s |\n", f.Component, f.Counts[Status503], f.Counts[Status429], f.Counts[Reset],
			f.Counts[Stall], f.Counts[SlowBody], f.Refused, f.Outage, f.Recovery.Round(100*time.Millisecond))
	}
	if r.Disk.Skipped != "" {
		fmt.Fprintf(w, "\ndisk full: skipped (%s)\n", r.Disk.Skipped)
	} else {
		fmt.Fprintf(w, "\ndisk full: filled %d MiB; /readyz after %s: %q; intake 503s %d; recovered %s after freeing\n",
			r.Disk.Filled>>20, r.Disk.ReadyzAfter.Round(time.Millisecond), r.Disk.Readyz, r.Disk.Intake503, r.Disk.Recovery.Round(time.Second))
	}
	fmt.Fprintln(w, "\n| hostile image | outcome | took | data dir after |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, h := range r.Hostile {
		fmt.Fprintf(w, "| %s | %s | %s | %d MiB |\n", h.Name, strings.ReplaceAll(h.Outcome, "|", "/"), h.Took.Round(100*time.Millisecond), h.DataBytes>>20)
	}
	fmt.Fprintln(w, "\n| invariant | holds | value |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, in := range r.Invariants {
		ok := "yes"
		if !in.OK {
			ok = "**NO**"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", in.Name, ok, strings.ReplaceAll(in.Value, "|", "/"))
	}
}
