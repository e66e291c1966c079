package chaos

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// hostile is one hostile image: how it was made and what must become of it.
type hostile struct {
	name string
	// mustDeny: a final state other than promoted. Otherwise any final
	// state will do (the image may be harmless once read safely), as long
	// as the daemon stays within its bounds.
	mustDeny bool
	// submit: pushed where nothing watches and handed to the daemon with
	// POST /api/v1/submit. For the fanout index: in a watched repository
	// each child manifest's PUT is an event of its own, so 10,000
	// children would be 10,000 real jobs before the index exists.
	submit bool
	make   func(ctx context.Context, c *Campaign, repoTag string) (string, error) // returns the digest; "" when the registry refused it
}

func (c *Campaign) hostiles() []hostile {
	marker := "attestd-escape-" + nonce()
	return []hostile{
		{"decompression bomb (" + gib(c.o.BombBytes) + " from a few MiB)", true, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			b, err := newBomb(c.o.BombBytes)
			if err != nil {
				return "", err
			}
			return c.pushOnBase(ctx, ref, b)
		}},
		{"layer stream that never ends", true, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			l, err := layerOf([]entry{{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "endless-" + nonce()}, data: []byte("x")}})
			if err != nil {
				return "", err
			}
			d, _ := l.Digest()
			c.prox["registry"].Endless(d.String())
			return c.pushOnBase(ctx, ref, l)
		}},
		{"tar entries with ../, absolute paths, hard links and symlinks out, symlink loops", false, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			l, err := escapeLayer(marker)
			if err != nil {
				return "", err
			}
			return c.pushOnBase(ctx, ref, l)
		}},
		{fmt.Sprintf("%d tiny files", c.o.ManyFiles), false, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			l, err := manyFilesLayer(c.o.ManyFiles)
			if err != nil {
				return "", err
			}
			return c.pushOnBase(ctx, ref, l)
		}},
		{fmt.Sprintf("image index with %d children", c.o.IndexFanout), true, true, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			return c.fanoutIndex(ctx, ref, c.o.IndexFanout)
		}},
		{fmt.Sprintf("%d junk referrers (sigstore bundle type) on one image", c.o.Referrers), true, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			img, err := appImage(c.bases["amd64"], "65532")
			if err != nil {
				return "", err
			}
			if err := c.junkReferrers(ctx, ref, img, c.o.Referrers); err != nil {
				return "", err
			}
			return pushDigest(ctx, ref, img)
		}},
		{"100 MB manifest", true, false, func(ctx context.Context, c *Campaign, ref string) (string, error) {
			return putHugeManifest(ctx, ref, 100<<20)
		}},
	}
}

// hostilePhase pushes each hostile image and checks what became of it and
// of the daemon: still alive, memory and disk bounded, nothing written
// outside its own files.
func (c *Campaign) hostilePhase(ctx context.Context) error {
	hs := c.hostiles()
	for i, h := range hs {
		repo := fmt.Sprintf("staging/hostile-%d", i)
		if h.submit {
			repo = fmt.Sprintf("chaos-hostile/hostile-%d", i)
		}
		start := time.Now()
		c.logf("hostile: %s", h.name)
		d, err := h.make(ctx, c, c.stk.RegistryHost+"/"+repo+":v1.0.0")
		res := hostileResult{Name: h.name, MustDeny: h.mustDeny}
		var refused string
		if err == nil && h.submit {
			refused, err = c.d.submit(ctx, c.regHost+"/"+repo+"@"+d)
		}
		switch {
		case err != nil && d == "":
			res.Outcome = "registry refused it: " + firstLine(err.Error())
			res.OK = true
		case err != nil:
			return err
		case refused != "":
			res.Outcome = "submit refused it: " + firstLine(refused)
			res.OK = true
		default:
			p := &pushed{ref: c.regHost + "/" + repo + "@" + d, repo: repo, tag: "v1.0.0", digest: d, allow: !h.mustDeny, hostile: h.name, at: time.Now(), phase: "hostile"}
			c.mu.Lock()
			c.images = append(c.images, p)
			c.mu.Unlock()
			recs, werr := c.waitFinal(ctx, []*pushed{p}, 4*time.Minute)
			if werr != nil {
				res.Outcome = werr.Error()
				break
			}
			r := recs[p.ref]
			res.Outcome = string(r.State)
			if r.LastError != "" {
				res.Outcome += ": " + firstLine(r.LastError)
			} else if r.Decision != nil && len(r.Decision.Reasons) > 0 {
				res.Outcome += ": " + firstLine(strings.Join(r.Decision.Reasons, "; "))
			}
			res.OK = !h.mustDeny || r.State != "promoted"
			if h.mustDeny {
				p.allow = false
			} else {
				p.allow = r.State == "promoted"
			}
		}
		res.Took = time.Since(start)
		res.DataBytes = dirBytes(c.d.dataDir)
		c.rep.Hostile = append(c.rep.Hostile, res)
		if !c.d.alive() {
			return fmt.Errorf("the daemon died on hostile image %q", h.name)
		}
	}
	// Nothing escaped the daemon's own files.
	for _, pat := range []string{"/tmp/attestd-escape-*", "/etc/attestd-escape-*", "/attestd-escape-*"} {
		m, _ := filepath.Glob(pat)
		c.rep.Escaped = append(c.rep.Escaped, m...)
	}
	return nil
}

type hostileResult struct {
	Name      string
	MustDeny  bool
	Outcome   string
	OK        bool
	Took      time.Duration
	DataBytes int64
}

func pushDigest(ctx context.Context, ref string, t remote.Taggable) (string, error) {
	d, err := pushImage(ctx, ref, t)
	if err != nil {
		return "", err
	}
	return d.DigestStr(), nil
}

// pushOnBase pushes the shared base plus l (nonroot, so only l can deny
// it) to ref.
func (c *Campaign) pushOnBase(ctx context.Context, ref string, l v1.Layer) (string, error) {
	img, err := onBase(c.bases["amd64"], l)
	if err != nil {
		return "", err
	}
	return pushDigest(ctx, ref, img)
}

// junkReferrers pushes n manifests claiming to be Sigstore bundles about
// img (its subject) and a referrers fallback index listing them, before
// img itself is pushed: the daemon meets them on its first look.
func (c *Campaign) junkReferrers(ctx context.Context, ref string, img v1.Image, n int) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	repo := tag.Context()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithUserAgent("attestd-chaos"), remote.WithJobs(8)}
	junk := static.NewLayer([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","junk":true}`), "application/vnd.dev.sigstore.bundle.v0.3+json")
	if err := remote.WriteLayer(repo, junk, opts...); err != nil {
		return err
	}
	emptyCfg := static.NewLayer([]byte("{}"), "application/vnd.oci.empty.v1+json")
	if err := remote.WriteLayer(repo, emptyCfg, opts...); err != nil {
		return err
	}
	sd, _ := img.Digest()
	ssz, _ := img.Size()
	jd, _ := junk.Digest()
	jsz, _ := junk.Size()
	cd, _ := emptyCfg.Digest()
	type desc struct {
		MediaType    string            `json:"mediaType"`
		Digest       string            `json:"digest"`
		Size         int64             `json:"size"`
		ArtifactType string            `json:"artifactType,omitempty"`
		Annotations  map[string]string `json:"annotations,omitempty"`
	}
	const bundleType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// Plain PUTs, sixteen at a time: ggcr's pusher would also update the
	// fallback tag for each (a read-modify-write per referrer).
	list := make([]desc, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		m, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1), "artifactType": bundleType,
			"config":      desc{MediaType: "application/vnd.oci.empty.v1+json", Digest: cd.String(), Size: 2},
			"layers":      []desc{{MediaType: bundleType, Digest: jd.String(), Size: jsz}},
			"subject":     desc{MediaType: string(types.OCIManifestSchema1), Digest: sd.String(), Size: ssz},
			"annotations": map[string]string{"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1", "chaos.n": fmt.Sprint(i)},
		})
		d := sha256Digest(m)
		list[i] = desc{MediaType: string(types.OCIManifestSchema1), Digest: d, Size: int64(len(m)), ArtifactType: bundleType,
			Annotations: map[string]string{"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"}}
		g.Go(func() error { return putManifest(gctx, repo, d, types.OCIManifestSchema1, m) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": string(types.OCIImageIndex), "manifests": list})
	fallback := repo.Tag(strings.Replace(sd.String(), ":", "-", 1))
	return putManifest(ctx, repo, fallback.TagStr(), types.OCIImageIndex, idx)
}

// fanoutIndex pushes an index of n children to ref: one child image's
// blobs, n manifests of it differing by an annotation (plain PUTs, sixteen
// at a time), then the index.
func (c *Campaign) fanoutIndex(ctx context.Context, ref string, n int) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	child, err := appImage(c.bases["amd64"], "65532")
	if err != nil {
		return "", err
	}
	cd, _ := child.Digest()
	// The child's blobs (and the child itself, untagged) in the index's
	// repository: the registry checks an index's children are there.
	if err := remote.Write(tag.Context().Digest(cd.String()), child, remote.WithContext(ctx), remote.WithUserAgent("attestd-chaos")); err != nil {
		return "", err
	}
	m, err := child.Manifest()
	if err != nil {
		return "", err
	}
	type entry struct {
		MediaType string       `json:"mediaType"`
		Digest    string       `json:"digest"`
		Size      int64        `json:"size"`
		Platform  *v1.Platform `json:"platform"`
	}
	entries := make([]entry, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		mc := m.DeepCopy()
		mc.Annotations = map[string]string{"chaos.n": fmt.Sprint(i)}
		raw, err := json.Marshal(mc)
		if err != nil {
			return "", err
		}
		d := sha256Digest(raw)
		entries[i] = entry{MediaType: string(types.OCIManifestSchema1), Digest: d, Size: int64(len(raw)),
			Platform: &v1.Platform{OS: "linux", Architecture: "amd64", Variant: fmt.Sprintf("v%d", i)}}
		g.Go(func() error { return putManifest(gctx, tag.Context(), d, types.OCIManifestSchema1, raw) })
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": string(types.OCIImageIndex), "manifests": entries})
	if err := putManifest(ctx, tag.Context(), tag.TagStr(), types.OCIImageIndex, idx); err != nil {
		return "", err
	}
	return sha256Digest(idx), nil
}

// putManifest is a plain PUT of a manifest (the registry is loopback,
// anonymous).
func putManifest(ctx context.Context, repo name.Repository, reference string, mt types.MediaType, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+repo.RegistryStr()+"/v2/"+repo.RepositoryStr()+"/manifests/"+reference, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("PUT %s/manifests/%s: %s %s", repo, reference, resp.Status, msg)
	}
	return nil
}

func sha256Digest(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// putHugeManifest PUTs an image manifest of size bytes (padded with an
// annotation). Registries cap manifest size; what this one answered is the
// outcome when it refuses.
func putHugeManifest(ctx context.Context, ref string, size int) (string, error) {
	pad := make([]byte, size/2)
	_, _ = rand.Read(pad)
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": string(types.OCIManifestSchema1),
		"config":      map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
		"layers":      []any{},
		"annotations": map[string]string{"pad": hex.EncodeToString(pad)},
	})
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+tag.RegistryStr()+"/v2/"+tag.RepositoryStr()+"/manifests/"+tag.TagStr(), bytes.NewReader(m))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", string(types.OCIManifestSchema1))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("PUT of a %d MB manifest: %s", len(m)>>20, resp.Status)
	}
	h := sha256.Sum256(m)
	return "sha256:" + hex.EncodeToString(h[:]), nil
}

func gib(n int64) string { return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30)) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
