package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Lister is what the poller needs from a registry client.
type Lister interface {
	// Repositories lists a registry's repositories (/v2/_catalog).
	Repositories(ctx context.Context, registry string) ([]string, error)
	// Tags lists a repository's tags.
	Tags(ctx context.Context, registry, repo string) ([]string, error)
	// Head resolves a tag to its digest and media type.
	Head(ctx context.Context, registry, repo, tag string) (digest, mediaType string, err error)
}

// Poller reconciles what webhooks lose: registry notifications are lossy by
// design (Distribution retries in memory only). Every interval it lists the
// watched repositories and their tags, resolves each tag with HEAD and hands
// the digests to the sink as backfill, which dedupes what is already known.
type Poller struct {
	lister   Lister
	sink     Sink
	filter   Filter
	interval time.Duration
	log      *slog.Logger
	stats    *Stats
}

// NewPoller builds a poller over the filter's watch rules.
func NewPoller(l Lister, s Sink, f Filter, interval time.Duration, log *slog.Logger, stats *Stats) (*Poller, error) {
	if l == nil || s == nil || interval <= 0 {
		return nil, errors.New("poller: lister, sink and a positive interval are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if stats == nil {
		stats = NewStats()
	}
	return &Poller{lister: l, sink: s, filter: f, interval: interval, log: log, stats: stats}, nil
}

// Run polls at once and then every interval until ctx ends.
func (p *Poller) Run(ctx context.Context) error {
	for {
		if n, err := p.PollOnce(ctx); err != nil && ctx.Err() == nil {
			p.log.WarnContext(ctx, "poll incomplete", "err", err, "queued", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(p.interval):
		}
	}
}

// PollOnce runs one reconciliation pass and returns how many new images it
// queued. It carries on past a failing repository and reports all failures.
func (p *Poller) PollOnce(ctx context.Context) (int, error) {
	var errs []error
	queued := 0
	for _, rule := range p.filter.Rules {
		repos, err := p.repositories(ctx, rule)
		if err != nil {
			errs = append(errs, err)
		}
		for _, repo := range repos {
			n, err := p.pollRepo(ctx, rule.Registry, repo)
			queued += n
			if err != nil {
				errs = append(errs, err)
			}
			if ctx.Err() != nil {
				return queued, ctx.Err()
			}
		}
	}
	return queued, errors.Join(errs...)
}

// repositories expands a rule: literal patterns as they are, globs against
// the catalog (when the registry allows listing it).
func (p *Poller) repositories(ctx context.Context, rule Rule) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var catalog []string
	var catErr error
	for _, pat := range rule.Repositories {
		if !strings.ContainsAny(pat, "*?[") {
			if !seen[pat] {
				seen[pat] = true
				out = append(out, pat)
			}
			continue
		}
		if catalog == nil && catErr == nil {
			catalog, catErr = p.lister.Repositories(ctx, rule.Registry)
			if catErr != nil {
				catErr = fmt.Errorf("catalog of %s (needed for %q; list repositories literally if the registry restricts it): %w", rule.Registry, pat, catErr)
			}
		}
		for _, r := range catalog {
			if Match(pat, r) && !seen[r] {
				seen[r] = true
				out = append(out, r)
			}
		}
	}
	return out, catErr
}

func (p *Poller) pollRepo(ctx context.Context, registry, repo string) (int, error) {
	tags, err := p.lister.Tags(ctx, registry, repo)
	if err != nil {
		return 0, fmt.Errorf("tags of %s/%s: %w", registry, repo, err)
	}
	var evs []Event
	for _, tag := range tags {
		if sigTag.MatchString(tag) {
			continue
		}
		dgst, mt, err := p.lister.Head(ctx, registry, repo, tag)
		if err != nil {
			p.log.WarnContext(ctx, "poll: tag vanished or unreadable", "repo", registry+"/"+repo, "tag", tag, "err", err)
			continue
		}
		e := Event{Source: "poller", Action: ActionPush, Registry: registry, Repository: repo, Digest: dgst, Tag: tag, MediaType: mt, Backfill: true}
		if reason := p.filter.Classify(Incoming{Event: e}); reason != "" {
			p.stats.add("poller", "ignored", reason, 1)
			continue
		}
		evs = append(evs, e)
	}
	if len(evs) == 0 {
		return 0, nil
	}
	acc, err := p.sink.Accept(ctx, evs)
	if err != nil {
		return 0, fmt.Errorf("poll %s/%s: %w", registry, repo, err)
	}
	p.stats.add("poller", "accepted", "", acc.Queued)
	if acc.Queued > 0 {
		p.log.InfoContext(ctx, "poller found images webhooks missed", "repo", registry+"/"+repo, "queued", acc.Queued)
	}
	return acc.Queued, nil
}
