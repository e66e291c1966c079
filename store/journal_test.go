package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/semaphore"
)

func journalItem(n int, event string) IntakeItem {
	return IntakeItem{Ref: ref(n), Source: "webhook:test", EventKey: event, Tag: "registry.local/app/n" + string(rune('0'+n%10)) + ":v1"}
}

// reopen opens the database at path with opts (replaying its journal) and
// closes it again.
func reopen(t *testing.T, path string, opts ...Option) {
	t.Helper()
	db, err := Open(path, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// counts reopens the database (no journal) and returns pending jobs and
// audit entries.
func counts(t *testing.T, path string) (jobs int, audit uint64) {
	t.Helper()
	db, err := Open(path, ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seq, _, _ := db.AuditHead(context.Background())
	return st.Jobs[JobPending], seq
}

func TestJournalAcknowledgesThenApplies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path, WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	applied := make(chan struct{}, 16)
	db.OnIntakeApplied(func() { applied <- struct{}{} })
	ctx := context.Background()
	res, err := db.Intake(ctx, []IntakeItem{journalItem(1, "e1"), journalItem(2, "e2")})
	if err != nil || res[0].Duplicate || res[1].Duplicate {
		t.Fatalf("first: %+v %v", res, err)
	}
	// A redelivery and a known image: duplicates, whether or not the first
	// call has reached bbolt yet.
	res, err = db.Intake(ctx, []IntakeItem{journalItem(1, "e1"), journalItem(2, "e3")})
	if err != nil || !res[0].Duplicate || !res[1].Duplicate {
		t.Fatalf("redelivery: %+v %v", res, err)
	}
	select {
	case <-applied:
	case <-time.After(10 * time.Second):
		t.Fatal("never applied")
	}
	for db.JournalStats().Pending > 0 {
		time.Sleep(time.Millisecond)
	}
	rec, err := db.Image(ctx, ref(1))
	if err != nil || rec.State != StateDiscovered {
		t.Fatalf("applied record: %+v %v", rec, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// e1, e2 and e3 audited (the redelivered e1 is not), two jobs.
	if jobs, audit := counts(t, path); jobs != 2 || audit != 3 {
		t.Fatalf("jobs %d audit %d, want 2 and 3", jobs, audit)
	}
}

// writeJournal writes a journal file of generation gen holding recs, then
// tail (a torn record, or nothing).
func writeJournal(t *testing.T, path string, gen uint64, tail []byte, recs ...*journalRecord) {
	t.Helper()
	b := append(append([]byte(nil), journalMagic...), binary.BigEndian.AppendUint64(nil, gen)...)
	for _, r := range recs {
		f, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, f...)
	}
	if err := os.WriteFile(path+".journal", append(b, tail...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestJournalReplay: records acknowledged but not applied when attestd died
// are applied at the next open, exactly once; a torn tail (never
// acknowledged) is cut off.
func TestJournalReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	reopen(t, path)
	now := time.Date(2026, 11, 24, 5, 0, 0, 0, time.UTC)
	torn, _ := encodeRecord(&journalRecord{Time: now, Items: []IntakeItem{journalItem(9, "e9")}})
	writeJournal(t, path, 1, torn[:len(torn)-3],
		&journalRecord{Time: now, Items: []IntakeItem{journalItem(1, "e1"), journalItem(2, "e2")}},
		&journalRecord{Time: now, Items: []IntakeItem{journalItem(3, "e3")}})
	// A plain read-write open (a CLI command) replays too; the second open
	// must apply nothing again.
	for _, opts := range [][]Option{nil, {WithIntakeJournal()}} {
		reopen(t, path, opts...)
		if jobs, audit := counts(t, path); jobs != 3 || audit != 3 {
			t.Fatalf("jobs %d audit %d, want 3 and 3", jobs, audit)
		}
	}
	if _, err := os.Stat(path + ".journal"); err != nil {
		t.Fatal(err)
	}
	rdb, _ := Open(path, ReadOnly())
	if _, err := rdb.Image(context.Background(), ref(9)); err == nil {
		t.Error("the torn (never acknowledged) record was applied")
	}
	rdb.Close()
	// New intake after the cut goes on from there and survives a reopen.
	db, err := Open(path, WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Intake(context.Background(), []IntakeItem{journalItem(4, "e4")}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	reopen(t, path, WithIntakeJournal())
	if jobs, audit := counts(t, path); jobs != 4 || audit != 4 {
		t.Fatalf("after more intake: jobs %d audit %d, want 4 and 4", jobs, audit)
	}
}

// TestJournalRotation: a fully applied journal is emptied under a new
// generation; a crash after the database recorded the new generation but
// before the file was rewritten re-applies nothing.
func TestJournalRotation(t *testing.T) {
	old := journalRotateSize
	journalRotateSize = 1
	t.Cleanup(func() { journalRotateSize = old })
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path, WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := db.Intake(context.Background(), []IntakeItem{journalItem(i+1, "e"+string(rune('a'+i)))}); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	if st, _ := os.Stat(path + ".journal"); st.Size() != journalHeader {
		t.Errorf("journal not emptied: %d bytes", st.Size())
	}
	// The crash window: the database says generation g+1, the file still
	// holds generation g's (applied) records.
	now := time.Now().UTC()
	var gen uint64
	b, _ := bolt.Open(path, 0o600, nil)
	b.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyJournal)
		gen = binary.BigEndian.Uint64(v)
		return tx.Bucket(bucketMeta).Put(keyJournal, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, gen+1), journalHeader))
	})
	b.Close()
	writeJournal(t, path, gen, nil, &journalRecord{Time: now, Items: []IntakeItem{journalItem(1, "ea")}})
	reopen(t, path, WithIntakeJournal())
	if jobs, audit := counts(t, path); jobs != 5 || audit != 5 {
		t.Fatalf("jobs %d audit %d, want 5 and 5", jobs, audit)
	}
	// A journal newer than the database (an old backup restored) is refused.
	writeJournal(t, path, gen+5, nil)
	if _, err := Open(path, WithIntakeJournal()); err == nil {
		t.Fatal("opened a journal newer than the database")
	}
}

// TestJournalWriteFailureFailsClosed: once a journal write fails, nothing is
// acknowledged any more.
func TestJournalWriteFailureFailsClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path, WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.JournalStats().Err; err != nil {
		t.Fatalf("healthy journal reports %v", err)
	}
	db.jrnl.f.Close() // the next write fails
	for i := range 2 {
		if _, err := db.Intake(context.Background(), []IntakeItem{journalItem(i+1, "x")}); err == nil {
			t.Fatalf("intake %d acknowledged after a failed journal write", i)
		}
	}
	if err := db.JournalStats().Err; err == nil || !strings.Contains(err.Error(), "restart attestd") {
		t.Fatalf("JournalStats().Err = %v, want the failed write and what to do", err)
	}
}

// TestJournalCorruptionFailsOpen: a bad record followed by intact ones is
// damage to acknowledged events, not a torn tail: Open refuses (and says
// what to do) instead of cutting them off. Zeros after a torn record (a
// file extended by the filesystem, never written) are a torn tail.
func TestJournalCorruptionFailsOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	reopen(t, path)
	now := time.Date(2026, 11, 24, 5, 0, 0, 0, time.UTC)
	bad, _ := encodeRecord(&journalRecord{Time: now, Items: []IntakeItem{journalItem(1, "e1")}})
	bad[len(bad)-2] ^= 0xff
	good := &journalRecord{Time: now, Items: []IntakeItem{journalItem(2, "e2")}}
	goodFrame, _ := encodeRecord(good)
	writeJournal(t, path, 1, append(append([]byte(nil), bad...), goodFrame...))
	if _, err := Open(path, WithIntakeJournal()); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "move the journal away") {
		t.Fatalf("open = %v, want ErrCorrupt with what to do", err)
	}
	writeJournal(t, path, 1, append(bad, make([]byte, 4096)...), good)
	reopen(t, path, WithIntakeJournal())
	if jobs, audit := counts(t, path); jobs != 1 || audit != 1 {
		t.Fatalf("jobs %d audit %d, want 1 and 1", jobs, audit)
	}
	// A torn write whose header never reached the disk but part of whose
	// payload did (filesystems that expose unwritten blocks as zeros):
	// nothing valid follows, so it is a torn tail too.
	writeJournal(t, path, 1, append(make([]byte, 8), goodFrame[8:40]...), good)
	reopen(t, path, WithIntakeJournal())
}

// TestJournalBacklogBoundsAcknowledging: with the backlog full, intake
// waits for the materializer instead of holding more in memory — and the
// materializer, seeing intake wait, applies at once rather than waiting for
// intake to go quiet (it never would: the calls wait for it). Close still
// applies everything acknowledged.
func TestJournalBacklogBoundsAcknowledging(t *testing.T) {
	oldBacklog, oldWait, oldLag := journalBacklog, journalBacklogWait, journalMaxLag
	// A stall shows as failed intake (no room for a minute), not as a slow
	// test: the materializer's own deadline is out of reach.
	journalBacklog, journalBacklogWait, journalMaxLag = 4, time.Minute, time.Hour
	t.Cleanup(func() { journalBacklog, journalBacklogWait, journalMaxLag = oldBacklog, oldWait, oldLag })
	path := filepath.Join(t.TempDir(), "a.db")
	db, err := Open(path, WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := db.Intake(context.Background(), []IntakeItem{journalItem(i+1, fmt.Sprintf("b%d", i))}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if jobs, audit := counts(t, path); jobs != 40 || audit != 40 {
		t.Fatalf("jobs %d audit %d, want 40 and 40", jobs, audit)
	}
}

// TestGroupRecordIsARecord: the record the writer assembles from the items
// each call encoded is byte for byte what replay decodes.
func TestGroupRecordIsARecord(t *testing.T) {
	now := time.Date(2026, 11, 24, 5, 0, 0, 123, time.UTC)
	calls := [][]IntakeItem{{journalItem(1, "e1"), journalItem(2, "e2")}, nil, {{Ref: ref(3), Deleted: true, Children: []string{"sha256:" + strings.Repeat("a", 64)}, NotBefore: now}}}
	var group []*intakeReq
	for _, items := range calls {
		r := &intakeReq{items: items}
		for i, it := range items {
			b, _ := json.Marshal(it)
			if i > 0 {
				r.enc = append(r.enc, ',')
			}
			r.enc = append(r.enc, b...)
		}
		group = append(group, r)
	}
	rec, frame, err := groupRecord(now, group)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := encodeRecord(rec)
	if !bytes.Equal(frame, want) {
		t.Fatalf("group record\n%s\nwant\n%s", frame[8:], want[8:])
	}
}

// TestJournalFullBacklogFailsWhenBboltIsStuck: when bbolt stops applying,
// acknowledging stops too once the backlog is full — with an error the
// sender sees (and retries on), not a request that hangs.
func TestJournalFullBacklogFailsWhenBboltIsStuck(t *testing.T) {
	oldBacklog, oldWait := journalBacklog, journalBacklogWait
	journalBacklog, journalBacklogWait = 2, 100*time.Millisecond
	t.Cleanup(func() { journalBacklog, journalBacklogWait = oldBacklog, oldWait })
	db, err := Open(filepath.Join(t.TempDir(), "a.db"), WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.bolt.Close() // every apply fails from now on
	ctx := context.Background()
	for i := range 2 {
		if _, err := db.Intake(ctx, []IntakeItem{journalItem(i+1, fmt.Sprintf("s%d", i))}); err != nil {
			t.Fatalf("intake %d (room in the backlog): %v", i, err)
		}
	}
	if _, err := db.Intake(ctx, []IntakeItem{journalItem(3, "s2")}); err == nil || !strings.Contains(err.Error(), "backlog (2 events) is full") {
		t.Fatalf("intake into a full backlog = %v, want the error that says so", err)
	}
	if err := db.JournalStats().Err; err == nil || !strings.Contains(err.Error(), "applying to the database fails") {
		t.Fatalf("JournalStats().Err = %v, want the failing application", err)
	}
}

// TestJournalHandsRecordsOverInOrderAtClose: once Close has begun and the
// writer could not hand a record to the materializer (it is replayed at the
// next open), no later record may be handed over: applying it would record
// an offset past the skipped one, which would then never be applied.
func TestJournalHandsRecordsOverInOrderAtClose(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop, cancel := context.WithCancel(context.Background())
	cancel() // Close has begun
	j := &journal{f: f, end: journalHeader, stop: stop, apply: make(chan *journalRecord, 1), room: semaphore.NewWeighted(journalBacklog),
		pendEvents: map[string]int{}, pendRefs: map[string]int{}, pendBaseKey: map[string]int{}}
	db := &DB{now: time.Now, jrnl: j}
	group := func(n int) []*intakeReq {
		it := journalItem(n, fmt.Sprintf("o%d", n))
		enc, _ := json.Marshal(it)
		return []*intakeReq{{items: []IntakeItem{it}, enc: enc, done: make(chan struct{})}}
	}
	j.apply <- &journalRecord{} // the materializer is behind: no room
	db.journalGroup(group(1))   // cannot be handed over: left for replay
	<-j.apply                   // room again
	for n := 2; n < 40; n++ {
		db.journalGroup(group(n))
		select {
		case r := <-j.apply:
			t.Fatalf("record of %s handed over after an earlier one was left for replay", r.Items[0].Ref)
		default:
		}
	}
}

// TestJournalWriterWaitingForRoomIsPressure: a call that does not fit in
// what is left of the backlog makes the materializer apply at once, though
// intake is busy (the call itself is in flight) and the backlog is not yet
// three quarters full — else both wait for each other until the call fails.
func TestJournalWriterWaitingForRoomIsPressure(t *testing.T) {
	oldBacklog, oldWait, oldLag := journalBacklog, journalBacklogWait, journalMaxLag
	journalBacklog, journalBacklogWait, journalMaxLag = 8, 3*time.Second, time.Hour
	t.Cleanup(func() { journalBacklog, journalBacklogWait, journalMaxLag = oldBacklog, oldWait, oldLag })
	db, err := Open(filepath.Join(t.TempDir(), "a.db"), WithIntakeJournal())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	items := func(from, n int) []IntakeItem {
		var out []IntakeItem
		for i := from; i < from+n; i++ {
			out = append(out, journalItem(i, fmt.Sprintf("w%d", i)))
		}
		return out
	}
	ctx := context.Background()
	if _, err := db.Intake(ctx, items(1, 5)); err != nil { // 5 of 8: below ¾
		t.Fatal(err)
	}
	if _, err := db.Intake(ctx, items(6, 4)); err != nil { // does not fit until the first is applied
		t.Fatalf("a call waiting for room: %v", err)
	}
}
