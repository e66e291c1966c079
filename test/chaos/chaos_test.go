package chaos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCampaignShort is the campaign's short version, part of `make test`:
// 20 images, a few kills, each dependency faulted and down for seconds, the
// disk filled, the hostile images in small sizes. It fails when an
// invariant breaks. `make chaos` runs the full one.
func TestCampaignShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the campaign drives the real stack")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	o := Short()
	o.Root, o.Dir, o.Log = root, t.TempDir(), testLog{t}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	rep, err := Run(ctx, o)
	if rep != nil {
		var b strings.Builder
		rep.Write(&b)
		t.Log(b.String())
		if os.Getenv("ATTESTD_CHAOS_REPORT") != "" {
			_ = os.WriteFile(os.Getenv("ATTESTD_CHAOS_REPORT"), []byte(b.String()), 0o644)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range rep.Failed() {
		t.Errorf("invariant broken: %s", f)
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
