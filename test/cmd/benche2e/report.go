package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// imageResult is every run on one image.
type imageResult struct {
	name    string
	cli     []cliSample
	att     []attSample
	floor   []time.Duration // layers read
	gz, raw int64           // layer bytes read by the floor, compressed and not
}

// report is the whole run.
type report struct {
	host, version string
	runs, workers int
	fleetN        int
	cliFleetN     int
	images        []*imageResult
	rekor         []time.Duration
	fleet         []fleetResult
	elapsed       time.Duration
}

// stageOrder is the pipeline's order; stages the daemon reports under other
// names follow, sorted.
var stageOrder = []string{"resolve", "analyse", "sign", "evaluate", "promote"}

func median(xs []time.Duration) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianOf[T any](xs []T, f func(T) time.Duration) time.Duration {
	ds := make([]time.Duration, len(xs))
	for i, x := range xs {
		ds[i] = f(x)
	}
	return median(ds)
}

// s2 formats seconds; a few milliseconds below zero (the webhook's job
// recorded before the push call returned) print as 0.
func s2(d time.Duration) string {
	if d < 0 && d > -10*time.Millisecond {
		d = 0
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", a.Seconds()/b.Seconds())
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func (ir *imageResult) cliTotal() time.Duration {
	return medianOf(ir.cli, func(s cliSample) time.Duration { return s.total })
}

func (ir *imageResult) attTotal() time.Duration {
	return medianOf(ir.att, func(s attSample) time.Duration { return s.total })
}

func (r *report) floor(ir *imageResult) time.Duration { return median(ir.floor) + median(r.rekor) }

// stages lists the stage names seen in any sample, in pipeline order.
func stageNames(sets ...map[string]time.Duration) []string {
	seen := map[string]bool{}
	for _, s := range sets {
		for k := range s {
			seen[k] = true
		}
	}
	var out []string
	for _, k := range stageOrder {
		if seen[k] {
			out = append(out, k)
			delete(seen, k)
		}
	}
	rest := make([]string, 0, len(seen))
	for k := range seen {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// medianReqs is the run whose total is the median (its classes then add up
// to the total shown).
func medianReqs(xs []requests) requests {
	if len(xs) == 0 {
		return requests{}
	}
	s := slices.Clone(xs)
	sort.SliceStable(s, func(i, j int) bool { return s[i].total < s[j].total })
	return s[(len(s)-1)/2]
}

func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "attestd bench-e2e — %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "%s; %s\n", r.version, r.host)
	fmt.Fprintf(w, "Local stack: Debian docker-registry (webhooks), Fulcio, TSA, Rekor v2 (1 s checkpoint), own OIDC issuer.\n")
	fmt.Fprintf(w, "Every image is on a fresh digest (a nonce layer on the fixture). Clocks start when the push has finished.\n\n")

	if len(r.images) > 0 {
		r.writePerImage(w)
	}
	if len(r.fleet) > 0 {
		r.writeFleet(w)
	}
	if len(r.images) > 0 || len(r.fleet) > 0 {
		r.writeRequests(w)
	}
	r.writeTargets(w)
	fmt.Fprintf(w, "\nWhole run (setup included): %s\n", r.elapsed.Round(time.Second))
}

func (r *report) writePerImage(w io.Writer) {
	runs := fmt.Sprintf("median of %d runs", r.runs)
	if r.runs == 1 {
		runs = "1 run"
	}
	fmt.Fprintf(w, "Per image, %s:\n", runs)
	fmt.Fprintf(w, "  CLI: syft (one scan) → cosign attest ×3 → cosign sign → crane copy ×2, + cosign verify on the prod tag\n")
	fmt.Fprintf(w, "  attestd: push → prod tag (webhook, daemon on an empty data dir), + cosign verify on the prod tag\n")
	fmt.Fprintf(w, "  floor: every layer GET once + gunzip + sha256 (in process), + one Rekor v2 round\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "image\tlayers (gzip / tar)\tCLI + verify\tattestd + verify\tattestd / CLI\tfloor\tattestd / floor\t\n")
	for _, ir := range r.images {
		c, a, f := ir.cliTotal(), ir.attTotal(), r.floor(ir)
		fmt.Fprintf(tw, "%s\t%s / %s\t%s\t%s\t%s\t%s\t%s\t\n", ir.name, mb(ir.gz), mb(ir.raw), s2(c), s2(a), ratio(a, c), s2(f), ratio(a, f))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nCLI pipeline steps (median):\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "step\t%s\t\n", r.imageHeader())
	for _, st := range cliSteps {
		fmt.Fprintf(tw, "%s", st)
		for _, ir := range r.images {
			fmt.Fprintf(tw, "\t%s", s2(medianOf(ir.cli, func(s cliSample) time.Duration { return s.steps[st] })))
		}
		fmt.Fprintf(tw, "\t\n")
	}
	tw.Flush()

	fmt.Fprintf(w, "\nattestd (median; stages from the daemon's attestd_stage_duration_seconds histogram):\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\t%s\t\n", r.imageHeader())
	row := func(label string, f func(attSample) time.Duration) {
		fmt.Fprintf(tw, "%s", label)
		for _, ir := range r.images {
			fmt.Fprintf(tw, "\t%s", s2(medianOf(ir.att, f)))
		}
		fmt.Fprintf(tw, "\t\n")
	}
	row("push finished → job recorded (webhook)", func(s attSample) time.Duration { return s.intake })
	var sets []map[string]time.Duration
	for _, ir := range r.images {
		for _, s := range ir.att {
			sets = append(sets, s.stages)
		}
	}
	for _, st := range stageNames(sets...) {
		row("  stage "+st, func(s attSample) time.Duration { return s.stages[st] })
	}
	row("push finished → promoted (seen by polling the API)", func(s attSample) time.Duration { return s.promoted })
	row("cosign verify (prod tag)", func(s attSample) time.Duration { return s.verify })
	row("total", func(s attSample) time.Duration { return s.total })
	tw.Flush()

	fmt.Fprintf(w, "\nFloor (median):\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\t%s\t\n", r.imageHeader())
	fmt.Fprintf(tw, "layers read + gunzip + sha256")
	for _, ir := range r.images {
		fmt.Fprintf(tw, "\t%s", s2(median(ir.floor)))
	}
	fmt.Fprintf(tw, "\t\none Rekor v2 round (sigstore-go, ephemeral key, hashedrekord)")
	for range r.images {
		fmt.Fprintf(tw, "\t%s", s2(median(r.rekor)))
	}
	fmt.Fprintf(tw, "\t\nfloor")
	for _, ir := range r.images {
		fmt.Fprintf(tw, "\t%s", s2(r.floor(ir)))
	}
	fmt.Fprintf(tw, "\t\n")
	tw.Flush()
	fmt.Fprintf(w, "(Rekor rounds: %s)\n\n", durations(r.rekor))
}

func durations(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = s2(d)
	}
	return strings.Join(s, ", ")
}

func (r *report) imageHeader() string {
	names := make([]string, len(r.images))
	for i, ir := range r.images {
		names[i] = ir.name
	}
	return strings.Join(names, "\t")
}

func (r *report) writeFleet(w io.Writer) {
	if r.cliFleetN != r.fleetN {
		fmt.Fprintf(w, "Fleet: %d images (attestd), %d (each CLI fleet) on a shared Debian base (each base + its own nonce layer, its own repository), pushed at once.\n", r.fleetN, r.cliFleetN)
	} else {
		fmt.Fprintf(w, "Fleet: %d images on a shared Debian base (each base + its own nonce layer, its own repository), pushed at once.\n", r.fleetN)
	}
	fmt.Fprintf(w, "  CLI: clock from the last push finished to the last pipeline done (no cosign verify; one image verified after).\n")
	fmt.Fprintf(w, "  attestd: daemon on an empty data dir, clock from the first push finished to every image promoted (one verified after).\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "pipeline\timages\twall\timages/min\tpush (not timed)\t\n")
	for _, f := range r.fleet {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.1f\t%s\t\n", f.label, f.n, s2(f.wall), perMin(f.n, f.wall), s2(f.push))
	}
	tw.Flush()
	if a, seq, best := r.fleetRatios(); a != nil {
		fmt.Fprintf(w, "attestd / sequential CLI: %.2f× the rate; attestd / best CLI (%s): %.2f× the rate\n",
			perMin(a.n, a.wall)/perMin(seq.n, seq.wall), best.label, perMin(a.n, a.wall)/perMin(best.n, best.wall))
	}
	for _, f := range r.fleet {
		if f.stages == nil {
			continue
		}
		var parts []string
		for _, st := range stageNames(f.stages) {
			if n := f.counts[st]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %s", st, s2(f.stages[st]/time.Duration(n))))
			}
		}
		fmt.Fprintf(w, "attestd stage means in the fleet (per call): %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
}

// fleetRatios finds attestd's fleet, the sequential CLI one and the
// fastest CLI one.
func (r *report) fleetRatios() (a, seq, best *fleetResult) {
	for i := range r.fleet {
		f := &r.fleet[i]
		switch {
		case strings.HasPrefix(f.label, "attestd"):
			a = f
		case strings.HasSuffix(f.label, "P=1"):
			seq = f
		}
		if !strings.HasPrefix(f.label, "attestd") && (best == nil || perMin(f.n, f.wall) > perMin(best.n, best.wall)) {
			best = f
		}
	}
	if a == nil || seq == nil || best == nil {
		return nil, nil, nil
	}
	return a, seq, best
}

func (r *report) writeRequests(w io.Writer) {
	fmt.Fprintf(w, "Registry requests per image (the registry's access log; the harness's own requests left out):\n")
	fmt.Fprintf(w, "  attestd: push finished → promoted (the run with the median total); fleet: all requests / N\n\n")
	var cols []string
	var sets []requests
	for _, ir := range r.images {
		var xs []requests
		for _, s := range ir.att {
			xs = append(xs, s.reqs)
		}
		cols = append(cols, ir.name)
		sets = append(sets, medianReqs(xs))
	}
	var fleet *fleetResult
	for i := range r.fleet {
		if r.fleet[i].reqs.byClass != nil {
			fleet = &r.fleet[i]
			cols = append(cols, "fleet / image")
			sets = append(sets, fleet.reqs)
		}
	}
	classes := map[string]bool{}
	for _, s := range sets {
		for k := range s.byClass {
			classes[k] = true
		}
	}
	keys := make([]string, 0, len(classes))
	for k := range classes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		// By what is addressed, then method.
		mi, wi, _ := strings.Cut(keys[i], " ")
		mj, wj, _ := strings.Cut(keys[j], " ")
		if wi != wj {
			return wi < wj
		}
		return mi < mj
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "attestd request\t%s\t\n", strings.Join(cols, "\t"))
	cell := func(i, v int) string {
		if fleet != nil && i == len(sets)-1 {
			return fmt.Sprintf("%.1f", float64(v)/float64(fleet.n))
		}
		return fmt.Sprint(v)
	}
	for _, k := range keys {
		fmt.Fprintf(tw, "%s", k)
		for i, s := range sets {
			fmt.Fprintf(tw, "\t%s", cell(i, s.byClass[k]))
		}
		fmt.Fprintf(tw, "\t\n")
	}
	fmt.Fprintf(tw, "total\t")
	for i, s := range sets {
		fmt.Fprintf(tw, "%s\t", cell(i, s.total))
	}
	fmt.Fprintf(tw, "\n")
	if len(r.images) > 0 {
		fmt.Fprintf(tw, "attestd's own counter (attestd_registry_responses_total)\t")
		for _, ir := range r.images {
			var xs []time.Duration // reuse median over ints
			for _, s := range ir.att {
				xs = append(xs, time.Duration(s.counter))
			}
			fmt.Fprintf(tw, "%d\t", int(median(xs)))
		}
		fmt.Fprintf(tw, "\nCLI pipeline total (syft, cosign, crane; verify included)\t")
		for _, ir := range r.images {
			var xs []requests
			for _, s := range ir.cli {
				xs = append(xs, s.reqs)
			}
			fmt.Fprintf(tw, "%d\t", medianReqs(xs).total)
		}
		fmt.Fprintf(tw, "\n")
	}
	tw.Flush()
	clients := map[string]int{}
	for _, s := range sets {
		for k, v := range s.byClient {
			clients[k] += v
		}
	}
	var cs []string
	for k, v := range clients {
		cs = append(cs, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(cs)
	fmt.Fprintf(w, "(User-Agents of these requests, all columns together: %s.\n", strings.Join(cs, ", "))
	fmt.Fprintf(w, " Only the daemon and the harness talk to the registry in these windows: one not starting attestd/ is the daemon's too.)\n\n")
}

// writeTargets prints the targets next to the figures. Nothing
// asserts on them.
func (r *report) writeTargets(w io.Writer) {
	fmt.Fprintf(w, "Targets from the issue (informational):\n")
	var speed, floor, reqs []string
	for _, ir := range r.images {
		c, a := ir.cliTotal(), ir.attTotal()
		speed = append(speed, fmt.Sprintf("%s %.2f×", ir.name, c.Seconds()/a.Seconds()))
		floor = append(floor, fmt.Sprintf("%s %s×", ir.name, ratio(a, r.floor(ir))))
		var xs []requests
		for _, s := range ir.att {
			xs = append(xs, s.reqs)
		}
		reqs = append(reqs, fmt.Sprintf("%s %d", ir.name, medianReqs(xs).total))
	}
	if len(r.images) > 0 {
		fmt.Fprintf(w, "  per image ≥ 4× faster than CLI (CLI / attestd):   %s\n", strings.Join(speed, ", "))
		fmt.Fprintf(w, "  per image within 1.5× the floor (attestd / floor): %s\n", strings.Join(floor, ", "))
		fmt.Fprintf(w, "  registry requests per image ≤ 40:                  %s\n", strings.Join(reqs, ", "))
	}
	if a, seq, best := r.fleetRatios(); a != nil {
		fmt.Fprintf(w, "  fleet ≥ 10× sequential CLI:                        %.2f× (attestd N=%d, CLI N=%d; the issue's fleet is 200)\n",
			perMin(a.n, a.wall)/perMin(seq.n, seq.wall), a.n, seq.n)
		fmt.Fprintf(w, "  fleet ≥ 3.5× best CLI parallelism:                 %.2f× (%s)\n",
			perMin(a.n, a.wall)/perMin(best.n, best.wall), best.label)
		fmt.Fprintf(w, "  fleet registry requests per image:                 %.1f\n", float64(a.reqs.total)/float64(a.n))
	}
}
