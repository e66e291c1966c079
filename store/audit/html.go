package audit

import (
	"context"
	"fmt"
	"html/template"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/attestd/attestd/store"
)

// FormatHTML is the self-contained compliance report.
const FormatHTML = "html"

// ReportImage is one digest's row in the HTML report.
type ReportImage struct {
	Ref, Repo, Digest, State string
	Packages                 int
	Vulns                    *store.VulnCounts
	HardeningFailed          []string
	Decision                 string // allow, deny, —
	Reasons                  []string
	PromotedTo               []string
	Overrides                []string
}

// Summary are the report's headline counts.
type Summary struct {
	Images, Promoted, Denied, Failed, Pending int
	Entries                                   int
	Overrides                                 int
	Head                                      string
	Intact                                    bool
	Problem                                   string
}

// dayCount is decisions per day, for the chart.
type dayCount struct {
	Day               string
	Allow, Deny       int
	X, YA, HA, HD, YD float64 // bar geometry
}

// HTML writes one self-contained HTML file (inline CSS and SVG, no
// scripts, no external assets): headline counts and the log's integrity,
// a row per digest (SBOM packages, vulnerabilities by severity, hardening
// failures, decision and its reasons, where it was promoted), decisions
// per day as a bar chart, and the denial reasons. Entries outside f are
// left out; the images are those the filtered entries name. It reads the
// log once (streaming) and the records of the images it names.
func HTML(ctx context.Context, db *store.DB, w io.Writer, f Filter, now time.Time) (int, error) {
	rep, verr := Verify(ctx, db)
	sum := Summary{Intact: verr == nil}
	if verr != nil {
		sum.Problem = verr.Error()
	} else {
		sum.Head = fmt.Sprintf("%d %s", rep.HeadSeq, rep.HeadHash)
	}
	imgs := map[string]*ReportImage{}
	days := map[string]*dayCount{}
	reasons := map[string]int{}
	n := 0
	err := db.AuditEntries(ctx, 1, func(e store.AuditEntry, _ []byte) error {
		if !f.match(e) {
			return nil
		}
		n++
		if e.Subject == "" || !strings.Contains(e.Subject, "@sha256:") {
			return nil
		}
		im := imgs[e.Subject]
		if im == nil {
			im = &ReportImage{Ref: e.Subject, Repo: e.Repo, Digest: e.Digest, Decision: "—"}
			imgs[e.Subject] = im
		}
		switch e.Action {
		case store.AuditDecision:
			day := e.Time.UTC().Format("2006-01-02")
			dc := days[day]
			if dc == nil {
				dc = &dayCount{Day: day}
				days[day] = dc
			}
			if e.Details["allow"] == "true" {
				dc.Allow++
			} else {
				dc.Deny++
				for k, v := range e.Details {
					if strings.HasPrefix(k, "reason.") {
						reasons[ruleOf(v)]++
					}
				}
			}
		case store.AuditPromotion:
			im.PromotedTo = append(im.PromotedTo, e.Details["to"])
		case store.AuditOverride:
			im.PromotedTo = append(im.PromotedTo, e.Details["to"])
			im.Overrides = append(im.Overrides, fmt.Sprintf("%s by %s: %s", e.Details["to"], e.Actor, e.Details["reason"]))
			sum.Overrides++
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	sum.Entries = n
	var rows []*ReportImage
	for ref, im := range imgs {
		rec, err := db.Image(ctx, ref)
		if err != nil {
			im.State = "unknown (" + err.Error() + ")"
			rows = append(rows, im)
			continue
		}
		if rec.Parent != "" {
			continue // a platform manifest folded into its index: the index's row covers it
		}
		im.State = string(rec.State)
		for _, fc := range rec.Facts {
			im.Packages += fc.Packages
			im.HardeningFailed = append(im.HardeningFailed, fc.Failed...)
			if v := fc.Vulns; v != nil {
				if im.Vulns == nil {
					im.Vulns = &store.VulnCounts{UnknownAs: v.UnknownAs}
				}
				im.Vulns.Critical += v.Critical
				im.Vulns.High += v.High
				im.Vulns.Medium += v.Medium
				im.Vulns.Low += v.Low
				im.Vulns.Negligible += v.Negligible
				im.Vulns.Unknown += v.Unknown
				im.Vulns.Suppressed += v.Suppressed
			}
		}
		slices.Sort(im.HardeningFailed)
		im.HardeningFailed = slices.Compact(im.HardeningFailed)
		if d := rec.Decision; d != nil {
			im.Decision, im.Reasons = "deny", d.Reasons
			if d.Allow {
				im.Decision = "allow"
			}
		}
		switch rec.State {
		case store.StatePromoted:
			sum.Promoted++
		case store.StateDenied:
			sum.Denied++
		case store.StateFailed:
			sum.Failed++
		default:
			sum.Pending++
		}
		rows = append(rows, im)
	}
	sum.Images = len(rows)
	sort.Slice(rows, func(i, j int) bool { return rows[i].Ref < rows[j].Ref })

	var chart []dayCount
	for _, d := range days {
		chart = append(chart, *d)
	}
	sort.Slice(chart, func(i, j int) bool { return chart[i].Day < chart[j].Day })
	if len(chart) > 60 {
		chart = chart[len(chart)-60:]
	}
	peak := 1
	for _, d := range chart {
		peak = max(peak, d.Allow+d.Deny)
	}
	const h, bw = 120.0, 24.0
	for i := range chart {
		d := &chart[i]
		d.X = 40 + float64(i)*(bw+8)
		d.HA = h * float64(d.Allow) / float64(peak)
		d.HD = h * float64(d.Deny) / float64(peak)
		d.YA = 10 + h - d.HA
		d.YD = d.YA - d.HD
	}
	type reason struct {
		Rule  string
		Count int
	}
	var rs []reason
	for r, c := range reasons {
		rs = append(rs, reason{r, c})
	}
	sort.Slice(rs, func(i, j int) bool {
		return rs[i].Count > rs[j].Count || rs[i].Count == rs[j].Count && rs[i].Rule < rs[j].Rule
	})

	data := struct {
		Generated  string
		Filter     Filter
		Sum        Summary
		Rows       []*ReportImage
		Chart      []dayCount
		ChartWidth float64
		Peak       int
		Reasons    []reason
	}{now.UTC().Format(time.RFC3339), f, sum, rows, chart, max(260, 60+float64(len(chart))*(bw+8)), peak, rs}
	if err := reportTemplate.Execute(w, data); err != nil {
		return n, fmt.Errorf("audit: html report: %w", err)
	}
	return n, nil
}

// ruleOf is the rule name of a reason ("rule: subject: message").
func ruleOf(reason string) string {
	r, _, _ := strings.Cut(reason, ":")
	return r
}

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"join": strings.Join,
	"short": func(d string) string {
		return strings.TrimPrefix(d, "sha256:")[:min(12, len(strings.TrimPrefix(d, "sha256:")))]
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>attestd compliance report</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.meta{color:#57606a}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} code{font-size:12px}
.allow{color:#1a7f37;font-weight:600} .deny{color:#cf222e;font-weight:600}
.ok{color:#1a7f37} .bad{color:#cf222e;font-weight:600}
ul{margin:0;padding-left:18px}
</style></head><body>
<h1>attestd compliance report</h1>
<div class="meta">Generated {{.Generated}}{{with .Filter.Repo}} · repository {{.}}{{end}}{{with .Filter.Digest}} · digest {{.}}{{end}}</div>
<div class="cards">
<div class="card"><b>{{.Sum.Images}}</b>images</div>
<div class="card"><b>{{.Sum.Promoted}}</b>promoted</div>
<div class="card"><b>{{.Sum.Denied}}</b>denied</div>
<div class="card"><b>{{.Sum.Failed}}</b>failed</div>
<div class="card"><b>{{.Sum.Pending}}</b>in progress</div>
<div class="card"><b>{{.Sum.Overrides}}</b>overrides</div>
<div class="card"><b>{{.Sum.Entries}}</b>audit entries</div>
</div>
<p>Audit log: {{if .Sum.Intact}}<span class="ok">intact</span> (head {{.Sum.Head}}){{else}}<span class="bad">TAMPERED: {{.Sum.Problem}}</span>{{end}}</p>

<h2>Images</h2>
<table><thead><tr><th>image</th><th>digest</th><th>SBOM packages</th><th>vulnerabilities (C/H/M/L/N/U)</th><th>hardening failures</th><th>decision</th><th>promoted to</th></tr></thead><tbody>
{{range .Rows}}<tr>
<td>{{.Repo}}<br><small>{{.State}}</small></td>
<td><code>{{short .Digest}}</code></td>
<td>{{.Packages}}</td>
<td>{{with .Vulns}}{{.Critical}}/{{.High}}/{{.Medium}}/{{.Low}}/{{.Negligible}}/{{.Unknown}}{{if .Suppressed}} ({{.Suppressed}} suppressed){{end}}<br><small>unknown gates as {{.UnknownAs}}</small>{{else}}—{{end}}</td>
<td>{{if .HardeningFailed}}{{join .HardeningFailed ", "}}{{else}}none{{end}}</td>
<td><span class="{{.Decision}}">{{.Decision}}</span>{{if .Reasons}}<ul>{{range .Reasons}}<li>{{.}}</li>{{end}}</ul>{{end}}</td>
<td>{{if .PromotedTo}}{{join .PromotedTo ", "}}{{else}}—{{end}}{{range .Overrides}}<br><small class="bad">override: {{.}}</small>{{end}}</td>
</tr>{{end}}
</tbody></table>

<h2>Decisions over time</h2>
{{if .Chart}}<svg xmlns="http://www.w3.org/2000/svg" width="{{.ChartWidth}}" height="170" role="img" aria-label="decisions per day">
<line x1="36" y1="130" x2="{{.ChartWidth}}" y2="130" stroke="#57606a"/>
<text x="4" y="16" font-size="11">{{.Peak}}</text><text x="4" y="130" font-size="11">0</text>
{{range .Chart}}<rect x="{{.X}}" y="{{.YA}}" width="24" height="{{.HA}}" fill="#1a7f37"><title>{{.Day}}: {{.Allow}} allowed</title></rect>
<rect x="{{.X}}" y="{{.YD}}" width="24" height="{{.HD}}" fill="#cf222e"><title>{{.Day}}: {{.Deny}} denied</title></rect>
<text x="{{.X}}" y="146" font-size="9">{{.Day}}</text>
{{end}}<rect x="40" y="155" width="10" height="10" fill="#1a7f37"/><text x="54" y="164" font-size="11">allowed</text>
<rect x="120" y="155" width="10" height="10" fill="#cf222e"/><text x="134" y="164" font-size="11">denied</text>
</svg>{{else}}<p>No decisions yet.</p>{{end}}

<h2>Denial reasons</h2>
{{if .Reasons}}<table><thead><tr><th>rule</th><th>denials</th></tr></thead><tbody>
{{range .Reasons}}<tr><td>{{.Rule}}</td><td>{{.Count}}</td></tr>{{end}}
</tbody></table>{{else}}<p>No denials.</p>{{end}}
</body></html>
`))
