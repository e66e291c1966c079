package watch

import "fmt"

// imageConfigTypes are the config media types of runnable container images.
// Everything else — Helm charts, WASM modules, SBOM and attestation
// artifacts, cosign signatures and bundles (empty config) — is ignored: an
// allowlist, so an artifact type nobody thought of is not analysed as an
// image.
var imageConfigTypes = map[string]bool{
	"application/vnd.oci.image.config.v1+json":       true,
	"application/vnd.docker.container.image.v1+json": true,
}

// MaxManifestBytes bounds a manifest the receiver reads to resolve a tag
// (the distribution spec's recommended limit); a Resolver should stop
// reading there.
const MaxManifestBytes = 4 << 20

// describe fills MediaType, ConfigType, ArtifactType and (for an index)
// Children of in from its manifest bytes.
func (in *Incoming) describe(manifest []byte) error {
	var m struct {
		MediaType    string `json:"mediaType"`
		ArtifactType string `json:"artifactType"`
		Config       *struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
		} `json:"layers"`
		Manifests []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"manifests"`
	}
	if err := decodeStrict(manifest, &m); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if in.Event.MediaType == "" {
		in.Event.MediaType = m.MediaType
	}
	if m.Config != nil {
		in.ConfigType = m.Config.MediaType
	}
	in.ArtifactType = m.ArtifactType
	if len(in.RefTypes) == 0 {
		for _, l := range m.Layers {
			in.RefTypes = append(in.RefTypes, l.MediaType)
		}
	}
	if len(in.Event.Children) == 0 && isIndex(in.Event.MediaType) {
		for _, c := range m.Manifests {
			if imageType[c.MediaType] && ValidDigest(c.Digest) == nil {
				in.Event.Children = append(in.Event.Children, c.Digest)
			}
		}
	}
	return nil
}

func isIndex(mt string) bool {
	return mt == "application/vnd.oci.image.index.v1+json" || mt == "application/vnd.docker.distribution.manifest.list.v2+json"
}
