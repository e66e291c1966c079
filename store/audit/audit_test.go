package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/attestd/attestd/store"
)

// populate writes a realistic log: intake of n images, each moved through
// a stage and a state, one requeue.
func populate(t testing.TB, path string, n int) {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for i := range n {
		ref := fmt.Sprintf("registry.local/app/n%d@sha256:%064x", i, i+1)
		if _, err := db.Intake(ctx, []store.IntakeItem{{Ref: ref, Tag: "registry.local/app/n" + fmt.Sprint(i) + ":v1", Source: "webhook:dist", Priority: store.PriorityEvent, EventKey: "ev" + fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Transition(ctx, ref, store.StateDiscovered, store.StateAnalysed, func(r *store.Record) error {
			r.Stages = map[string]store.StageResult{"analyse": {Status: store.StagePassed}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

func entries(t *testing.T, db *store.DB) []store.AuditEntry {
	var out []store.AuditEntry
	db.AuditEntries(context.Background(), 0, func(e store.AuditEntry, _ []byte) error { out = append(out, e); return nil })
	return out
}

func TestVerifyIntactAndActions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	populate(t, path, 3)
	db, err := store.Open(path, store.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rep, err := Verify(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entries != 9 { // per image: event.accepted, stage, state
		t.Errorf("%d entries, want 9", rep.Entries)
	}
	var actions []string
	for _, e := range entries(t, db)[:3] {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, " "); got != "event.accepted stage state" {
		t.Errorf("first image's actions %q", got)
	}
	e := entries(t, db)[2]
	if e.Details["from"] != "discovered" || e.Details["to"] != "analysed" || e.Actor != "pipeline" || e.Digest == "" {
		t.Errorf("state entry %+v", e)
	}
}

// tamper edits the closed database file directly, as an attacker with
// write access to it would.
func tamper(t *testing.T, path string, fn func(b *bolt.Bucket)) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(func(tx *bolt.Tx) error { fn(tx.Bucket([]byte("audit"))); return nil }); err != nil {
		t.Fatal(err)
	}
}

func key(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func TestVerifyNamesFirstBadEntry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(b *bolt.Bucket)
		seq    uint64
		reason string
	}{
		{"modified", func(b *bolt.Bucket) {
			v := bytes.Replace(b.Get(key(5)), []byte(`"analyse"`), []byte(`"sign"`), 1)
			b.Put(key(5), v)
		}, 5, "modified"},
		{"garbage", func(b *bolt.Bucket) { b.Put(key(4), []byte("{not json")) }, 4, "not an entry"},
		{"deleted", func(b *bolt.Bucket) { b.Delete(key(4)) }, 4, "deleted"},
		{"reordered", func(b *bolt.Bucket) {
			a, c := bytes.Clone(b.Get(key(4))), bytes.Clone(b.Get(key(5)))
			b.Put(key(4), c)
			b.Put(key(5), a)
		}, 4, "reordered"},
		{"inserted", func(b *bolt.Bucket) {
			// shift 4… up by one and put a copy of 3 (self-consistent) at 4
			last, _ := b.Cursor().Last()
			for n := binary.BigEndian.Uint64(last); n >= 4; n-- {
				b.Put(key(n+1), bytes.Clone(b.Get(key(n))))
			}
			b.Put(key(4), bytes.Clone(b.Get(key(3))))
		}, 4, ""},
		{"truncated", func(b *bolt.Bucket) { b.Delete(key(9)) }, 9, "recorded head"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a.db")
			populate(t, path, 3)
			tamper(t, path, tc.edit)
			db, err := store.Open(path, store.ReadOnly())
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			_, err = Verify(context.Background(), db)
			var p *Problem
			if !errors.As(err, &p) {
				t.Fatalf("Verify = %v, want a Problem", err)
			}
			if p.Seq != tc.seq || !strings.Contains(p.Error(), tc.reason) {
				t.Errorf("Problem %q (seq %d), want seq %d mentioning %q", p, p.Seq, tc.seq, tc.reason)
			}
		})
	}
}

func TestExport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	populate(t, path, 3)
	db, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	// A value crafted to run as a formula in a spreadsheet.
	if err := db.Audit(ctx, store.AuditEntry{Actor: "=HYPERLINK(\"http://evil\")", Action: "override", Repo: "registry.local/app/n1",
		Details: map[string]string{"reason": "+1"}}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	n, err := Export(ctx, db, &buf, Filter{Repo: "registry.local/app/n1"}, FormatJSONL)
	if err != nil || n != 4 {
		t.Fatalf("jsonl export: %d entries, %v", n, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e store.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Repo != "registry.local/app/n1" {
			t.Errorf("line %q: %v", line, err)
		}
	}
	buf.Reset()
	if n, err := Export(ctx, db, &buf, Filter{Actions: []string{"event."}}, FormatCSV); err != nil || n != 3 {
		t.Fatalf("csv export of event.*: %d, %v", n, err)
	}
	buf.Reset()
	Export(ctx, db, &buf, Filter{Actions: []string{"override"}}, FormatCSV)
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil || len(rows) != 2 {
		t.Fatalf("csv rows %v, %v", rows, err)
	}
	if actor := rows[1][2]; !strings.HasPrefix(actor, "'=") {
		t.Errorf("formula not defused: %q", actor)
	}
	if _, err := Export(ctx, db, &buf, Filter{}, "xml"); err == nil {
		t.Error("unknown format accepted")
	}
	if rep, err := Verify(ctx, db); err != nil || rep.Entries != 10 {
		t.Errorf("after Audit: %+v, %v", rep, err)
	}
}

// BenchmarkExport1M measures streaming export of 1,000,000 entries: the
// heap stays flat (one entry at a time) whatever the log's length.
func BenchmarkExport1M(b *testing.B) {
	path := filepath.Join(b.TempDir(), "a.db")
	db, err := store.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	const n = 1_000_000
	for i := 0; i < n; i += 10_000 {
		if err := db.AuditBulk(ctx, 10_000, func(j int) store.AuditEntry {
			return store.AuditEntry{Actor: "bench", Action: "stage", Repo: "r/app", Digest: fmt.Sprintf("sha256:%064x", i+j), Details: map[string]string{"stage": "analyse", "status": "passed"}}
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		cnt, err := Export(ctx, db, io_discard{}, Filter{}, FormatCSV)
		runtime.ReadMemStats(&ms1)
		if err != nil || cnt != n {
			b.Fatal(cnt, err)
		}
		b.ReportMetric(float64(ms1.HeapInuse)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/n, "alloc-B/entry")
	}
	b.StopTimer()
	db.Close()
}

type io_discard struct{}

func (io_discard) Write(p []byte) (int, error) { return len(p), nil }
