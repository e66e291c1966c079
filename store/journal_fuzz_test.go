package store

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzReadJournal feeds arbitrary bytes after a journal header to the
// reader that replays it at every open: it never panics, refuses only with
// ErrCorrupt, and what it accepts is a run of whole records from the
// start, each ending after the last, the last ending where it says the
// good part ends (what follows is cut off as a torn tail).
func FuzzReadJournal(f *testing.F) {
	rec := func(items ...IntakeItem) []byte {
		b, err := encodeRecord(&journalRecord{Time: time.Unix(1, 0).UTC(), Items: items})
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	a, b := rec(journalItem(1, "e1")), rec(journalItem(2, "e2"), journalItem(3, ""))
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	damaged := cat(a)
	damaged[12] ^= 1
	f.Add(cat(a))
	f.Add(cat(a, b))
	f.Add(cat(a, b[:len(b)-3]))    // torn tail
	f.Add(cat(a, b[:5]))           // torn header
	f.Add(cat(damaged, b))         // damage before an acknowledged record
	f.Add(cat(a, make([]byte, 8))) // zeros after a record
	f.Add([]byte{})
	hdr := append(append([]byte(nil), journalMagic...), binary.BigEndian.AppendUint64(nil, 1)...)
	path := filepath.Join(f.TempDir(), "journal") // one per fuzzing process, rewritten by each input
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, append(append([]byte(nil), hdr...), data...), 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		recs, end, err := readJournal(fh, journalHeader)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("refused without ErrCorrupt: %v", err)
			}
			return
		}
		off := int64(journalHeader)
		for i, r := range recs {
			if r.end <= off {
				t.Fatalf("record %d ends at %d, not after %d", i, r.end, off)
			}
			off = r.end
		}
		if off != end || end > int64(journalHeader+len(data)) {
			t.Fatalf("records end at %d, reader says %d, file holds %d", off, end, journalHeader+len(data))
		}
	})
}
