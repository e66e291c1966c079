package watch

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// SourceConfig is one configured sender (configs.Source, read by app).
type SourceConfig struct {
	Name string
	Type string // a key of senders
	// Registry is the registry host events are about, for formats that do
	// not carry it (or to override the one they carry).
	Registry string
	// Auth is the authentication scheme (a key of authSchemes); Header
	// its header name where it has one, Secret its secret.
	Auth         string
	Header       string
	Secret       []byte
	ReplayWindow time.Duration
	// TypePrefix and EventSource (type cloudevents): the prefix of
	// Zot-style event types (default "zotregistry": PREFIX.image.updated,
	// PREFIX.image.deleted) and, when set, the only source attribute
	// accepted (Zot: "zotregistry.dev").
	TypePrefix, EventSource string
}

// sender describes one `type` of source.
type sender struct {
	parser func(SourceConfig) (Parser, error)
	// auth lists the schemes the sender can use, the first the default
	// that the documentation recommends.
	auth []string
	// needsRegistry: the format carries no registry host.
	needsRegistry bool
}

// senders is every source type attestd receives.
var senders = map[string]sender{
	"distribution": {parser: func(c SourceConfig) (Parser, error) { return Distribution{Registry: c.Registry}, nil }, auth: []string{"header", "hmac", "none"}, needsRegistry: true},
	"harbor":       {parser: func(c SourceConfig) (Parser, error) { return Harbor{Registry: c.Registry}, nil }, auth: []string{"header", "none"}},
	"cloudevents":  {parser: newCloudEvents, auth: []string{"header", "hmac", "standard_webhooks", "none"}},
	"generic": {parser: func(c SourceConfig) (Parser, error) {
		return Generic{TrustWebhookID: c.Auth == "standard_webhooks"}, nil
	}, auth: []string{"hmac", "standard_webhooks", "header", "path_token", "none"}},
	"github": {parser: func(c SourceConfig) (Parser, error) { return GitHub{Registry: c.Registry}, nil }, auth: []string{"github"}},
	// Artifactory's events name the repository key and image path, never
	// the Docker host clients pull from.
	"jfrog": {parser: func(c SourceConfig) (Parser, error) { return JFrog{Registry: c.Registry}, nil }, auth: []string{"jfrog_signature", "jfrog_token"}, needsRegistry: true},
	// Docker Hub and Quay can neither sign nor send headers; ACR sends the
	// webhook's custom headers, an EventBridge API destination its
	// connection's API-key header.
	"dockerhub": {parser: func(c SourceConfig) (Parser, error) { return DockerHub{Registry: c.Registry}, nil }, auth: []string{"path_token"}},
	"quay":      {parser: func(c SourceConfig) (Parser, error) { return Quay{Registry: c.Registry}, nil }, auth: []string{"path_token"}},
	"acr":       {parser: func(c SourceConfig) (Parser, error) { return ACR{Registry: c.Registry}, nil }, auth: []string{"header"}},
	"ecr":       {parser: func(c SourceConfig) (Parser, error) { return ECR{Registry: c.Registry}, nil }, auth: []string{"header"}},
}

// newCloudEvents builds the cloudevents parser. A type prefix says the
// source is a Zot-style registry, whose events name no host.
func newCloudEvents(c SourceConfig) (Parser, error) {
	if c.TypePrefix != "" && c.Registry == "" {
		return nil, fieldErr("registry", fmt.Errorf("%s.image.* events carry no registry host: set the host attestd pulls from", c.TypePrefix))
	}
	if strings.HasSuffix(c.TypePrefix, ".") || strings.ContainsAny(c.TypePrefix, " /") {
		return nil, fieldErr("type_prefix", fmt.Errorf("%q: give the prefix without the trailing dot, e.g. zotregistry", c.TypePrefix))
	}
	return CloudEvents{Registry: c.Registry, TypePrefix: c.TypePrefix, Source: c.EventSource, SignedBody: signsBody(c.Auth)}, nil
}

// SourceTypes lists the source types, sorted.
func SourceTypes() []string {
	out := make([]string, 0, len(senders))
	for k := range senders {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// authSchemes builds each authentication scheme from a SourceConfig.
var authSchemes = map[string]func(SourceConfig) (Authenticator, error){
	"hmac": func(c SourceConfig) (Authenticator, error) {
		w := c.ReplayWindow
		if w == 0 {
			w = DefaultReplayWindow
		}
		return NewHMAC(c.Secret, w)
	},
	"header": func(c SourceConfig) (Authenticator, error) {
		h := c.Header
		if h == "" {
			h = "Authorization"
		}
		return NewHeader(h, string(c.Secret))
	},
	"standard_webhooks": func(c SourceConfig) (Authenticator, error) {
		w := c.ReplayWindow
		if w == 0 {
			w = DefaultReplayWindow
		}
		return NewStandardWebhooks(string(c.Secret), w)
	},
	"github":          func(c SourceConfig) (Authenticator, error) { return NewGitHubSignature(c.Secret) },
	"jfrog_signature": func(c SourceConfig) (Authenticator, error) { return NewJFrogSignature(c.Secret) },
	// jfrog_token: the webhook's secret token sent as is, for webhooks
	// without payload signing.
	"jfrog_token": func(c SourceConfig) (Authenticator, error) { return NewHeader(HeaderJFrogAuth, string(c.Secret)) },
	"path_token":  func(c SourceConfig) (Authenticator, error) { return NewPathToken(string(c.Secret)) },
	"none":        func(SourceConfig) (Authenticator, error) { return NoAuthUnsafe{}, nil },
}

// signsBody reports the schemes whose signature covers the body but not the
// other headers: with them, only what the body says may be believed.
func signsBody(auth string) bool {
	switch auth {
	case "hmac", "standard_webhooks", "github", "jfrog_signature":
		return true
	}
	return false
}

// DefaultReplayWindow bounds signed timestamps when the config does not.
const DefaultReplayWindow = 5 * time.Minute

// NewSource builds the receiver of one configured sender and the mux
// pattern it is served at: POST /hooks/NAME, or /hooks/NAME/{token} for
// path-token authentication. Errors name the SourceConfig field (FieldError
// with "type", "auth.type", "auth", "registry").
func NewSource(c SourceConfig, f Filter, s Sink, o ReceiverOptions) (pattern string, h *Receiver, err error) {
	snd, ok := senders[c.Type]
	if !ok {
		return "", nil, fieldErr("type", fmt.Errorf("%q is not one of %s", c.Type, strings.Join(SourceTypes(), ", ")))
	}
	if snd.needsRegistry && c.Registry == "" {
		return "", nil, fieldErr("registry", fmt.Errorf("%s events carry no registry host: set the host attestd pulls from (e.g. docker.io, quay.io)", c.Type))
	}
	if c.Registry != "" {
		if err := ValidHost(c.Registry); err != nil {
			return "", nil, fieldErr("registry", err)
		}
	}
	if !slices.Contains(snd.auth, c.Auth) {
		return "", nil, fieldErr("auth.type", fmt.Errorf("%q is not a scheme %s senders support: use one of %s", c.Auth, c.Type, strings.Join(snd.auth, ", ")))
	}
	a, err := authSchemes[c.Auth](c)
	if err != nil {
		return "", nil, fieldErr("auth", err)
	}
	p, err := snd.parser(c)
	if err != nil {
		return "", nil, err
	}
	h, err = NewReceiver(c.Name, sourceParser{p, c.Name}, a, f, s, o)
	if err != nil {
		return "", nil, err
	}
	pattern = "POST /hooks/" + c.Name
	if c.Auth == "path_token" {
		pattern += "/{token}"
	}
	return pattern, h, nil
}

// sourceParser stamps the source name on every event.
type sourceParser struct {
	Parser
	name string
}

func (s sourceParser) Parse(r *http.Request, body []byte) ([]Incoming, error) {
	in, err := s.Parser.Parse(r, body)
	for i := range in {
		in[i].Event.Source = s.name
	}
	return in, err
}
