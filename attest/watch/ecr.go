package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// ECR parses Amazon ECR "ECR Image Action" events as an EventBridge API
// destination posts them (the event JSON, no input transformer):
//
//	{"id": "…", "detail-type": "ECR Image Action", "source": "aws.ecr",
//	 "account": "123456789012", "region": "us-west-2",
//	 "detail": {"action-type": "PUSH", "result": "SUCCESS", "repository-name": "…",
//	            "image-digest": "sha256:…", "image-tag": "latest"}}
//
// Successful PUSH and DELETE actions are events; failures, other ECR events
// (scans, pull-through cache, replication, referrers) and other sources are
// ignored. The registry host is <account>.dkr.ecr.<region>.amazonaws.com
// (.com.cn in China regions) unless Registry overrides it. The API
// destination's connection sends an API-key header: the source
// authenticates by that header.
type ECR struct {
	Registry string
}

// ECRImageAction is the detail-type of ECR's push and delete events.
const ECRImageAction = "ECR Image Action"

type ecrEvent struct {
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Region     string          `json:"region"`
	Detail     json.RawMessage `json:"detail"`
}

type ecrImageAction struct {
	ActionType     string `json:"action-type"`
	Result         string `json:"result"`
	RepositoryName string `json:"repository-name"`
	ImageDigest    string `json:"image-digest"`
	ImageTag       string `json:"image-tag"`
	// The manifest's and its config's media types (in the event schema
	// since 2024; absent from older events).
	ManifestMediaType string `json:"manifest-media-type"`
	ArtifactMediaType string `json:"artifact-media-type"`
}

var (
	awsAccountRe = regexp.MustCompile(`^[0-9]{12}$`)
	awsRegionRe  = regexp.MustCompile(`^[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}$`)
)

// ContentTypes implements Parser (API destinations send
// "application/json; charset=utf-8").
func (ECR) ContentTypes() []string { return []string{"application/json"} }

// Parse implements Parser.
func (c ECR) Parse(_ *http.Request, body []byte) ([]Incoming, error) {
	var e ecrEvent
	if err := decodeStrict(body, &e); err != nil {
		return nil, fmt.Errorf("eventbridge event: %w", err)
	}
	for _, f := range []struct{ name, v string }{{"id", e.ID}, {"source", e.Source}, {"detail-type", e.DetailType}} {
		if f.v == "" {
			return nil, fieldErr(f.name, errors.New("missing: attestd takes the EventBridge event as it is, without an input transformer"))
		}
	}
	if e.Source != "aws.ecr" || e.DetailType != ECRImageAction {
		return []Incoming{{Event: Event{ID: e.ID, Action: Action(e.DetailType)}}}, nil
	}
	var d ecrImageAction
	if err := decodeStrict(e.Detail, &d); err != nil {
		return nil, fieldErr("detail", err)
	}
	action := Action(strings.ToLower(d.ActionType + "_" + d.Result))
	switch {
	case d.Result != "SUCCESS":
	case d.ActionType == "PUSH":
		action = ActionPush
	case d.ActionType == "DELETE":
		action = ActionDelete
	}
	if action != ActionPush && action != ActionDelete {
		return []Incoming{{Event: Event{ID: e.ID, Action: action}}}, nil
	}
	if d.ImageDigest == "" {
		return nil, fieldErr("detail.image-digest", errors.New("missing: ECR names the digest of every image action"))
	}
	host, regField, err := c.host(e)
	if err != nil {
		return nil, err
	}
	in := Incoming{
		Event: Event{ID: e.ID, Action: action, Registry: host, Repository: d.RepositoryName,
			Digest: d.ImageDigest, Tag: d.ImageTag, MediaType: d.ManifestMediaType},
		Fields: Fields{Registry: regField, Repository: "detail.repository-name", Digest: "detail.image-digest", Tag: "detail.image-tag"},
	}
	if !isIndex(d.ManifestMediaType) {
		// For a manifest, the artifact media type is its config's.
		in.ConfigType = d.ArtifactMediaType
	}
	return []Incoming{in}, nil
}

// host is Registry or the registry of the event's account and region.
func (c ECR) host(e ecrEvent) (host, field string, err error) {
	if c.Registry != "" {
		return c.Registry, "sources[].registry (attestd's configuration)", nil
	}
	if !awsAccountRe.MatchString(e.Account) {
		return "", "", fieldErr("account", fmt.Errorf("%q is not a 12-digit AWS account id", e.Account))
	}
	if !awsRegionRe.MatchString(e.Region) {
		return "", "", fieldErr("region", fmt.Errorf("%q is not an AWS region such as us-west-2", e.Region))
	}
	domain := "amazonaws.com"
	if strings.HasPrefix(e.Region, "cn-") {
		domain = "amazonaws.com.cn"
	}
	return e.Account + ".dkr.ecr." + e.Region + "." + domain, "account", nil
}
