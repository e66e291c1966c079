package app

import (
	"os"
	"runtime/debug"
	"testing"
)

// The daemon's collector target is gcPercent unless the operator set GOGC,
// which then decides alone.
func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	t.Setenv("GOGC", "150") // registers the restore of the variable
	if got := tuneGC(); got != "GOGC=150" {
		t.Errorf("with GOGC set: %q", got)
	}
	if p := debug.SetGCPercent(100); p != 100 {
		t.Errorf("with GOGC set, the target moved to %d", p)
	}
	os.Unsetenv("GOGC")
	if got := tuneGC(); got != "200 (GOGC unset)" {
		t.Errorf("without GOGC: %q", got)
	}
	if p := debug.SetGCPercent(100); p != gcPercent {
		t.Errorf("without GOGC, the target is %d, want %d", p, gcPercent)
	}
}
