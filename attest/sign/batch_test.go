package sign

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"

	"github.com/attestd/attestd/attest/sign/signtest"
)

// TestMissingNeedsTheManifest: a batch session lists its bundles at Flush;
// Missing counts one it attached itself only while it is listed AND its
// manifest is there. Whoever can write to the registry can delete the
// manifest and leave the (fallback) listing as it was.
func TestMissingNeedsTheManifest(t *testing.T) {
	ts := signtest.New(t)
	for _, referrers := range []bool{false, true} {
		t.Run(fmt.Sprint("referrers=", referrers), func(t *testing.T) {
			ctx := context.Background()
			host, rc := signtest.NewRegistry(t, referrers)
			ours := keylessSigner(t, ts, rc, testIdentity, nil)
			d := signtest.PushImage(t, host)
			payload, err := statement(d, testPredType, map[string]any{"n": 1.0})
			if err != nil {
				t.Fatal(err)
			}
			sess, _ := ours.k.Session()
			sess.Batch()
			if err := sess.AttestStatement(ctx, d.String(), testPredType, payload); err != nil {
				t.Fatal(err)
			}
			if missing, err := sess.Missing(ctx, d.String(), []string{testPredType}); err != nil || len(missing) != 0 {
				t.Fatalf("after attaching: Missing %v, %v; want none", missing, err)
			}
			mt, _ := sgbundle.MediaTypeString("0.3")
			refs, err := rc.Referrers(ctx, d, mt)
			if err != nil || len(refs) != 1 {
				t.Fatalf("referrers %v %v", refs, err)
			}
			if err := remote.Delete(d.Context().Digest(refs[0].Digest.String())); err != nil {
				t.Fatal(err)
			}
			missing, err := sess.Missing(ctx, d.String(), []string{testPredType})
			if err == nil && len(missing) == 0 {
				t.Errorf("Missing reports nothing missing while the bundle manifest is gone")
			}
		})
	}
}
