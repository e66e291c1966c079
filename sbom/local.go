package sbom

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// localImage is a v1.Image over bytes already fetched and layers already on
// disk, so reading it never touches the network. Its manifest and config
// are checked against their digests here, its layers by the layer cache
// when they were downloaded.
type localImage struct {
	manifest    *v1.Manifest
	rawManifest []byte
	rawConfig   []byte
	config      *v1.ConfigFile
	layers      []*localLayer
}

type localLayer struct {
	f      LayerFile
	digest v1.Hash
	diffID v1.Hash
}

func newLocalImage(img Image) (*localImage, error) {
	m, err := v1.ParseManifest(bytes.NewReader(img.RawManifest))
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if want := digestOf(img.Name); want != "" {
		if got := sha256Hex(img.RawManifest); got != want {
			return nil, fmt.Errorf("manifest hashes to %s, want %s", got, want)
		}
	}
	if got := sha256Hex(img.RawConfig); got != m.Config.Digest.String() {
		return nil, fmt.Errorf("config hashes to %s, manifest says %s", got, m.Config.Digest)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(img.RawConfig))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(m.Layers) != len(img.Layers) {
		return nil, fmt.Errorf("manifest has %d layers, %d given", len(m.Layers), len(img.Layers))
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("manifest has %d layers but config lists %d diff IDs", len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	li := &localImage{manifest: m, rawManifest: img.RawManifest, rawConfig: img.RawConfig, config: cf}
	for i, l := range img.Layers {
		if l.Digest != m.Layers[i].Digest.String() {
			return nil, fmt.Errorf("layer %d is %s, manifest says %s", i, l.Digest, m.Layers[i].Digest)
		}
		if l.DiffID != "" && l.DiffID != cf.RootFS.DiffIDs[i].String() {
			return nil, fmt.Errorf("layer %d has diff ID %s, config says %s", i, l.DiffID, cf.RootFS.DiffIDs[i])
		}
		l.DiffID = cf.RootFS.DiffIDs[i].String()
		if l.MediaType == "" {
			l.MediaType = string(m.Layers[i].MediaType)
		}
		li.layers = append(li.layers, &localLayer{f: l, digest: m.Layers[i].Digest, diffID: cf.RootFS.DiffIDs[i]})
	}
	return li, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func (i *localImage) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, len(i.layers))
	for n, l := range i.layers {
		out[n] = l
	}
	return out, nil
}
func (i *localImage) MediaType() (types.MediaType, error) {
	if i.manifest.MediaType != "" {
		return i.manifest.MediaType, nil
	}
	return types.OCIManifestSchema1, nil
}
func (i *localImage) Size() (int64, error)                { return int64(len(i.rawManifest)), nil }
func (i *localImage) ConfigName() (v1.Hash, error)        { return i.manifest.Config.Digest, nil }
func (i *localImage) ConfigFile() (*v1.ConfigFile, error) { return i.config.DeepCopy(), nil }
func (i *localImage) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *localImage) Digest() (v1.Hash, error) {
	return v1.NewHash(sha256Hex(i.rawManifest))
}
func (i *localImage) Manifest() (*v1.Manifest, error) { return i.manifest.DeepCopy(), nil }
func (i *localImage) RawManifest() ([]byte, error)    { return i.rawManifest, nil }
func (i *localImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	for _, l := range i.layers {
		if l.digest == h {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no layer %s", h)
}
func (i *localImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	for _, l := range i.layers {
		if l.diffID == h {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no layer with diff ID %s", h)
}

func (l *localLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *localLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *localLayer) Compressed() (io.ReadCloser, error) {
	return nil, errors.New("sbom: only the uncompressed layer is kept locally")
}
func (l *localLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.f.Path) }
func (l *localLayer) Size() (int64, error)                 { return l.f.Size, nil }
func (l *localLayer) MediaType() (types.MediaType, error)  { return types.MediaType(l.f.MediaType), nil }
