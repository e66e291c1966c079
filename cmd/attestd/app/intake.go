package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/attestd/attestd/attest/watch"
	"github.com/attestd/attestd/configs"
	"github.com/attestd/attestd/store"
	"github.com/attestd/attestd/store/registry"
)

// untaggedSettle delays jobs for manifests pushed without a tag.
const untaggedSettle = 3 * time.Second

// intakeSink makes accepted events durable in one store.Intake batch per
// delivery, resolving tag-only references (generic receiver) first.
type intakeSink struct {
	db *store.DB
	// recordExisting: intake.existing is "record" — the poller's first
	// sighting of a repository only records what is there.
	recordExisting bool
	rc             *registry.Client
	wake           func()
	log            *slog.Logger
}

var _ watch.Sink = (*intakeSink)(nil)

func (s *intakeSink) Accept(ctx context.Context, evs []watch.Event) (watch.Accepted, error) {
	items := make([]store.IntakeItem, 0, len(evs))
	for _, e := range evs {
		if e.Digest == "" {
			// Receivers resolve tags before they hand events over.
			return watch.Accepted{}, &watch.InputError{Err: fmt.Errorf("%s/%s:%s: no digest", e.Registry, e.Repository, e.Tag)}
		}
		it := store.IntakeItem{Ref: e.Ref(), Priority: store.PriorityEvent, Source: "webhook:" + e.Source, Pusher: e.Pusher,
			Deleted: e.Action == watch.ActionDelete, Children: e.Children}
		if e.Backfill {
			it.Priority, it.Source = store.PriorityBackfill, "poller"
			if s.recordExisting {
				it.BaselineKey = e.Registry + "/" + e.Repository
			}
		}
		if e.Tag == "" && len(e.Children) == 0 {
			// An untagged manifest is usually a platform child whose index
			// follows within milliseconds: give the index time to fold it.
			it.NotBefore = time.Now().Add(untaggedSettle)
		}
		if e.Tag != "" {
			it.Tag = e.Registry + "/" + e.Repository + ":" + e.Tag
		}
		if e.ID != "" {
			it.EventKey = e.Source + "/" + e.ID
		}
		items = append(items, it)
	}
	res, err := s.db.Intake(ctx, items)
	if errors.Is(err, store.ErrInvalidItem) {
		return watch.Accepted{}, &watch.InputError{Err: err}
	}
	if err != nil {
		return watch.Accepted{}, err
	}
	var acc watch.Accepted
	for i, r := range res {
		switch {
		case items[i].Deleted:
			acc.Recorded++
		case r.Duplicate:
			acc.Duplicate++
		case r.RecordedOnly:
			acc.Recorded++
		default:
			acc.Queued++
			s.log.InfoContext(ctx, "image queued", "digest", items[i].Ref, "job", r.JobID, "source", items[i].Source)
		}
	}
	if acc.Queued > 0 { // Intake returned: the jobs exist
		s.wake()
	}
	return acc, nil
}

// watchFilter turns the watch rules into the intake filter; rc says which
// manifests attestd itself wrote.
func watchFilter(cfg *configs.Config, rc *registry.Client) watch.Filter {
	f := watch.Filter{}
	if rc != nil {
		f.Own = rc.Own
	}
	for _, w := range cfg.Watch {
		f.Rules = append(f.Rules, watch.Rule{Registry: w.Registry, Repositories: w.Repositories})
	}
	return f
}

// mountSources adds one receiver per configured source to mux.
func mountSources(mux *http.ServeMux, cfg *configs.Config, rc *registry.Client, sink watch.Sink, stats *watch.Stats, log *slog.Logger) error {
	filter := watchFilter(cfg, rc)
	for i, src := range cfg.Sources {
		field := fmt.Sprintf("sources[%d]", i)
		sc := watch.SourceConfig{Name: src.Name, Type: src.Type, Registry: src.Registry, Auth: src.Auth.Type, Header: src.Auth.Header,
			ReplayWindow: time.Duration(src.Auth.ReplayWindow), TypePrefix: src.TypePrefix, EventSource: src.EventSource}
		if src.Auth.SecretFile != "" {
			b, err := os.ReadFile(src.Auth.SecretFile)
			if err != nil {
				return &configs.Error{File: cfg.File(), Field: field + ".auth.secret_file", Msg: fmt.Sprintf("cannot read: %v", err)}
			}
			sc.Secret = []byte(strings.TrimRight(string(b), "\r\n"))
		}
		if sc.Auth == "none" {
			log.Warn("webhook source accepts unauthenticated deliveries", "source", src.Name)
		}
		o := watch.ReceiverOptions{MaxBody: cfg.Intake.MaxBodyBytes, Logger: log, Stats: stats}
		if rc != nil {
			o.Resolver = tagResolver{rc}
		}
		pattern, recv, err := watch.NewSource(sc, filter, sink, o)
		var fe *watch.FieldError
		if errors.As(err, &fe) {
			return &configs.Error{File: cfg.File(), Field: field + "." + fe.Field, Msg: fe.Err.Error()}
		}
		if err != nil {
			return err
		}
		mux.Handle(pattern, recv)
	}
	return nil
}

// tagResolver resolves tag-only events through the shared registry client.
type tagResolver struct{ c *registry.Client }

var _ watch.Resolver = tagResolver{}

func (t tagResolver) Resolve(ctx context.Context, host, repo, tag string) (string, []byte, error) {
	ref, err := t.c.ParseReference(host + "/" + repo + ":" + tag)
	if err != nil {
		return "", nil, err
	}
	d, _, err := t.c.Resolve(ctx, ref)
	if registry.IsNotFound(err) {
		return "", nil, fmt.Errorf("%w: %w", watch.ErrNotFound, err)
	}
	if err != nil {
		return "", nil, err
	}
	raw, _, err := t.c.Manifest(ctx, d)
	if registry.IsNotFound(err) {
		return "", nil, fmt.Errorf("%w: %w", watch.ErrNotFound, err)
	}
	if err != nil {
		return "", nil, err
	}
	return d.DigestStr(), raw, nil
}

// registryLister is the poller's Lister on the shared registry client.
type registryLister struct{ c *registry.Client }

var _ watch.Lister = registryLister{}

func (l registryLister) Repositories(ctx context.Context, host string) ([]string, error) {
	reg, err := name.NewRegistry(host, l.c.NameOptions(host)...)
	if err != nil {
		return nil, err
	}
	return l.c.Catalog(ctx, reg)
}

func (l registryLister) Tags(ctx context.Context, host, repo string) ([]string, error) {
	r, err := l.c.ParseRepository(host + "/" + repo)
	if err != nil {
		return nil, err
	}
	return l.c.ListTags(ctx, r)
}

func (l registryLister) Head(ctx context.Context, host, repo, tag string) (string, string, error) {
	ref, err := l.c.ParseReference(host + "/" + repo + ":" + tag)
	if err != nil {
		return "", "", err
	}
	d, desc, err := l.c.Resolve(ctx, ref)
	if err != nil {
		return "", "", err
	}
	return d.DigestStr(), string(desc.MediaType), nil
}
