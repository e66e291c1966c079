// Package configs holds attestd's configuration: the YAML schema, defaults,
// ATTESTD_* environment overrides and validation. Only cmd/attestd/app
// imports it; it turns a Config into the options of each package.
package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole of attestd.yaml. See configs/attestd.yaml for the
// documented example.
type Config struct {
	// Listen is the HTTP address for webhooks, the API, /healthz and /metrics.
	Listen string `yaml:"listen"`
	// DataDir holds the bbolt database and caches.
	DataDir string `yaml:"data_dir"`
	// Workers is how many images the pipeline has in flight at once. Most
	// of a job's time is waiting (registries, Fulcio, the transparency
	// log's checkpoint); the CPU-bound analysis is bounded separately by
	// analysis.concurrency.
	Workers    int        `yaml:"workers"`
	Log        Log        `yaml:"log"`
	Jobs       Jobs       `yaml:"jobs"`
	Intake     Intake     `yaml:"intake"`
	Registries []Registry `yaml:"registries"`
	Watch      []Watch    `yaml:"watch"`
	Sources    []Source   `yaml:"sources"`
	Analysis   Analysis   `yaml:"analysis"`
	Signing    Signing    `yaml:"signing"`
	Gate       Gate       `yaml:"gate"`
	Retention  Retention  `yaml:"retention"`
	API        API        `yaml:"api"`

	// file is where the config came from, for error messages.
	file string
}

// Gate configures the promotion gate: verification, policy, promotion.
// Unset (no policy): evaluation and promotion are skipped and nothing is
// ever promoted.
type Gate struct {
	// Policy is the policy file (docs/policy.md); Rego modules it names are
	// read relative to it.
	Policy string `yaml:"policy"`
	// Timeout bounds one evaluation (verification included); when it
	// expires the decision is a deny.
	Timeout Duration `yaml:"timeout"`
	// TransparencyLog is how many verified log entries each bundle needs;
	// SignedTimestamps how many RFC 3161 timestamps. Defaults 1 and 0
	// (then a log's integrated time or a timestamp proves when). A
	// TSA-only Sigstore: transparency_log: 0, signed_timestamps: 1.
	TransparencyLog  *int `yaml:"transparency_log"`
	SignedTimestamps int  `yaml:"signed_timestamps"`
	// Promotion maps staging repositories to production ones.
	Promotion []PromotionRule `yaml:"promotion"`
}

// PromotionRule maps staging repositories (glob over host/repo) to a
// production repository ({name}: the last path element, {path}: all after
// the host) and says which tags go along: keep, semver, or rename
// (match → replace).
type PromotionRule struct {
	From    string `yaml:"from"`
	To      string `yaml:"to"`
	Tags    string `yaml:"tags"`
	Match   string `yaml:"match"`
	Replace string `yaml:"replace"`
}

// Enabled reports whether a policy is configured.
func (g Gate) Enabled() bool { return g.Policy != "" }

// Log configures log/slog.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json, text
}

// Jobs tunes the durable job queue.
type Jobs struct {
	// MaxAttempts before a job is buried and its image marked failed.
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff after the first failed attempt; doubles per attempt up to MaxBackoff.
	Backoff    Duration `yaml:"backoff"`
	MaxBackoff Duration `yaml:"max_backoff"`
	// Timeout bounds one attempt of one job (all stages).
	Timeout Duration `yaml:"timeout"`
	// ShutdownGrace is how long SIGTERM waits for in-flight stages to checkpoint.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
}

// Intake configures the HTTP side.
type Intake struct {
	// MaxBodyBytes caps webhook request bodies (413 above it).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// PollInterval is how often the reconciliation poller lists the watched
	// repositories (0 disables it). Webhooks are lossy; this is the net.
	PollInterval Duration `yaml:"poll_interval"`
	// Existing decides what the poller does with images already in a
	// repository the first time it lists it: process them (default) or
	// only record them (attestd requeue processes one on demand). New
	// pushes are always processed.
	Existing string `yaml:"existing"`
	// Journal is deprecated, ignored: events are acknowledged once committed
	// to the database, the only intake path. Accepted (true or false) so
	// that older configuration files still load; serve warns when it is set.
	Journal *bool `yaml:"journal,omitempty"`
}

// Retention bounds how long the store keeps what it no longer needs; the
// daemon prunes at start and hourly, in small transactions. 0 keeps
// forever. The audit log has no retention: it is always kept whole (it is
// hash-chained from its first entry and is the evidence of every decision).
type Retention struct {
	// Events: the dedupe key of each delivery (webhook event ID), from when
	// it was first seen. A redelivery after its key is gone is recognised
	// by its image instead: a duplicate, no second job.
	Events Duration `yaml:"events"`
	// Jobs: done and dead jobs, from their last update. Pending and running
	// jobs are never pruned.
	Jobs Duration `yaml:"jobs"`
	// Records: image records that ended denied or failed — never promoted —
	// with no job pending or running and no platform child pointing at
	// them, from their last update. Off by default: a pruned image can no
	// longer be requeued or overridden, and is processed afresh if it is
	// pushed again.
	Records Duration `yaml:"records"`
}

// Signing configures keyless Sigstore signing of every analysed image: the
// image signature and every analysis document as an attestation, attached to
// the registry in the Sigstore bundle format. Unset: the sign stage is
// skipped (and nothing passes it).
type Signing struct {
	// SigningConfig and TrustedRoot are Sigstore's signing_config.json
	// (which Fulcio, Rekor, TSA) and trusted_root.json (how to check them).
	SigningConfig string `yaml:"signing_config"`
	TrustedRoot   string `yaml:"trusted_root"`
	// PublicGood instead fetches both for the public-good Sigstore instance
	// through TUF (cached under data_dir/tuf); start fails when neither the
	// repository nor a valid cache is available.
	PublicGood bool `yaml:"public_good"`
	// TokenFile (re-read for every certificate: a projected Kubernetes
	// service-account token) or TokenEnv holds the OIDC identity token.
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
	// TokenGitHubActions takes the workflow's ambient OIDC token (a job
	// with `permissions: id-token: write`); TokenCommand runs a command
	// and uses what it prints.
	TokenGitHubActions bool     `yaml:"token_github_actions"`
	TokenCommand       []string `yaml:"token_command"`
	// Key switches to key-pair signing (the air-gapped fallback): a cosign
	// private key file or a KMS URI (awskms://, gcpkms://, azurekms://,
	// hashivault://). KeyPasswordEnv names the variable holding the key
	// file's password.
	Key            string `yaml:"key"`
	KeyPasswordEnv string `yaml:"key_password_env"`
	// MaxPayload bounds what is signed inline. A larger SBOM is pushed as its
	// own OCI artifact referring to the image, and a document-ref
	// attestation carrying its digest is signed instead.
	MaxPayload Size `yaml:"max_payload"`
	// Concurrency is how many signatures of one job are in flight at once.
	// Rekor v2 answers after its next checkpoint (~1 s), so a job whose
	// signatures all fit in one go waits for one checkpoint, not several:
	// the default covers every document of a two-platform index.
	Concurrency int `yaml:"concurrency"`
	// Format is how signatures are stored: "bundle" (Sigstore bundles as
	// OCI referrers; cosign --new-bundle-format) or "classic" (cosign's
	// sha256-<hex>.sig/.att tags, for verifiers that read only those; needs
	// a timestamp authority and no Rekor log in the signing config). Never
	// both on one image.
	Format string `yaml:"format"`
}

// Enabled reports whether signing is configured.
func (s Signing) Enabled() bool {
	return s.SigningConfig != "" || s.TrustedRoot != "" || s.tokenSources() > 0 || s.Key != "" || s.PublicGood
}

func (s Signing) tokenSources() int {
	n := 0
	for _, set := range []bool{s.TokenFile != "", s.TokenEnv != "", s.TokenGitHubActions, len(s.TokenCommand) > 0} {
		if set {
			n++
		}
	}
	return n
}

// Analysis configures the analysis stage (SBOMs, hardening, provenance).
type Analysis struct {
	// SPDXVersion and CycloneDXVersion of the SBOM documents.
	SPDXVersion      string `yaml:"spdx_version"`
	CycloneDXVersion string `yaml:"cyclonedx_version"`
	// LayerCache caps the on-disk layer cache (uncompressed layers shared by
	// all jobs), e.g. "10GiB". Least recently used layers go first.
	LayerCache Size `yaml:"layer_cache"`
	// LayerConcurrency bounds parallel layer downloads of one job.
	LayerConcurrency int `yaml:"layer_concurrency"`
	// Concurrency is how many images are analysed at once (CPU-bound:
	// scanning, hashing, decompressing); 0 means one per CPU. Jobs past it
	// wait for a slot while the others sign, evaluate and promote.
	Concurrency int `yaml:"concurrency"`

	// Safety limits: what one image may cost the analysis, enforced while
	// layers stream. Whoever can push to staging chooses the image, so an
	// image over one fails for good (not retried), the reason naming the
	// setting. Not hardening.max_image_size, which is a fact a hardening
	// check reports and policy may gate on.

	// MaxLayerBytes bounds one layer's uncompressed tar.
	MaxLayerBytes Size `yaml:"max_layer_bytes"`
	// MaxImageBytes bounds the uncompressed tars of one platform image's
	// layers together; at most LayerCache (they are all held in the cache
	// while the image is read).
	MaxImageBytes Size `yaml:"max_image_bytes"`
	// MaxCompressedLayerBytes bounds one layer's blob as downloaded (and
	// as the manifest declares it).
	MaxCompressedLayerBytes Size `yaml:"max_compressed_layer_bytes"`
	// MaxCompressedImageBytes bounds the blobs of one platform image's
	// layers together, by their declared sizes, before any is fetched.
	MaxCompressedImageBytes Size `yaml:"max_compressed_image_bytes"`
	// MaxFiles bounds the tar entries (files, directories, links) of one
	// platform image's layers together: each costs memory while the image
	// is read (about 3 KiB) and time while it is catalogued.
	MaxFiles int64 `yaml:"max_files"`
	// MaxIndexManifests bounds the entries of an index (platform images
	// and attestation manifests).
	MaxIndexManifests int `yaml:"max_index_manifests"`
	// MaxLayers bounds the layers of one platform image: each is a
	// download, a cache file and a mount at promotion, and a 4 MiB
	// manifest can list about 20,000 of them.
	MaxLayers int `yaml:"max_layers"`

	Hardening Hardening `yaml:"hardening"`
	// Builders map repositories or pushers to the builder ID that SLSA
	// provenance names; first match wins. Without a match provenance says
	// attestd only observed the image.
	Builders []Builder `yaml:"builders"`
	// Vulnerabilities configures the vulnerability scan (docs/vulnerabilities.md).
	Vulnerabilities Vulnerabilities `yaml:"vulnerabilities"`
}

// Vulnerabilities configures matching each SBOM against a grype v6
// database. The scan is on by default and fails closed: without a
// database, or with one older than MaxDBAge, no image is analysed.
type Vulnerabilities struct {
	// Disabled turns the scan off (images then carry no vulnerability
	// attestation, and a policy requiring one denies them).
	Disabled bool `yaml:"disabled"`
	// DBDir holds the installed database; default <data_dir>/vulndb.
	DBDir string `yaml:"db_dir"`
	// MaxDBAge fails scans against an older database. Default 120h (grype's).
	MaxDBAge Duration `yaml:"max_db_age"`
	// LatestURL is where `attestd vulndb update` looks: Anchore's public
	// listing by default, or a mirror's latest.json.
	LatestURL string `yaml:"latest_url"`
	// CACert is a PEM bundle trusted for a private mirror.
	CACert string `yaml:"ca_cert"`
	// UnknownSeverityAs is the severity findings of Unknown severity gate
	// as: high (default), critical, medium, low, negligible or unknown.
	UnknownSeverityAs string `yaml:"unknown_severity_as"`
	// ExceptionWarning: exceptions expiring within it are warned about
	// (log + metric) on every scan they apply to. Default 336h (14 days).
	ExceptionWarning Duration `yaml:"exception_warning"`
	// VEX are OpenVEX documents applied to every scan.
	VEX []string `yaml:"vex"`
	// RescanInterval is how often the daemon checks whether the database
	// changed; when it did, the stored SBOMs of signed digests are
	// re-matched and new findings recorded. 0 turns it off. Default 1h.
	RescanInterval Duration `yaml:"rescan_interval"`
	// Exceptions suppress findings until they expire.
	Exceptions []VulnException `yaml:"exceptions"`
}

// VulnException suppresses a finding until Expires. Vulnerability (an ID
// or alias), Owner, Reason and Expires are required; Package, Repository
// (a glob over host/repo) and Digest narrow it.
type VulnException struct {
	Vulnerability string    `yaml:"vulnerability"`
	Package       string    `yaml:"package"`
	Repository    string    `yaml:"repository"`
	Digest        string    `yaml:"digest"`
	Owner         string    `yaml:"owner"`
	Reason        string    `yaml:"reason"`
	Ticket        string    `yaml:"ticket"`
	Expires       time.Time `yaml:"expires"`
}

// Hardening tunes the hardening checks (docs/hardening.md).
type Hardening struct {
	// MinimalBases is the base-image allowlist (repository globs); empty
	// means the built-in list.
	MinimalBases []string `yaml:"minimal_bases"`
	// MaxImageSize fails images above it, e.g. "1GiB".
	MaxImageSize Size `yaml:"max_image_size"`
	// MinGoVersion is the oldest supported Go release ("go1.25"); empty:
	// one release before the Go attestd was built with.
	MinGoVersion string `yaml:"min_go_version"`
}

// Builder maps images to a provenance builder ID.
type Builder struct {
	Repository string `yaml:"repository"` // glob over host/repo
	Pusher     string `yaml:"pusher"`     // glob over the event's pusher
	ID         string `yaml:"id"`         // URI of the build platform
}

// Size is a byte count written as an integer or with a unit: 512MiB, 10GiB, 1GB.
type Size int64

// UnmarshalYAML parses sizes with B, KB/KiB, MB/MiB, GB/GiB, TB/TiB units.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseSize(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*z = Size(v)
	return nil
}

// ParseSize parses "10GiB", "512MiB", "1GB" or a plain byte count.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (write e.g. 512MiB, 10GiB or a byte count)", s)
	}
	return v * mult, nil
}

// MarshalYAML writes the byte count.
func (z Size) MarshalYAML() (any, error) { return int64(z), nil }

// Registry is one registry attestd reads from or writes to.
type Registry struct {
	// Host is "name[:port]" as in image references, e.g. "registry.example.com".
	Host string `yaml:"host"`
	// Insecure allows plain HTTP to a non-loopback host, anonymously
	// only: credentials are never sent in plain HTTP beyond loopback
	// (Validate refuses insecure with auth). Loopback hosts (127.0.0.0/8,
	// ::1, localhost) may always use plain HTTP; every other host gets
	// HTTPS, private addresses included.
	Insecure bool `yaml:"insecure"`
	Auth     Auth `yaml:"auth"`
	// RateLimit caps requests per second to this host (0: attestd's default).
	RateLimit float64 `yaml:"rate_limit"`
}

// Auth says where credentials come from. Default: the docker config
// ($DOCKER_CONFIG/config.json) and its credential helpers.
type Auth struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// Password exists only to reject it with a helpful error: secrets never
	// live inline in the config file.
	Password string `yaml:"password"`
}

// Watch selects the repositories whose pushes attestd processes.
type Watch struct {
	Registry string `yaml:"registry"`
	// Repositories are globs: "*" within one path segment, "**" across
	// segments, e.g. "team-a/*" or "apps/**".
	Repositories []string `yaml:"repositories"`
}

// Source is one webhook sender, served at /hooks/NAME (/hooks/NAME/TOKEN
// for path-token authentication).
type Source struct {
	Name string `yaml:"name"`
	// Type is the payload format: distribution (CNCF Distribution 2.x and
	// 3.x, Debian docker-registry, GitLab container registry
	// notifications), harbor (Default or CloudEvents payload format),
	// cloudevents (structured or binary mode: Harbor, Zot's
	// zotregistry.image.updated/.deleted, or dev.attestd.image.pushed),
	// generic ({"image": "…"}), github (package and registry_package
	// webhooks of ghcr.io containers), jfrog (Artifactory Docker-domain
	// webhooks), dockerhub (Docker Hub webhooks, path_token), quay (Quay
	// "Push to Repository" Webhook POST, path_token), acr (Azure Container
	// Registry webhooks, header) or ecr (Amazon ECR "ECR Image Action"
	// EventBridge events via an API destination, header). README, Registry
	// event intake, has each sender's configuration on both sides.
	Type string `yaml:"type"`
	// Registry overrides the registry host events name (distribution,
	// harbor, github, quay, acr, ecr; docker.io for dockerhub); jfrog and
	// Zot (cloudevents) events name none, so it is required there.
	Registry string `yaml:"registry"`
	// TypePrefix (type cloudevents) is the prefix of Zot-style event types
	// (default zotregistry: zotregistry.image.updated, …).
	TypePrefix string `yaml:"type_prefix"`
	// EventSource (type cloudevents), when set, is the only CloudEvents
	// source attribute accepted (Zot sends zotregistry.dev); others are 400.
	EventSource string     `yaml:"event_source"`
	Auth        SourceAuth `yaml:"auth"`
}

// SourceAuth says how deliveries of a source are authenticated. It is
// required: type none must be chosen explicitly.
type SourceAuth struct {
	// Type: hmac (X-Attestd-Timestamp + X-Attestd-Signature over
	// timestamp.body), header (a static header value, e.g. a bearer token
	// the registry is configured to send), standard_webhooks (secret
	// whsec_…), github (X-Hub-Signature-256), jfrog_signature or
	// jfrog_token (X-JFrog-Event-Auth, with or without payload signing),
	// path_token, or none.
	Type string `yaml:"type"`
	// Header is the header name for type header (default Authorization).
	Header string `yaml:"header"`
	// SecretFile holds the HMAC secret, the full header value ("Bearer …")
	// or the path token.
	SecretFile string `yaml:"secret_file"`
	// ReplayWindow bounds the hmac and standard_webhooks timestamp's age
	// (default 5m).
	ReplayWindow Duration `yaml:"replay_window"`
}

// Duration is a time.Duration written as "30s", "5m".
type Duration time.Duration

// UnmarshalYAML parses Go duration syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. 30s, 5m, 1h)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes Go duration syntax.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Secret holds a credential. It never prints: logs and errors show REDACTED.
type Secret string

func (Secret) String() string { return "REDACTED" }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Reveal returns the secret itself, for the one place that must send it.
func (s Secret) Reveal() string { return string(s) }

// Default is the configuration used when no file is given.
func Default() *Config {
	return &Config{
		Listen:  "127.0.0.1:8080",
		DataDir: "data",
		Workers: 16,
		Log:     Log{Level: "info", Format: "json"},
		Jobs: Jobs{
			MaxAttempts: 5, Backoff: Duration(5 * time.Second), MaxBackoff: Duration(5 * time.Minute),
			Timeout: Duration(30 * time.Minute), ShutdownGrace: Duration(8 * time.Second),
		},
		Intake:    Intake{MaxBodyBytes: 1 << 20, PollInterval: Duration(5 * time.Minute), Existing: "process"},
		Retention: Retention{Events: Duration(30 * 24 * time.Hour), Jobs: Duration(30 * 24 * time.Hour)},
		Analysis: Analysis{
			SPDXVersion: "2.3", CycloneDXVersion: "1.6", LayerCache: 10 << 30, LayerConcurrency: 3,
			MaxLayerBytes: 4 << 30, MaxImageBytes: 8 << 30, MaxCompressedLayerBytes: 4 << 30, MaxCompressedImageBytes: 8 << 30,
			MaxFiles: 500_000, MaxIndexManifests: 128, MaxLayers: 256,
			Hardening: Hardening{MaxImageSize: 1 << 30},
			Vulnerabilities: Vulnerabilities{
				MaxDBAge: Duration(120 * time.Hour), UnknownSeverityAs: "high", ExceptionWarning: Duration(14 * 24 * time.Hour),
				RescanInterval: Duration(time.Hour),
			},
		},
		Signing: Signing{Concurrency: 16, MaxPayload: 4 << 20, Format: "bundle"},
		Gate:    Gate{Timeout: Duration(2 * time.Minute)},
	}
}

// Error is a configuration problem: where it is and how to fix it.
type Error struct {
	File  string // "" when not from a file
	Line  int    // 0 when unknown
	Field string // YAML path, e.g. registries[0].host
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// maxConfigBytes bounds the YAML decoder's input (a config is a few KiB).
const maxConfigBytes = 1 << 20

// Load decodes YAML over Default(). Unknown fields are errors (a typo must not
// silently fall back to a default). It does not validate; call Validate.
func Load(r io.Reader, file string) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxConfigBytes+1))
	if err != nil {
		return nil, &Error{File: file, Msg: err.Error()}
	}
	if len(data) > maxConfigBytes {
		return nil, &Error{File: file, Msg: fmt.Sprintf("larger than %d bytes; is this the right file?", maxConfigBytes)}
	}
	c := Default()
	c.file = file
	if len(bytes.TrimSpace(data)) == 0 {
		return c, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
		return nil, &Error{File: file, Msg: msg + " (see configs/attestd.yaml for the schema)"}
	}
	return c, nil
}

// LoadFile reads and decodes path.
func LoadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot read config: %v", errors.Unwrap(err))}
	}
	defer f.Close()
	return Load(f, path)
}

// EnvPrefix starts every environment override.
const EnvPrefix = "ATTESTD_"

// ApplyEnv overrides fields from ATTESTD_* variables via lookup (os.LookupEnv):
// ATTESTD_LISTEN, ATTESTD_DATA_DIR, ATTESTD_WORKERS, ATTESTD_LOG_LEVEL,
// ATTESTD_LOG_FORMAT, ATTESTD_API_TOKEN_FILE.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	str := map[string]*string{
		"LISTEN": &c.Listen, "DATA_DIR": &c.DataDir, "LOG_LEVEL": &c.Log.Level, "LOG_FORMAT": &c.Log.Format,
		"VULNDB_DIR":     &c.Analysis.Vulnerabilities.DBDir,
		"API_TOKEN_FILE": &c.API.TokenFile,
	}
	for k, p := range str {
		if v, ok := lookup(EnvPrefix + k); ok {
			*p = v
		}
	}
	if v, ok := lookup(EnvPrefix + "WORKERS"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return &Error{Field: EnvPrefix + "WORKERS", Msg: fmt.Sprintf("%q is not a whole number", v)}
		}
		c.Workers = n
	}
	return nil
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &Error{File: c.file, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port (e.g. 127.0.0.1:8080 or :8080)", c.Listen)
	}
	if c.DataDir == "" {
		bad("data_dir", "must be set (a directory attestd may write, e.g. /var/lib/attestd)")
	}
	if c.Workers < 1 || c.Workers > 256 {
		bad("workers", "%d is out of range (1–256)", c.Workers)
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		bad("log.level", "%v", err)
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		bad("log.format", "%q is not json or text", c.Log.Format)
	}
	if c.Jobs.MaxAttempts < 1 {
		bad("jobs.max_attempts", "must be at least 1, got %d", c.Jobs.MaxAttempts)
	}
	for f, d := range map[string]Duration{"jobs.backoff": c.Jobs.Backoff, "jobs.max_backoff": c.Jobs.MaxBackoff, "jobs.timeout": c.Jobs.Timeout, "jobs.shutdown_grace": c.Jobs.ShutdownGrace} {
		if d <= 0 {
			bad(f, "must be a positive duration, got %s", time.Duration(d))
		}
	}
	if c.Intake.PollInterval < 0 || (c.Intake.PollInterval > 0 && c.Intake.PollInterval < Duration(time.Second)) {
		bad("intake.poll_interval", "must be 0 (off) or at least 1s, got %s", time.Duration(c.Intake.PollInterval))
	}
	if c.Intake.Existing != "process" && c.Intake.Existing != "record" {
		bad("intake.existing", "%q is not process or record", c.Intake.Existing)
	}
	for f, d := range map[string]Duration{"retention.events": c.Retention.Events, "retention.jobs": c.Retention.Jobs, "retention.records": c.Retention.Records} {
		if d < 0 || (d > 0 && d < Duration(time.Hour)) {
			bad(f, "must be 0 (keep forever) or at least 1h, got %s", time.Duration(d))
		}
	}
	if sg := c.Signing; sg.Enabled() {
		switch {
		case sg.PublicGood && (sg.SigningConfig != "" || sg.TrustedRoot != ""):
			bad("signing.public_good", "public_good fetches the signing config and trusted root through TUF: remove signing_config and trusted_root, or public_good")
		case !sg.PublicGood && (sg.SigningConfig == "" || sg.TrustedRoot == ""):
			bad("signing", "set both signing_config and trusted_root (the files cosign signing-config create / trusted-root create write), or public_good: true")
		}
		switch {
		case sg.Key != "" && sg.tokenSources() > 0:
			bad("signing.key", "key-pair signing needs no identity token: remove token_*, or remove key for keyless signing")
		case sg.Key == "" && sg.tokenSources() != 1:
			bad("signing", "set exactly one of token_file, token_env, token_github_actions and token_command (the OIDC identity token for Fulcio)")
		case sg.Key == "" && sg.KeyPasswordEnv != "":
			bad("signing.key_password_env", "only used with signing.key")
		}
	}
	if c.Signing.MaxPayload < 1024 {
		bad("signing.max_payload", "must be at least 1KiB, got %d bytes", c.Signing.MaxPayload)
	}
	if f := c.Signing.Format; f != "bundle" && f != "classic" {
		bad("signing.format", "must be bundle or classic, got %q", f)
	} else if f == "classic" && c.Signing.PublicGood {
		bad("signing.format", "classic signatures are proven by an RFC 3161 timestamp only, and the public-good instance logs in Rekor: use format bundle with public_good")
	}
	if c.Signing.Concurrency < 1 || c.Signing.Concurrency > 32 {
		bad("signing.concurrency", "must be 1…32, got %d", c.Signing.Concurrency)
	}
	a := c.Analysis
	if !slices.Contains([]string{"2.3", "2.2"}, a.SPDXVersion) {
		bad("analysis.spdx_version", "%q is not supported: use 2.3 (or 2.2)", a.SPDXVersion)
	}
	if !slices.Contains([]string{"1.6", "1.5", "1.4"}, a.CycloneDXVersion) {
		bad("analysis.cyclonedx_version", "%q is not supported: use 1.6 (or 1.5, 1.4)", a.CycloneDXVersion)
	}
	if a.LayerCache < 64<<20 {
		bad("analysis.layer_cache", "must be at least 64MiB, got %d bytes", a.LayerCache)
	}
	if a.LayerConcurrency < 1 || a.LayerConcurrency > 32 {
		bad("analysis.layer_concurrency", "must be 1…32, got %d", a.LayerConcurrency)
	}
	if a.Concurrency < 0 || a.Concurrency > 256 {
		bad("analysis.concurrency", "must be 0 (one per CPU) … 256, got %d", a.Concurrency)
	}
	for _, l := range []struct {
		field        string
		layer, image Size
	}{
		{"", a.MaxLayerBytes, a.MaxImageBytes},
		{"compressed_", a.MaxCompressedLayerBytes, a.MaxCompressedImageBytes},
	} {
		switch {
		case l.layer < 1<<20:
			bad("analysis.max_"+l.field+"layer_bytes", "must be at least 1MiB, got %d bytes", l.layer)
		case l.image < l.layer:
			bad("analysis.max_"+l.field+"image_bytes", "must be at least analysis.max_%slayer_bytes (%d bytes), got %d bytes", l.field, l.layer, l.image)
		}
	}
	if a.MaxImageBytes > a.LayerCache {
		bad("analysis.max_image_bytes", "%d bytes is more than analysis.layer_cache (%d bytes): an image's layers are all held in the cache while it is read; raise layer_cache or lower max_image_bytes", a.MaxImageBytes, a.LayerCache)
	}
	if a.MaxFiles < 1 {
		bad("analysis.max_files", "must be positive, got %d", a.MaxFiles)
	}
	if a.MaxIndexManifests < 1 {
		bad("analysis.max_index_manifests", "must be positive, got %d", a.MaxIndexManifests)
	}
	if a.MaxLayers < 1 {
		bad("analysis.max_layers", "must be positive, got %d", a.MaxLayers)
	}
	if a.Hardening.MaxImageSize <= 0 {
		bad("analysis.hardening.max_image_size", "must be positive")
	}
	if v := a.Hardening.MinGoVersion; v != "" && !regexp.MustCompile(`^go1\.\d+$`).MatchString(v) {
		bad("analysis.hardening.min_go_version", "%q: write goX.Y, e.g. go1.25", v)
	}
	for i, g := range a.Hardening.MinimalBases {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			bad(fmt.Sprintf("analysis.hardening.minimal_bases[%d]", i), "%q is not a valid glob", g)
		}
	}
	if g := c.Gate; g.Enabled() || len(g.Promotion) > 0 {
		if !g.Enabled() {
			bad("gate.policy", "promotion rules need a policy: nothing is promoted without one")
		}
		if !c.Signing.Enabled() {
			bad("gate.policy", "the gate needs signing.* too: it verifies with the same trust root and signs its verification summary")
		}
		if g.Timeout <= 0 {
			bad("gate.timeout", "must be a positive duration")
		}
		if g.TransparencyLog != nil && *g.TransparencyLog < 0 || g.SignedTimestamps < 0 {
			bad("gate", "transparency_log and signed_timestamps must be ≥ 0")
		}
		if g.TransparencyLog != nil && *g.TransparencyLog == 0 && g.SignedTimestamps == 0 {
			bad("gate.signed_timestamps", "with transparency_log: 0 at least one signed timestamp is required (certificates live 10 minutes)")
		}
		if c.Signing.Format == "classic" && (g.TransparencyLog == nil || *g.TransparencyLog > 0 || g.SignedTimestamps == 0) {
			bad("gate", "signing.format classic writes RFC 3161 timestamps and no log entries, so this gate would deny every image attestd signs: set transparency_log: 0 and signed_timestamps: 1")
		}
		for i, r := range g.Promotion {
			if r.From == "" || r.To == "" {
				bad(fmt.Sprintf("gate.promotion[%d]", i), "from and to are required")
			}
		}
	}
	v := a.Vulnerabilities
	if v.MaxDBAge <= 0 {
		bad("analysis.vulnerabilities.max_db_age", "must be a positive duration, got %s", time.Duration(v.MaxDBAge))
	}
	if v.RescanInterval < 0 || (v.RescanInterval > 0 && v.RescanInterval < Duration(time.Second)) {
		bad("analysis.vulnerabilities.rescan_interval", "must be 0 (off) or at least 1s, got %s", time.Duration(v.RescanInterval))
	}
	if !slices.Contains([]string{"critical", "high", "medium", "low", "negligible", "unknown"}, v.UnknownSeverityAs) {
		bad("analysis.vulnerabilities.unknown_severity_as", "%q: use critical, high, medium, low, negligible or unknown", v.UnknownSeverityAs)
	}
	if v.LatestURL != "" {
		if u, err := url.Parse(v.LatestURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			bad("analysis.vulnerabilities.latest_url", "%q must be an http(s) URL of a grype DB listing (…/databases or …/latest.json)", v.LatestURL)
		}
	}
	for i, e := range v.Exceptions {
		f := fmt.Sprintf("analysis.vulnerabilities.exceptions[%d]", i)
		for _, kv := range [][2]string{{"vulnerability", e.Vulnerability}, {"owner", e.Owner}, {"reason", e.Reason}} {
			if kv[1] == "" {
				bad(f+"."+kv[0], "is required (what is excepted, who owns it, and why)")
			}
		}
		if e.Expires.IsZero() {
			bad(f+".expires", "is required: every exception ends (e.g. 2026-12-31)")
		}
		if _, err := path.Match(e.Repository, ""); err != nil {
			bad(f+".repository", "%q is not a valid glob", e.Repository)
		}
		if e.Digest != "" && !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(e.Digest) {
			bad(f+".digest", "%q: write sha256:<64 hex>", e.Digest)
		}
	}
	for i, b := range a.Builders {
		f := fmt.Sprintf("analysis.builders[%d]", i)
		if u, err := url.Parse(b.ID); err != nil || u.Scheme == "" {
			bad(f+".id", "%q must be a URI naming the build platform, e.g. https://ci.example.com/builders/main", b.ID)
		}
		if b.Repository == "" && b.Pusher == "" {
			bad(f, "set repository or pusher (or both)")
		}
		for _, g := range []string{b.Repository, b.Pusher} {
			if _, err := path.Match(g, ""); err != nil {
				bad(f, "%q is not a valid glob", g)
			}
		}
	}
	if c.Intake.MaxBodyBytes < 1024 {
		bad("intake.max_body_bytes", "must be at least 1024, got %d", c.Intake.MaxBodyBytes)
	}
	hosts := map[string]bool{}
	for i, r := range c.Registries {
		f := fmt.Sprintf("registries[%d]", i)
		switch {
		case r.Host == "":
			bad(f+".host", "must be set (e.g. registry.example.com or 127.0.0.1:5000)")
		case strings.ContainsAny(r.Host, "/ ") || strings.Contains(r.Host, "://"):
			bad(f+".host", "%q must be a bare host[:port], without scheme or path", r.Host)
		case hosts[r.Host]:
			bad(f+".host", "%q is listed twice", r.Host)
		}
		hosts[r.Host] = true
		if r.Auth.Password != "" {
			bad(f+".auth.password", "inline passwords are not allowed: write it to a file readable only by attestd and set password_file")
		}
		if (r.Auth.Username == "") != (r.Auth.PasswordFile == "") {
			bad(f+".auth", "username and password_file go together (or leave both unset to use the docker config and credential helpers)")
		}
		if r.Insecure && (r.Auth.Username != "" || r.Auth.PasswordFile != "") && !loopback(r.Host) {
			bad(f+".insecure", "plain HTTP to %q would send its credentials (auth) in the clear, and attestd refuses to: serve the registry over TLS and drop insecure, or drop auth and use it anonymously", r.Host)
		}
		if r.RateLimit < 0 {
			bad(f+".rate_limit", "must not be negative")
		}
	}
	for i, w := range c.Watch {
		f := fmt.Sprintf("watch[%d]", i)
		if !hosts[w.Registry] {
			bad(f+".registry", "%q is not one of registries[].host; add it there first", w.Registry)
		}
		if len(w.Repositories) == 0 {
			bad(f+".repositories", "must list at least one repository glob (e.g. \"apps/**\")")
		}
		for j, p := range w.Repositories {
			if _, err := path.Match(strings.ReplaceAll(p, "**", "*"), ""); err != nil || p == "" || strings.HasPrefix(p, "/") {
				bad(fmt.Sprintf("%s.repositories[%d]", f, j), "%q is not a repository glob", p)
			}
		}
	}
	names := map[string]bool{}
	for i, src := range c.Sources {
		f := fmt.Sprintf("sources[%d]", i)
		switch {
		case src.Name == "" || strings.ContainsAny(src.Name, "/ ?#"):
			bad(f+".name", "%q must be a non-empty name without '/', spaces, '?' or '#' (it becomes /hooks/NAME)", src.Name)
		case names[src.Name]:
			bad(f+".name", "%q is used twice", src.Name)
		}
		names[src.Name] = true
		// Which types and schemes exist, and which scheme each sender
		// supports, is attest/watch's to say (app reports it with the field).
		if src.Type == "" {
			bad(f+".type", "is required: the sender's format (distribution, harbor, cloudevents, github, dockerhub, quay, acr, jfrog, ecr, generic; see README, Intake)")
		}
		switch src.Auth.Type {
		case "":
			bad(f+".auth.type", "is required: the sender's authentication scheme (or none, explicitly, for a trusted network)")
		case "none":
		default:
			if src.Auth.SecretFile == "" {
				bad(f+".auth.secret_file", "must name the file holding the %s secret", src.Auth.Type)
			}
		}
	}
	errs = append(errs, c.API.validate(c.file)...)
	return errors.Join(errs...)
}

// ParseLevel maps a level name to slog.Level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

// File is where the config was loaded from ("" for defaults).
func (c *Config) File() string { return c.file }

// loopback reports whether host[:port] is a loopback address or
// localhost (as store/registry.IsLoopback, which configs may not import):
// the only hosts credentials may reach in plain HTTP.
func loopback(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// Registry returns the settings for host (zero value when not configured).
func (c *Config) Registry(host string) Registry {
	for _, r := range c.Registries {
		if r.Host == host {
			return r
		}
	}
	return Registry{Host: host}
}
