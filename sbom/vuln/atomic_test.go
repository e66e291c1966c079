package vuln

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFileAtomic: the file lands complete under its name, with no
// temp file left, and the directory sync runs through.
func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "latest.json")
	for _, content := range []string{`{"v":1}`, `{"v":2}`} {
		if err := writeFileAtomic(p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != content {
			t.Fatalf("read %q (%v), want %q", b, err, content)
		}
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Errorf("%d entries in the directory, want only latest.json", len(des))
	}
	if err := syncDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("syncing a missing directory succeeded")
	}
}
