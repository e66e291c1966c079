// Package sbom will say what is inside an image: syft-generated SPDX 2.3 and
// CycloneDX 1.6 documents for every platform of an index, from layers fetched
// once and shared with the hardening and vulnerability analysers
// (sbom/harden, sbom/vuln). It is an L0 package: it imports nothing of
// attestd. Built by the image analysis issue; until then the pipeline reports
// its stage as skipped.
package sbom
