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

// defaultReplayWindow bounds HMAC timestamps when the config does not.
const defaultReplayWindow = 5 * time.Minute

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
			ref, err := s.rc.ParseReference(e.Registry + "/" + e.Repository + ":" + e.Tag)
			if err != nil {
				return watch.Accepted{}, &watch.InputError{Err: err}
			}
			d, _, err := s.rc.Resolve(ctx, ref)
			if registry.IsNotFound(err) {
				return watch.Accepted{}, &watch.InputError{Err: err}
			}
			if err != nil {
				return watch.Accepted{}, err
			}
			e.Digest = d.DigestStr()
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

// watchFilter turns the watch rules into the intake filter.
func watchFilter(cfg *configs.Config) watch.Filter {
	f := watch.Filter{OwnUserAgent: "attestd/"}
	for _, w := range cfg.Watch {
		f.Rules = append(f.Rules, watch.Rule{Registry: w.Registry, Repositories: w.Repositories})
	}
	return f
}

// mountSources adds one receiver per configured source to mux.
func mountSources(mux *http.ServeMux, cfg *configs.Config, sink watch.Sink, stats *watch.Stats, log *slog.Logger) error {
	filter := watchFilter(cfg)
	for i, src := range cfg.Sources {
		field := fmt.Sprintf("sources[%d]", i)
		var p watch.Parser
		switch src.Type {
		case "distribution":
			p = watch.Distribution{Registry: src.Registry}
		case "harbor":
			p = watch.Harbor{Registry: src.Registry}
		case "cloudevents":
			p = watch.CloudEvents{Registry: src.Registry}
		case "generic":
			p = watch.Generic{}
		}
		var secret string
		if src.Auth.SecretFile != "" {
			b, err := os.ReadFile(src.Auth.SecretFile)
			if err != nil {
				return &configs.Error{File: cfg.File(), Field: field + ".auth.secret_file", Msg: fmt.Sprintf("cannot read: %v", err)}
			}
			secret = strings.TrimRight(string(b), "\r\n")
		}
		var (
			a   watch.Authenticator
			err error
		)
		path := "POST /hooks/" + src.Name
		switch src.Auth.Type {
		case "hmac":
			w := time.Duration(src.Auth.ReplayWindow)
			if w == 0 {
				w = defaultReplayWindow
			}
			a, err = watch.NewHMAC([]byte(secret), w)
		case "header":
			h := src.Auth.Header
			if h == "" {
				h = "Authorization"
			}
			a, err = watch.NewHeader(h, secret)
		case "path_token":
			a, err = watch.NewPathToken(secret)
			path += "/{token}"
		case "none":
			a = watch.NoAuthUnsafe{}
			log.Warn("webhook source accepts unauthenticated deliveries", "source", src.Name)
		}
		if err != nil {
			return &configs.Error{File: cfg.File(), Field: field + ".auth", Msg: err.Error()}
		}
		recv, err := watch.NewReceiver(src.Name, sourceParser{p, src.Name}, a, filter, sink,
			watch.ReceiverOptions{MaxBody: cfg.Intake.MaxBodyBytes, Logger: log, Stats: stats})
		if err != nil {
			return err
		}
		mux.Handle(path, recv)
	}
	return nil
}

// sourceParser stamps the source name on every event.
type sourceParser struct {
	watch.Parser
	name string
}

func (s sourceParser) Parse(r *http.Request, body []byte) ([]watch.Incoming, error) {
	in, err := s.Parser.Parse(r, body)
	for i := range in {
		in[i].Event.Source = s.name
	}
	return in, err
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
