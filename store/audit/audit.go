// Package audit checks and exports attestd's hash-chained audit log (the
// store appends the entries, in the same transaction as the changes they
// record; see store.AuditEntry).
//
// Verify re-hashes every entry from its stored bytes and follows the chain,
// so it detects an entry modified, deleted, inserted or reordered anywhere in
// the log, and a head that does not match the last entry. What no hash
// chain can detect on its own is the removal of the newest entries together
// with the head: export the head (Verify reports it) to somewhere the
// database's owner cannot write, and compare.
package audit

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/attestd/attestd/store"
)

// Problem is the first inconsistency Verify found.
type Problem struct {
	Seq    uint64 // the first bad sequence number
	Reason string
}

func (p *Problem) Error() string { return fmt.Sprintf("audit entry %d: %s", p.Seq, p.Reason) }

// Report is the outcome of Verify on an intact log.
type Report struct {
	Entries  uint64
	HeadSeq  uint64
	HeadHash string
}

// Verify walks the whole log. It returns a *Problem naming the first bad
// entry, or the report of an intact log.
func Verify(ctx context.Context, db *store.DB) (*Report, error) {
	headSeq, headHash, err := db.AuditHead(ctx)
	if err != nil {
		return nil, err
	}
	var (
		want = uint64(1)
		prev = store.ZeroHash
		bad  *Problem
	)
	errStop := errors.New("stop")
	err = db.AuditEntries(ctx, 0, func(e store.AuditEntry, raw []byte) error {
		fail := func(format string, args ...any) error {
			bad = &Problem{Seq: want, Reason: fmt.Sprintf(format, args...)}
			return errStop
		}
		var stored store.AuditEntry
		if err := json.Unmarshal(raw, &stored); err != nil {
			return fail("stored bytes are not an entry: %v", err)
		}
		if e.Seq != want {
			return fail("holds entry %d: entries deleted, inserted or reordered", e.Seq)
		}
		h, err := store.HashEntry(stored)
		if err != nil {
			return fail("cannot hash: %v", err)
		}
		if h != stored.Hash {
			return fail("content does not match its hash (entry modified)")
		}
		if stored.Prev != prev {
			return fail("does not chain to entry %d (entry inserted, replaced or reordered)", want-1)
		}
		prev = stored.Hash
		want++
		return nil
	})
	if bad != nil {
		return nil, bad
	}
	if err != nil {
		return nil, err
	}
	last := want - 1
	if last != headSeq || prev != headHash {
		return nil, &Problem{Seq: min(last, headSeq) + 1, Reason: fmt.Sprintf("the log ends at %d (%s…) but the recorded head is %d (%s…): entries removed or appended outside the store",
			last, prev[:12], headSeq, headHash[:12])}
	}
	return &Report{Entries: last, HeadSeq: headSeq, HeadHash: headHash}, nil
}

// Filter selects entries for Export. Zero fields match everything.
type Filter struct {
	Since, Until time.Time // [Since, Until)
	Repo         string    // host/repo, exact
	Digest       string    // sha256:…
	Actions      []string  // exact, or a prefix ending in "." (e.g. "event.")
}

func (f Filter) match(e store.AuditEntry) bool {
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !e.Time.Before(f.Until) {
		return false
	}
	if f.Repo != "" && e.Repo != f.Repo {
		return false
	}
	if f.Digest != "" && e.Digest != f.Digest {
		return false
	}
	if len(f.Actions) > 0 && !slices.ContainsFunc(f.Actions, func(a string) bool {
		return a == e.Action || strings.HasSuffix(a, ".") && strings.HasPrefix(e.Action, a)
	}) {
		return false
	}
	return true
}

// Formats Export writes.
const (
	FormatJSONL = "jsonl"
	FormatCSV   = "csv"
)

// Export streams the matching entries to w in format, in sequence order,
// holding one entry in memory at a time. It returns how many it wrote.
func Export(ctx context.Context, db *store.DB, w io.Writer, f Filter, format string) (int, error) {
	var write func(e store.AuditEntry, raw []byte) error
	var flush func() error
	switch format {
	case FormatJSONL:
		write = func(_ store.AuditEntry, raw []byte) error {
			if _, err := w.Write(raw); err != nil {
				return err
			}
			_, err := w.Write([]byte{'\n'})
			return err
		}
		flush = func() error { return nil }
	case FormatCSV:
		cw := csv.NewWriter(w)
		if err := cw.Write([]string{"seq", "time", "actor", "action", "subject", "repo", "digest", "details", "prev", "hash"}); err != nil {
			return 0, err
		}
		write = func(e store.AuditEntry, _ []byte) error {
			details, _ := json.Marshal(e.Details)
			if e.Details == nil {
				details = nil
			}
			return cw.Write([]string{fmt.Sprint(e.Seq), e.Time.UTC().Format(time.RFC3339Nano), cell(e.Actor), cell(e.Action),
				cell(e.Subject), cell(e.Repo), cell(e.Digest), cell(string(details)), e.Prev, e.Hash})
		}
		flush = func() error { cw.Flush(); return cw.Error() }
	default:
		return 0, fmt.Errorf("audit export: format %q: use jsonl or csv", format)
	}
	n := 0
	err := db.AuditEntries(ctx, 0, func(e store.AuditEntry, raw []byte) error {
		if !f.match(e) {
			return nil
		}
		n++
		return write(e, raw)
	})
	if err != nil {
		return n, err
	}
	return n, flush()
}

// cell defuses spreadsheet formula injection (OWASP CSV injection): a cell
// that starts with = + - @ or a tab/CR is prefixed with a quote.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
