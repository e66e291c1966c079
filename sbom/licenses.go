package sbom

import (
	"context"
	"fmt"
	"sync"

	"github.com/anchore/syft/syft"
)

// LicenseScanner is syft's license scanner, built on first use and then
// shared by every scan given it (Options.Licenses). Without one, each
// syft.CreateSBOM compiles licensecheck's matcher for all its built-in
// license texts anew: a CPU profile of attestd put a quarter of its samples
// there. The scanner only reads that compiled matcher (licensecheck's own
// package-level Scan shares one the same way), so it is safe for
// concurrent use. Build one per process, in app.
type LicenseScanner struct {
	// carrier is a context holding nothing but the scanner. syft keeps the
	// scanner's type internal: a context value set by
	// syft.SetContextLicenseScanner is the only handle a caller gets, so
	// this is the one context attestd stores.
	carrier func() (context.Context, error)
}

// NewLicenseScanner returns a LicenseScanner; the scanner itself is built
// by the first scan that uses it.
func NewLicenseScanner() *LicenseScanner {
	return &LicenseScanner{carrier: sync.OnceValues(func() (context.Context, error) {
		// The same license settings as the CreateSBOMConfig of Scan.SBOM.
		return syft.SetContextLicenseScanner(context.Background(), syft.DefaultCreateSBOMConfig().Licenses)
	})}
}

// Build builds the scanner now rather than in the first scan: compiling
// licensecheck's matcher takes about 0.6 s of CPU, which a daemon pays
// before its first image instead of in it.
func (l *LicenseScanner) Build() error {
	if _, err := l.carrier(); err != nil {
		return fmt.Errorf("license scanner: %w", err)
	}
	return nil
}

// with returns ctx carrying the shared scanner, which syft.CreateSBOM then
// uses instead of building its own.
func (l *LicenseScanner) with(ctx context.Context) (context.Context, error) {
	carrier, err := l.carrier()
	if err != nil {
		return nil, fmt.Errorf("license scanner: %w", err)
	}
	return valuesFrom{Context: ctx, values: carrier}, nil
}

// valuesFrom is a context whose deadline, cancellation and values are its
// parent's, and which falls back to values' values for keys its parent
// does not hold.
type valuesFrom struct {
	context.Context
	values context.Context
}

func (c valuesFrom) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	return c.values.Value(key)
}
