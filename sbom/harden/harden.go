// Package harden checks an image against the container-hardening practices
// attestd exists to enforce: non-root, no shell or package manager, no
// secrets in the config or the filesystem, a healthcheck, no setuid files,
// static stripped -trimpath Go binaries on a supported Go, no privileged
// ports, a minimal base, a sane size and no `latest`.
//
// Every check has a stable ID (see Checks and docs/hardening.md), and every
// result is pass, fail or not-applicable with evidence. The package is pure
// apart from reading files through Input.Open: the filesystem listing and the
// config come from the caller (sbom.Scan), so the same local copy serves the
// SBOM and these checks.
package harden

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/mod/semver"
)

// PredicateType is the in-toto predicate type of a hardening Report.
const PredicateType = "https://attestd.dev/attestation/hardening/v1"

// Status of one check.
type Status string

const (
	Pass          Status = "pass"
	Fail          Status = "fail"
	NotApplicable Status = "not-applicable"
)

// File is one entry of the image's squashed filesystem.
type File struct {
	Path string
	Mode fs.FileMode
	Size int64
	UID  int
	GID  int
	Link string
}

// Input is what the checks look at.
type Input struct {
	Config *v1.ConfigFile
	Files  []File // squashed filesystem, any order
	// Open reads a regular file. When the reader also implements io.ReaderAt
	// ELF binaries are inspected in place; otherwise up to MaxBinaryBytes
	// are read.
	Open func(path string) (io.ReadCloser, error)
	// Tag is the tag the image was pushed under ("" when only a digest is known).
	Tag string
	// Size is the image size in bytes (config + compressed layers).
	Size int64
	// OSPackages counts OS package-manager packages the SBOM found.
	OSPackages int
}

// Options tune the checks; zero values take the defaults.
type Options struct {
	// MinimalBases are the allowed base images: repository names without
	// tag or digest, "*" as a glob ("gcr.io/distroless/*"). Default
	// DefaultMinimalBases.
	MinimalBases []string
	// MaxImageBytes fails images larger than this. Default 1 GiB.
	MaxImageBytes int64
	// MinGoVersion is the oldest Go release still supported, "go1.25".
	// Default: one minor release older than the Go attestd was built with
	// (Go supports the two newest releases).
	MinGoVersion string
	// MaxBinaryBytes bounds how much of one binary is read when the file
	// reader is not an io.ReaderAt. Default 512 MiB.
	MaxBinaryBytes int64
}

// DefaultMinimalBases is the base-image allowlist when none is configured.
var DefaultMinimalBases = []string{
	"scratch",
	"gcr.io/distroless/*",
	"cgr.dev/chainguard/*",
	"docker.io/library/alpine",
	"registry.access.redhat.com/ubi*/ubi-micro",
	"registry.access.redhat.com/ubi*-micro",
	"mcr.microsoft.com/cbl-mariner/distroless/*",
	"mcr.microsoft.com/azurelinux/distroless/*",
}

// Result is the outcome of one check.
type Result struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	Status   Status   `json:"status"`
	Evidence []string `json:"evidence,omitempty"`
	Fix      string   `json:"fix,omitempty"` // set when the check failed
}

// Report is the hardening predicate: every check, in Checks order.
type Report struct {
	Checks []Result `json:"checks"`
	// Failed lists the IDs of failed checks.
	Failed []string `json:"failed,omitempty"`
	// GoBinaries is what the Go checks observed, one entry per binary.
	GoBinaries []GoBinary `json:"goBinaries,omitempty"`
}

// GoBinary is what the Go checks observed about one binary.
type GoBinary struct {
	Path      string `json:"path"`
	GoVersion string `json:"goVersion"`
	Static    bool   `json:"static"`   // no ELF interpreter, no dynamic section
	Stripped  bool   `json:"stripped"` // no .symtab
	Trimpath  bool   `json:"trimpath"` // -trimpath build setting
	CGO       string `json:"cgo,omitempty"`
}

// Check describes one check for the documentation.
type Check struct {
	ID, Title, Why, Fix string
}

// Checks lists every check with its stable ID, in report order.
func Checks() []Check { return slices.Clone(checks) }

var checks = []Check{
	{"nonroot-user", "Runs as a non-root user",
		"A process running as root inside the container is root on the host's kernel: any escape or mounted path is root's.",
		"Set USER to a numeric non-zero UID (e.g. USER 65532:65532) that exists in /etc/passwd or needs none."},
	{"no-shell", "No shell in the final filesystem",
		"A shell is the first tool of an attacker who gets code execution, and the usual way secrets are exfiltrated.",
		"Build FROM scratch or a distroless base; copy only the binary and its data into the final stage."},
	{"no-package-manager", "No package manager in the final filesystem",
		"A package manager lets an attacker install tooling and makes the image mutable at runtime.",
		"Use a multi-stage build: install packages in a builder stage, copy the results into a minimal base."},
	{"no-secrets-in-config", "No secrets in ENV or labels",
		"ENV and LABEL values are readable by anyone who can pull the image (docker inspect) and stay in every layer's history.",
		"Pass secrets at runtime (mounted files, a secrets manager); never bake them into ENV or LABEL."},
	{"no-secret-files", "No secret files in the filesystem",
		"Private keys, .env files, cloud credentials and .git directories copied into an image leak to everyone who can pull it.",
		"Add them to .dockerignore; mount secrets at runtime (BuildKit --mount=type=secret for build-time secrets)."},
	{"healthcheck", "HEALTHCHECK declared",
		"Without a healthcheck the runtime cannot tell a hung process from a healthy one.",
		"Add HEALTHCHECK CMD [\"/app\", \"healthcheck\"] (exec form, no shell needed)."},
	{"no-setuid", "No setuid or setgid files",
		"setuid/setgid binaries are a classic privilege-escalation path from a non-root user.",
		"Remove them, or drop the bits in the build (chmod u-s,g-s) when the program does not need them."},
	{"go-static", "Go binaries are static (CGO_ENABLED=0)",
		"A static binary needs no libc or loader in the image, which lets the base be empty (scratch/distroless).",
		"Build with CGO_ENABLED=0 (or link statically)."},
	{"go-stripped", "Go binaries are stripped (-ldflags='-s -w')",
		"Symbol tables and DWARF add size and make reverse engineering easier without helping production.",
		"Build with -ldflags='-s -w'."},
	{"go-trimpath", "Go binaries are built with -trimpath",
		"Without -trimpath the binary embeds the build machine's paths, and builds are not reproducible.",
		"Build with go build -trimpath."},
	{"go-supported", "Go binaries are built with a supported Go release",
		"Only the two newest Go releases get security fixes; an older toolchain means an unpatched standard library.",
		"Rebuild with a supported Go release."},
	{"no-privileged-ports", "No privileged or remote-shell ports exposed",
		"Ports below 1024 need root or NET_BIND_SERVICE; port 22 means an SSH daemon in the container.",
		"Listen on an unprivileged port (e.g. 8080) and map it in the orchestrator; never run sshd in a container."},
	{"minimal-base", "Built on a minimal base image",
		"Every package in the base is attack surface and a source of vulnerabilities the application never uses.",
		"Build FROM scratch, distroless or another allowlisted minimal base, and declare it with the label org.opencontainers.image.base.name."},
	{"image-size", "Image size below the limit",
		"Large images are slow to pull and scan and usually carry build tools or data that production does not need.",
		"Use a multi-stage build and a minimal base; exclude build context with .dockerignore."},
	{"no-latest-tag", "No `latest` tag",
		"`latest` is mutable: it says nothing about what runs, and a rollback to `latest` is not a rollback.",
		"Tag releases immutably (semver, git SHA) and deploy by digest; declare the base by digest too."},
}

var (
	shells = []string{"/bin/sh", "/bin/bash", "/bin/dash", "/bin/ash", "/bin/zsh", "/bin/ksh", "/bin/busybox",
		"/usr/bin/sh", "/usr/bin/bash", "/usr/bin/dash", "/usr/bin/zsh", "/usr/bin/busybox", "/sbin/busybox"}
	packageManagers = []string{"apt", "apt-get", "dpkg", "apk", "yum", "dnf", "microdnf", "tdnf", "rpm", "zypper", "pacman", "emerge"}
	binDirs         = []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"}

	secretName  = regexp.MustCompile(`(?i)(secret|passw(or)?d|passwd|\bpwd\b|_pwd$|token|api[_-]?key|apikey|private[_-]?key|access[_-]?key|credential)`)
	secretValue = []*regexp.Regexp{
		regexp.MustCompile(`AKIA[0-9A-Z]{16}`),                   // AWS access key ID
		regexp.MustCompile(`gh[pousr]_[A-Za-z0-9]{36}`),          // GitHub tokens
		regexp.MustCompile(`glpat-[A-Za-z0-9_-]{20}`),            // GitLab
		regexp.MustCompile(`xox[baprs]-[A-Za-z0-9-]{10,}`),       // Slack
		regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----`), // PEM private keys
	}
	// Names that look like secrets but are not (paths, public settings).
	notSecretName = regexp.MustCompile(`(?i)(_FILE$|_PATH$|_DIR$|^PATH$|_URL$|AUTHOR|OAUTH_ISSUER|_HOST$)`)
)

// secret file rules: basename (or path suffix) → why.
var secretFiles = []struct {
	match func(p string) bool
	why   string
}{
	{func(p string) bool { return path.Base(p) == ".env" || strings.HasPrefix(path.Base(p), ".env.") }, "dotenv file"},
	{func(p string) bool {
		b := path.Base(p)
		return b == "id_rsa" || b == "id_dsa" || b == "id_ecdsa" || b == "id_ed25519"
	}, "SSH private key"},
	{func(p string) bool { return strings.HasSuffix(p, "/.aws/credentials") }, "AWS credentials"},
	{func(p string) bool { return strings.HasSuffix(p, "/.docker/config.json") }, "Docker registry credentials"},
	{func(p string) bool {
		return strings.HasSuffix(p, "/.config/gcloud/application_default_credentials.json")
	}, "Google Cloud credentials"},
	{func(p string) bool { return strings.HasSuffix(p, "/.kube/config") }, "Kubernetes credentials"},
	{func(p string) bool {
		b := path.Base(p)
		return b == ".netrc" || b == ".pgpass" || b == ".git-credentials"
	}, "credentials file"},
	{func(p string) bool { return strings.HasSuffix(p, "/.npmrc") || strings.HasSuffix(p, "/.pypirc") }, "package registry credentials"},
}

// Run runs every check. It fails only when the input cannot be read; a
// check that cannot decide fails (fail closed) with the reason as evidence.
func Run(ctx context.Context, in Input, o Options) (*Report, error) {
	if in.Config == nil {
		return nil, errors.New("harden: no image config")
	}
	if len(o.MinimalBases) == 0 {
		o.MinimalBases = DefaultMinimalBases
	}
	if o.MaxImageBytes <= 0 {
		o.MaxImageBytes = 1 << 30
	}
	if o.MaxBinaryBytes <= 0 {
		o.MaxBinaryBytes = 512 << 20
	}
	if o.MinGoVersion == "" {
		o.MinGoVersion = DefaultMinGoVersion()
	}
	if !semver.IsValid(goSemver(o.MinGoVersion)) {
		return nil, fmt.Errorf("harden: minimum Go version %q: want goX.Y", o.MinGoVersion)
	}
	files := map[string]File{}
	for _, f := range in.Files {
		files[path.Clean("/"+f.Path)] = f
	}
	c := &checker{in: in, o: o, files: files, results: map[string]Result{}}
	if err := c.goBinaries(ctx); err != nil {
		return nil, err
	}
	c.nonroot()
	c.noShell()
	c.noPackageManager()
	c.noSecretsInConfig()
	if err := c.noSecretFiles(); err != nil {
		return nil, err
	}
	c.healthcheck()
	c.noSetuid()
	c.goChecks()
	c.ports()
	c.minimalBase()
	c.size()
	c.latest()

	r := &Report{GoBinaries: c.bins}
	for _, ch := range checks {
		res, ok := c.results[ch.ID]
		if !ok {
			res = Result{Status: Fail, Evidence: []string{"check did not run"}}
		}
		res.ID, res.Title = ch.ID, ch.Title
		if res.Status == Fail {
			res.Fix = ch.Fix
			r.Failed = append(r.Failed, ch.ID)
		}
		r.Checks = append(r.Checks, res)
	}
	return r, nil
}

type checker struct {
	in      Input
	o       Options
	files   map[string]File
	results map[string]Result
	bins    []GoBinary
}

func (c *checker) set(id string, st Status, evidence ...string) {
	c.results[id] = Result{Status: st, Evidence: evidence}
}

func (c *checker) nonroot() {
	spec := c.in.Config.Config.User
	uid, gid, err := c.resolveUser(spec)
	switch {
	case err != nil:
		c.set("nonroot-user", Fail, fmt.Sprintf("config User %q: %v", spec, err))
	case uid == 0:
		c.set("nonroot-user", Fail, fmt.Sprintf("config User %q is UID 0: the container runs as root", spec))
	case gid != "":
		c.set("nonroot-user", Pass, fmt.Sprintf("config User %q (UID %d, GID %s)", spec, uid, gid))
	default:
		c.set("nonroot-user", Pass, fmt.Sprintf("config User %q (UID %d)", spec, uid))
	}
}

// maxID is the largest UID or GID the check accepts: IDs are uint32, and
// 4294967295 is (uid_t)-1, which setresuid(2) and setresgid(2) read as
// "leave unchanged", so a runtime passing it through would keep root.
const maxID = 1<<32 - 2

// validName is a user or group name in the portable set shadow-utils
// accepts (plus '@', for directory-backed names). A leading '-' reads as an
// option, a leading '+' is an NIS compat entry in /etc/passwd, and the
// runtimes never trim whitespace.
var validName = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_.@-]*\$?$`)

// resolveUser resolves a config User, "user[:group]", to the UID the
// container runs as, and the GID when one is given ("" otherwise). The
// runtimes (runc and containerd through moby/sys/user) read each part with
// strconv.Atoi and fall back to a name lookup, so "00", "+0" and "-0" are
// all UID 0. Here an ID must be ASCII digits (leading zeros allowed) and a
// name must be valid and resolve in the image's /etc/passwd or /etc/group;
// anything else is an error, so the check fails closed instead of passing a
// spelling of root or a User the runtime refuses to start.
func (c *checker) resolveUser(spec string) (uid uint32, gid string, err error) {
	if spec == "" {
		return 0, "", errors.New("empty: no USER in the image, so the container runs as root")
	}
	if strings.Count(spec, ":") > 1 {
		return 0, "", errors.New("more than one ':': want user[:group]")
	}
	user, group, hasGroup := strings.Cut(spec, ":")
	if user == "" {
		return 0, "", errors.New("no user part before ':': the runtime keeps its default user, root")
	}
	uid, err = c.resolveID(user, "user", "UID", "/etc/passwd")
	if err != nil {
		return 0, "", err
	}
	if !hasGroup {
		return uid, "", nil
	}
	if group == "" {
		return 0, "", errors.New("empty group after ':': drop the ':' or name a group")
	}
	// The GID does not make the process root (UID 0 does), but a group the
	// runtime cannot resolve means the User is not what the image runs as.
	g, err := c.resolveID(group, "group", "GID", "/etc/group")
	if err != nil {
		return 0, "", err
	}
	return uid, strconv.FormatUint(uint64(g), 10), nil
}

// resolveID resolves one part of a config User: ASCII digits are the ID
// itself, a valid name is looked up in file (/etc/passwd or /etc/group,
// which both carry the ID in the third field).
func (c *checker) resolveID(s, kind, idKind, file string) (uint32, error) {
	if id, numeric, err := parseID(s); numeric {
		if err != nil {
			return 0, fmt.Errorf("%s %s", idKind, err)
		}
		return id, nil
	}
	switch {
	case strings.ContainsFunc(s, unicode.IsSpace):
		return 0, fmt.Errorf("%s %q contains whitespace: it is neither a %s nor a valid %s name, and runtimes do not trim it", kind, s, idKind, kind)
	case s[0] == '+' || s[0] == '-':
		return 0, fmt.Errorf("%s %q has a sign: a %s is unsigned digits, and runtimes parse \"+0\" and \"-0\" as %s 0", kind, s, idKind, idKind)
	case !validName.MatchString(s):
		return 0, fmt.Errorf("%s %q is not a valid %s name and not a numeric %s", kind, s, kind, idKind)
	}
	if kind == "user" && s == "root" {
		return 0, nil
	}
	id, ok, err := c.lookupID(file, s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%s %q: cannot read %s: %w", kind, s, file, err)
	case !ok:
		return 0, fmt.Errorf("%s %q is not in %s: the runtime cannot resolve it and refuses to start the container", kind, s, file)
	}
	return id, nil
}

// parseID parses a numeric UID or GID: ASCII digits only, leading zeros
// allowed ("00" is 0), at most maxID. numeric is false when s is not all
// digits, so it may be a name.
func parseID(s string) (id uint32, numeric bool, err error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > maxID {
		if n == maxID+1 {
			return 0, true, fmt.Errorf("%s is -1 as a 32-bit ID, (uid_t)-1 or (gid_t)-1, which setresuid and setresgid read as \"leave unchanged\"", s)
		}
		return 0, true, fmt.Errorf("%s is out of range (at most %d)", s, uint64(maxID))
	}
	return uint32(n), true, nil
}

// lookupID finds name in an /etc/passwd- or /etc/group-format file of the
// image; the first entry wins, as in the runtimes.
func (c *checker) lookupID(file, name string) (uint32, bool, error) {
	if _, ok := c.files[file]; !ok {
		return 0, false, nil
	}
	rc, err := c.in.Open(file)
	if err != nil {
		return 0, false, err
	}
	defer rc.Close()
	sc := bufio.NewScanner(io.LimitReader(rc, 1<<20))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) >= 3 && f[0] == name {
			id, numeric, err := parseID(f[2])
			if !numeric || err != nil {
				return 0, false, fmt.Errorf("bad ID %q for %s", f[2], name)
			}
			return id, true, nil
		}
	}
	return 0, false, sc.Err()
}

func (c *checker) present(p string) bool {
	_, ok := c.files[p]
	return ok
}

func (c *checker) noShell() {
	var found []string
	for _, s := range shells {
		if c.present(s) {
			found = append(found, s)
		}
	}
	if len(found) > 0 {
		c.set("no-shell", Fail, found...)
		return
	}
	c.set("no-shell", Pass, "none of "+strings.Join(shells, " ")+" present")
}

func (c *checker) noPackageManager() {
	var found []string
	for _, d := range binDirs {
		for _, pm := range packageManagers {
			if p := d + "/" + pm; c.present(p) {
				found = append(found, p)
			}
		}
	}
	if len(found) > 0 {
		c.set("no-package-manager", Fail, found...)
		return
	}
	c.set("no-package-manager", Pass, "no package manager binary in "+strings.Join(binDirs, " "))
}

// looksSecret reports why key=value looks like a secret, or "".
func looksSecret(key, value string) string {
	if value == "" {
		return ""
	}
	for _, re := range secretValue {
		if re.MatchString(value) {
			return "value matches " + re.String()
		}
	}
	if secretName.MatchString(key) && !notSecretName.MatchString(key) {
		return "name looks like a secret"
	}
	return ""
}

func (c *checker) noSecretsInConfig() {
	var ev []string
	for _, kv := range c.in.Config.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		if why := looksSecret(k, v); why != "" {
			ev = append(ev, fmt.Sprintf("ENV %s=<redacted> (%s)", k, why))
		}
	}
	keys := make([]string, 0, len(c.in.Config.Config.Labels))
	for k := range c.in.Config.Config.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if why := looksSecret(k, c.in.Config.Config.Labels[k]); why != "" {
			ev = append(ev, fmt.Sprintf("LABEL %s=<redacted> (%s)", k, why))
		}
	}
	if len(ev) > 0 {
		c.set("no-secrets-in-config", Fail, ev...)
		return
	}
	c.set("no-secrets-in-config", Pass, fmt.Sprintf("%d ENV and %d LABEL entries checked", len(c.in.Config.Config.Env), len(keys)))
}

func (c *checker) noSecretFiles() error {
	var ev []string
	gitDirs := map[string]bool{}
	paths := make([]string, 0, len(c.files))
	for p := range c.files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		f := c.files[p]
		if i := strings.Index(p+"/", "/.git/"); i >= 0 {
			d := p[:i] + "/.git"
			if !gitDirs[d] {
				gitDirs[d] = true
				ev = append(ev, d+"/ (git repository)")
			}
			continue
		}
		if !f.Mode.IsRegular() {
			continue
		}
		matched := false
		for _, r := range secretFiles {
			if r.match(p) {
				ev = append(ev, p+" ("+r.why+")")
				matched = true
				break
			}
		}
		if matched {
			continue
		}
		// Key files are judged by content: a certificate is public, a private key is not.
		if ext := path.Ext(p); (ext == ".pem" || ext == ".key" || ext == ".p8") && f.Size < 1<<20 {
			head, err := c.head(p, 64<<10)
			if err != nil {
				return fmt.Errorf("harden: read %s: %w", p, err)
			}
			if bytes.Contains(head, []byte("PRIVATE KEY-----")) {
				ev = append(ev, p+" (PEM private key)")
			}
		}
	}
	if len(ev) > 0 {
		c.set("no-secret-files", Fail, ev...)
		return nil
	}
	c.set("no-secret-files", Pass, fmt.Sprintf("%d paths checked", len(c.files)))
	return nil
}

func (c *checker) head(p string, n int64) ([]byte, error) {
	rc, err := c.in.Open(p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, n))
}

func (c *checker) healthcheck() {
	hc := c.in.Config.Config.Healthcheck
	if hc == nil || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
		c.set("healthcheck", Fail, "no HEALTHCHECK in the image config")
		return
	}
	c.set("healthcheck", Pass, "HEALTHCHECK "+strings.Join(hc.Test, " "))
}

func (c *checker) noSetuid() {
	var ev []string
	for _, f := range c.in.Files {
		if !f.Mode.IsRegular() {
			continue
		}
		switch {
		case f.Mode&fs.ModeSetuid != 0 && f.Mode&fs.ModeSetgid != 0:
			ev = append(ev, path.Clean("/"+f.Path)+" (setuid, setgid)")
		case f.Mode&fs.ModeSetuid != 0:
			ev = append(ev, path.Clean("/"+f.Path)+" (setuid)")
		case f.Mode&fs.ModeSetgid != 0:
			ev = append(ev, path.Clean("/"+f.Path)+" (setgid)")
		}
	}
	slices.Sort(ev)
	if len(ev) > 0 {
		c.set("no-setuid", Fail, ev...)
		return
	}
	c.set("no-setuid", Pass, "no setuid or setgid files")
}

// goBinaries finds Go executables (ELF with Go build info) and inspects them.
func (c *checker) goBinaries(ctx context.Context) error {
	paths := make([]string, 0)
	for p, f := range c.files {
		if f.Mode.IsRegular() && f.Mode&0o111 != 0 && f.Size > 64 {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := c.inspect(p, c.files[p].Size)
		if err != nil {
			return fmt.Errorf("harden: inspect %s: %w", p, err)
		}
		if b != nil {
			c.bins = append(c.bins, *b)
		}
	}
	return nil
}

func (c *checker) inspect(p string, size int64) (*GoBinary, error) {
	rc, err := c.in.Open(p)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var ra io.ReaderAt
	if x, ok := rc.(io.ReaderAt); ok {
		ra = x
		var magic [4]byte
		if _, err := ra.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
			return nil, nil
		}
	} else {
		var magic [4]byte
		if _, err := io.ReadFull(rc, magic[:]); err != nil || string(magic[:]) != elf.ELFMAG {
			return nil, nil
		}
		if size > c.o.MaxBinaryBytes {
			return nil, fmt.Errorf("ELF file of %d bytes is larger than the %d-byte inspection limit", size, c.o.MaxBinaryBytes)
		}
		rest, err := io.ReadAll(io.LimitReader(rc, c.o.MaxBinaryBytes))
		if err != nil {
			return nil, err
		}
		ra = bytes.NewReader(append(magic[:], rest...))
	}
	bi, err := buildinfo.Read(io.NewSectionReader(ra, 0, size))
	if err != nil {
		return nil, nil // an ELF file that is not a Go binary
	}
	ef, err := elf.NewFile(io.NewSectionReader(ra, 0, size))
	if err != nil {
		return nil, fmt.Errorf("a Go binary that is not a readable ELF file: %w", err)
	}
	b := &GoBinary{Path: p, GoVersion: bi.GoVersion, Static: true, Stripped: ef.Section(".symtab") == nil}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			b.Static = false
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "-trimpath":
			b.Trimpath = s.Value == "true"
		case "CGO_ENABLED":
			b.CGO = s.Value
		}
	}
	return b, nil
}

func (c *checker) goChecks() {
	if len(c.bins) == 0 {
		for _, id := range []string{"go-static", "go-stripped", "go-trimpath", "go-supported"} {
			c.set(id, NotApplicable, "no Go binaries in the image")
		}
		return
	}
	each := func(id string, ok func(b GoBinary) (bool, string)) {
		st := Pass
		var ev []string
		for _, b := range c.bins {
			good, why := ok(b)
			if !good {
				st = Fail
			}
			ev = append(ev, b.Path+": "+why)
		}
		c.set(id, st, ev...)
	}
	each("go-static", func(b GoBinary) (bool, string) {
		if b.Static {
			return true, "static (no ELF interpreter or dynamic section)"
		}
		return false, "dynamically linked (CGO_ENABLED=" + b.CGO + ")"
	})
	each("go-stripped", func(b GoBinary) (bool, string) {
		if b.Stripped {
			return true, "no symbol table"
		}
		return false, "has a .symtab symbol table"
	})
	each("go-trimpath", func(b GoBinary) (bool, string) {
		if b.Trimpath {
			return true, "-trimpath=true"
		}
		return false, "built without -trimpath"
	})
	min := goSemver(c.o.MinGoVersion)
	each("go-supported", func(b GoBinary) (bool, string) {
		v := goSemver(b.GoVersion)
		if !semver.IsValid(v) {
			return false, fmt.Sprintf("cannot parse Go version %q", b.GoVersion)
		}
		if semver.Compare(semver.MajorMinor(v), semver.MajorMinor(min)) < 0 {
			return false, fmt.Sprintf("%s is older than the oldest supported %s", b.GoVersion, c.o.MinGoVersion)
		}
		return true, b.GoVersion
	})
}

func (c *checker) ports() {
	var ports []string
	for p := range c.in.Config.Config.ExposedPorts {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	if len(ports) == 0 {
		c.set("no-privileged-ports", NotApplicable, "no EXPOSE")
		return
	}
	st := Pass
	var ev []string
	for _, p := range ports {
		num, _, _ := strings.Cut(p, "/")
		n, err := strconv.Atoi(num)
		switch {
		case err != nil:
			st = Fail
			ev = append(ev, p+" (not a port number)")
		case n == 22:
			st = Fail
			ev = append(ev, p+" (SSH)")
		case n < 1024:
			st = Fail
			ev = append(ev, p+" (privileged)")
		default:
			ev = append(ev, p)
		}
	}
	c.set("no-privileged-ports", st, ev...)
}

// Labels that declare the base image (OCI image-spec annotations).
const (
	LabelBaseName   = "org.opencontainers.image.base.name"
	LabelBaseDigest = "org.opencontainers.image.base.digest"
)

func (c *checker) minimalBase() {
	base := c.in.Config.Config.Labels[LabelBaseName]
	if base == "" {
		if c.in.OSPackages == 0 && !c.hasShell() {
			c.set("minimal-base", Pass, "no base declared; no OS packages and no shell (scratch-like filesystem)")
			return
		}
		c.set("minimal-base", Fail, fmt.Sprintf("no %s label, and the filesystem has %d OS packages", LabelBaseName, c.in.OSPackages))
		return
	}
	repo := BaseRepository(base)
	for _, pat := range c.o.MinimalBases {
		if ok, _ := path.Match(pat, repo); ok {
			c.set("minimal-base", Pass, fmt.Sprintf("%s (%s) matches allowlist entry %q", base, repo, pat))
			return
		}
	}
	c.set("minimal-base", Fail, fmt.Sprintf("%s (%s) is not in the minimal-base allowlist", base, repo))
}

func (c *checker) hasShell() bool {
	for _, s := range shells {
		if c.present(s) {
			return true
		}
	}
	return false
}

// BaseRepository normalises a base image name to its repository, the form
// the allowlist uses: "alpine:3.20" → "docker.io/library/alpine",
// "gcr.io/distroless/static@sha256:…" → "gcr.io/distroless/static".
func BaseRepository(ref string) string {
	if ref == "scratch" {
		return ref
	}
	r := ref
	if at := strings.Index(r, "@"); at >= 0 {
		r = r[:at]
	}
	if colon := strings.LastIndex(r, ":"); colon > strings.LastIndex(r, "/") {
		r = r[:colon]
	}
	first, _, hasSlash := strings.Cut(r, "/")
	if !hasSlash || !(strings.ContainsAny(first, ".:") || first == "localhost") {
		r = "docker.io/" + r
		if !hasSlash {
			r = "docker.io/library/" + strings.TrimPrefix(r, "docker.io/")
		}
	}
	return r
}

func (c *checker) size() {
	lim := c.o.MaxImageBytes
	if c.in.Size > lim {
		c.set("image-size", Fail, fmt.Sprintf("%d bytes > limit %d", c.in.Size, lim))
		return
	}
	c.set("image-size", Pass, fmt.Sprintf("%d bytes ≤ limit %d", c.in.Size, lim))
}

func (c *checker) latest() {
	var ev []string
	st := Pass
	if c.in.Tag == "latest" {
		st = Fail
		ev = append(ev, "pushed as :latest")
	} else if c.in.Tag != "" {
		ev = append(ev, "pushed as :"+c.in.Tag)
	}
	if base := c.in.Config.Config.Labels[LabelBaseName]; base != "" && base != "scratch" {
		r := base
		if at := strings.Index(r, "@"); at >= 0 {
			ev = append(ev, "base pinned by digest: "+base)
		} else if colon := strings.LastIndex(r, ":"); colon < 0 || colon < strings.LastIndex(r, "/") || r[colon+1:] == "latest" {
			st = Fail
			ev = append(ev, "base "+base+" uses the latest tag")
		} else {
			ev = append(ev, "base "+base)
		}
	}
	if len(ev) == 0 {
		c.set("no-latest-tag", NotApplicable, "no tag known (pushed by digest) and no base declared")
		return
	}
	c.set("no-latest-tag", st, ev...)
}

func goSemver(v string) string {
	v = strings.TrimPrefix(v, "go")
	// go1.26.8-X:boringcrypto, go1.27rc1 → semver-ish
	if i := strings.IndexAny(v, " -+"); i >= 0 {
		v = v[:i]
	}
	for _, pre := range []string{"rc", "beta"} {
		if i := strings.Index(v, pre); i > 0 {
			v = v[:i] + "-" + v[i:]
		}
	}
	return "v" + v
}

// DefaultMinGoVersion is one minor release before the Go attestd was built
// with: Go supports its two newest releases.
func DefaultMinGoVersion() string {
	v := goSemver(buildGoVersion())
	mm := semver.MajorMinor(v) // v1.26
	minor, err := strconv.Atoi(mm[strings.Index(mm, ".")+1:])
	if err != nil || minor == 0 {
		return "go1.0"
	}
	return fmt.Sprintf("go1.%d", minor-1)
}

func buildGoVersion() string { return runtime.Version() }

// ReadReport reads a hardening predicate (a Report, as Run wrote and the
// gate verified) and returns the IDs of the checks that passed and failed.
// A check without an ID or with a status Run never writes makes the whole
// report unreadable: a reader must not guess at a security fact.
func ReadReport(pred []byte) (passed, failed []string, err error) {
	var r Report
	if err := json.Unmarshal(pred, &r); err != nil {
		return nil, nil, fmt.Errorf("hardening report: %w", err)
	}
	if len(r.Checks) == 0 {
		return nil, nil, errors.New("hardening report: no checks")
	}
	passed, failed = []string{}, []string{}
	for i, c := range r.Checks {
		switch {
		case c.ID == "":
			return nil, nil, fmt.Errorf("hardening report: checks[%d] has no id", i)
		case c.Status == Pass:
			passed = append(passed, c.ID)
		case c.Status == Fail:
			failed = append(failed, c.ID)
		case c.Status == NotApplicable:
		default:
			return nil, nil, fmt.Errorf("hardening report: check %s has status %q", c.ID, c.Status)
		}
	}
	return passed, failed, nil
}
