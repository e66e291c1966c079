package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/semaphore"
)

// The intake journal (WithIntakeJournal) makes accepted events durable with
// one sequential append and one fsync per group of waiting Intake calls —
// instead of a bbolt commit, whose scattered page writes, two fsyncs and
// ~30 µs of single-threaded work per event bound how fast webhooks can be
// acknowledged — and acknowledges them then. A materializer applies journal
// records to bbolt in order, each transaction recording how far the journal
// has been applied; every read-write Open replays what was acknowledged but
// not applied before a crash, so every acknowledged event reaches bbolt
// exactly once. The materializer yields to the writer: during a burst it
// waits (up to journalMaxLag, or until most of the backlog is used), and it
// applies in transactions of at most journalApplyItems events.
//
// File: a 16-byte header (magic, generation) and records framed as
// [u32 length][u32 CRC-32C][JSON journalRecord]. A torn tail (the last
// write, whose fsync never returned, so never acknowledged) ends the replay
// and is cut off; a bad record with intact data after it is corruption and
// fails Open. Once everything is applied and the file is larger than
// journalRotateSize it is emptied under a new generation; the generation is
// recorded in bbolt first, so a crash in between cannot re-apply records.

var (
	journalMagic = []byte("ATDJRNL1")
	keyJournal   = []byte("journal") // meta: u64 generation, u64 applied offset
	crcTable     = crc32.MakeTable(crc32.Castagnoli)
)

const journalHeader = 16

// journalRotateSize is how large the journal may grow before it is emptied
// (when fully applied). A variable for tests.
var journalRotateSize int64 = 64 << 20

// The materializer applies when no Intake call has been in flight for
// journalIdle, when the oldest waiting record has waited journalMaxLag,
// when three quarters of journalBacklog are used, or when the writer waits
// for room; at most
// journalApplyItems events per transaction (~8 ms of work), so the writer
// is never starved for long. Shutting down, it applies in larger ones.
const (
	journalIdle       = 2 * time.Millisecond
	journalApplyItems = 256
)

// journalMaxLag: see above. A variable for tests.
var journalMaxLag = 5 * time.Second

// journalBacklog bounds the events acknowledged but not yet applied (held in
// memory too, ~0.5 KiB each): beyond it, acknowledging waits for the
// materializer, and intake slows to bbolt's pace. A variable for tests.
var journalBacklog int64 = 1 << 17

// journalBacklogWait is how long acknowledging waits for room in a full
// backlog before it fails. A variable for tests.
var journalBacklogWait = 30 * time.Second

// journalRecord is one group of Intake calls, in call order.
type journalRecord struct {
	Time  time.Time    `json:"t"`
	Items []IntakeItem `json:"items"`
	end   int64        // file offset after the record
	acked time.Time    // when it was appended
}

type journal struct {
	f *os.File

	// fileMu serialises appends and rotation; gen and end change under it.
	fileMu sync.Mutex
	gen    uint64
	end    int64
	broken error // a failed write or sync: intake fails until a restart replays
	// abandoned: Close began and a record was left for replay instead of
	// the materializer (the writer goroutine's own).
	abandoned bool

	// pending: event keys and refs acknowledged but not yet applied, so
	// that advisory duplicate counts see them (checked before bbolt).
	pendMu      sync.Mutex
	pendEvents  map[string]int
	pendRefs    map[string]int
	pendBaseKey map[string]int

	room      *semaphore.Weighted // journalBacklog events
	stop      context.Context     // done once Close began
	apply     chan *journalRecord
	applied   atomic.Int64 // offset applied to bbolt
	pending   atomic.Int64 // events acknowledged, not yet applied
	syncs     syncHistogram
	calls     atomic.Int64          // Intake calls made
	inflight  atomic.Int64          // Intake calls not yet answered
	starved   atomic.Bool           // the writer waits for room in the backlog
	applyErr  atomic.Pointer[error] // the materializer's last failure while it retries
	onApplied atomic.Pointer[func()]
	done      chan struct{}
}

// WithIntakeJournal makes Intake acknowledge after a journal append instead
// of a bbolt commit (see journal.go): results are then advisory (JobID 0;
// Duplicate and RecordedOnly as far as known at that moment) and bbolt
// follows within milliseconds, or after a burst. Read-write opens only.
func WithIntakeJournal() Option {
	return func(o *options) error { o.journal = true; return nil }
}

// OnIntakeApplied sets fn to be called after journaled events were applied
// to bbolt (new jobs may be queued). Without a journal it is never called:
// Intake returns after the commit.
func (db *DB) OnIntakeApplied(fn func()) {
	if db.jrnl != nil {
		db.jrnl.onApplied.Store(&fn)
	}
}

// JournalStats is what the intake journal has done since Open.
type JournalStats struct {
	Enabled bool
	// Pending counts events acknowledged and not yet applied to bbolt.
	Pending int64
	// SyncBuckets counts appends (write + fsync) by duration, cumulative
	// as in Prometheus: the i-th those ≤ SyncBounds[i], the last all.
	// SyncSeconds is their total time.
	SyncBuckets []uint64
	SyncSeconds float64
	// Err says why the journal cannot do its work right now: a failed
	// append (nothing is acknowledged until a restart replays the journal)
	// or a failing application to the database (retried; acknowledging
	// stops once the backlog is full). Nil when healthy.
	Err error
}

// SyncBounds are the JournalStats.SyncBuckets bounds.
var SyncBounds = []time.Duration{500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond}

// syncHistogram counts append durations into SyncBounds (+Inf last).
type syncHistogram struct {
	counts [9]atomic.Uint64
	nanos  atomic.Int64
}

func (h *syncHistogram) observe(d time.Duration) {
	i := len(SyncBounds)
	for k, b := range SyncBounds {
		if d <= b {
			i = k
			break
		}
	}
	h.counts[i].Add(1)
	h.nanos.Add(int64(d))
}

// JournalStats reports the journal's backlog and append latencies.
func (db *DB) JournalStats() JournalStats {
	j := db.jrnl
	if j == nil {
		return JournalStats{}
	}
	st := JournalStats{Enabled: true, Pending: j.pending.Load(), SyncSeconds: time.Duration(j.syncs.nanos.Load()).Seconds()}
	j.fileMu.Lock()
	st.Err = j.broken
	j.fileMu.Unlock()
	if e := j.applyErr.Load(); st.Err == nil && e != nil {
		st.Err = fmt.Errorf("intake journal: applying to the database fails (retrying; the events are safe in the journal): %w", *e)
	}
	var cum uint64
	for i := range j.syncs.counts {
		cum += j.syncs.counts[i].Load()
		st.SyncBuckets = append(st.SyncBuckets, cum)
	}
	return st
}

// openJournal replays what a crash left unapplied in the journal next to the
// database, then, when keep (WithIntakeJournal), keeps it open for appends
// and starts the materializer.
func (db *DB) openJournal(keep bool) error {
	path := db.path + ".journal"
	if !keep {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	var gen uint64 = 1
	var off int64 = journalHeader
	if err := db.bolt.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyJournal); len(v) == 16 {
			gen, off = binary.BigEndian.Uint64(v), int64(binary.BigEndian.Uint64(v[8:]))
		}
		return nil
	}); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("intake journal: %w", err)
	}
	j := &journal{f: f, gen: gen, apply: make(chan *journalRecord, 1024), done: make(chan struct{}),
		room: semaphore.NewWeighted(journalBacklog), pendEvents: map[string]int{}, pendRefs: map[string]int{}, pendBaseKey: map[string]int{}}
	fail := func(err error) error {
		f.Close()
		return fmt.Errorf("intake journal %s: %w", path, err)
	}
	hdr := make([]byte, journalHeader)
	n, err := f.ReadAt(hdr, 0)
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		// New, or lost: start a generation the database has not applied
		// anything of.
		if _, err := db.rotate(j, gen+1); err != nil {
			return fail(err)
		}
		off = journalHeader
	case n < journalHeader || !bytes.Equal(hdr[:8], journalMagic):
		return fail(fmt.Errorf("%w: not an attestd intake journal; move it away only after checking it holds no unapplied events", ErrCorrupt))
	default:
		fileGen := binary.BigEndian.Uint64(hdr[8:])
		switch {
		case fileGen < gen: // emptied after everything was applied, then crashed before rewriting
			if err := j.reset(gen); err != nil {
				return fail(err)
			}
			off = journalHeader
		case fileGen > gen:
			return fail(fmt.Errorf("%w: journal generation %d is newer than the database's %d (database restored from an older backup? move the journal away to start without it)", ErrCorrupt, fileGen, gen))
		}
	}
	// Replay: records from the applied offset to the end or a torn tail.
	recs, end, err := readJournal(f, off)
	if err != nil {
		return fail(err)
	}
	for len(recs) > 0 {
		n := 0
		for items := 0; n < len(recs) && items < 16*journalApplyItems; n++ {
			items += len(recs[n].Items)
		}
		if err := db.applyJournal(j, recs[:n]); err != nil {
			return fail(fmt.Errorf("replaying %d records: %w", len(recs), err))
		}
		db.logger.Info("intake journal: replayed events acknowledged before a crash", "records", n)
		recs = recs[n:]
	}
	if st, err := f.Stat(); err != nil {
		return fail(err)
	} else if st.Size() > end {
		db.logger.Warn("intake journal: cutting off a torn tail (its write never completed, so it was never acknowledged)", "bytes", st.Size()-end)
		if err := f.Truncate(end); err != nil {
			return fail(err)
		}
		if err := f.Sync(); err != nil {
			return fail(err)
		}
	}
	j.end = end
	j.applied.Store(end)
	if !keep {
		return f.Close()
	}
	stop, cancel := context.WithCancel(context.Background())
	go func() { <-db.closing; cancel() }()
	j.stop = stop
	db.jrnl = j
	go db.materialize(j)
	return nil
}

// reset empties the file and writes the header of generation gen.
func (j *journal) reset(gen uint64) error {
	if err := j.f.Truncate(0); err != nil {
		return err
	}
	hdr := append(append([]byte(nil), journalMagic...), binary.BigEndian.AppendUint64(nil, gen)...)
	if _, err := j.f.WriteAt(hdr, 0); err != nil {
		return err
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	j.gen, j.end = gen, journalHeader
	return nil
}

// rotate starts generation next: recorded in bbolt (nothing of it applied)
// before the file is emptied. recorded says whether bbolt has it: after
// that, a crash leaves a file of generation next-1 (fully applied) or an
// empty one, and Open handles both.
func (db *DB) rotate(j *journal, next uint64) (recorded bool, err error) {
	if err := db.bolt.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyJournal, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, next), journalHeader))
	}); err != nil {
		return false, err
	}
	if err := j.reset(next); err != nil {
		return true, err
	}
	j.applied.Store(journalHeader)
	return true, nil
}

// readJournal decodes records from off to the end; end is the offset after
// the last good one. A bad record is a torn tail (cut off by the caller)
// when no good record follows it: the last write, never acknowledged.
// Otherwise it is damage to acknowledged events.
func readJournal(f *os.File, off int64) ([]*journalRecord, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if off > st.Size() {
		return nil, 0, fmt.Errorf("%w: the database has applied the journal up to byte %d, but it holds only %d bytes", ErrCorrupt, off, st.Size())
	}
	data := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	var recs []*journalRecord
	end := off
	for len(data) > 0 {
		var r *journalRecord
		n := -1
		if len(data) >= 8 {
			n = int(binary.BigEndian.Uint32(data))
		}
		if n >= 0 && n <= len(data)-8 && crc32.Checksum(data[8:8+n], crcTable) == binary.BigEndian.Uint32(data[4:]) {
			r = &journalRecord{}
			if json.Unmarshal(data[8:8+n], r) != nil {
				r = nil
			}
		}
		if r == nil {
			if validFrameAfter(data) {
				return nil, 0, fmt.Errorf("%w: record at byte %d fails its checksum and acknowledged events follow it; restore the database and journal from a backup, or move the journal away (its unapplied events are lost; the poller re-finds images still in the registry)", ErrCorrupt, end)
			}
			break
		}
		end += int64(8 + n)
		r.end = end
		recs = append(recs, r)
		data = data[8+n:]
	}
	return recs, end, nil
}

// validFrameAfter reports whether a record follows the bad frame at the
// start of data, at any offset: then the bad one was written (and fsync'd,
// and acknowledged) before it, and is damage, not a torn tail.
func validFrameAfter(data []byte) bool {
	for q := 1; q+8 <= len(data); q++ {
		n := int(binary.BigEndian.Uint32(data[q:]))
		if n == 0 || n > len(data)-q-8 || crc32.Checksum(data[q+8:q+8+n], crcTable) != binary.BigEndian.Uint32(data[q+4:]) {
			continue
		}
		if json.Unmarshal(data[q+8:q+8+n], &journalRecord{}) == nil {
			return true
		}
	}
	return false
}

// encodeRecord frames rec for the journal.
func encodeRecord(rec *journalRecord) ([]byte, error) {
	payload, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return frame(payload), nil
}

// frame prefixes payload with its length and checksum.
func frame(payload []byte) []byte {
	f := binary.BigEndian.AppendUint32(make([]byte, 0, 8+len(payload)), uint32(len(payload)))
	f = binary.BigEndian.AppendUint32(f, crc32.Checksum(payload, crcTable))
	return append(f, payload...)
}

// groupRecord is the journal record of a group and its frame: the JSON of
// a journalRecord, assembled from the items each call encoded already.
func groupRecord(now time.Time, group []*intakeReq) (*journalRecord, []byte, error) {
	rec := &journalRecord{Time: now}
	t, err := now.MarshalJSON()
	if err != nil {
		return nil, nil, err
	}
	payload := append(append([]byte(`{"t":`), t...), `,"items":[`...)
	first := true
	for _, r := range group {
		rec.Items = append(rec.Items, r.items...)
		if len(r.items) == 0 {
			continue
		}
		if !first {
			payload = append(payload, ',')
		}
		payload, first = append(payload, r.enc...), false
	}
	return rec, frame(append(payload, "]}"...)), nil
}

// journalGroup acknowledges a group of Intake calls through the journal:
// room in the backlog, one append, one fsync, then the record goes to the
// materializer. Nothing is acknowledged unless the fsync succeeded.
func (db *DB) journalGroup(group []*intakeReq) {
	j := db.jrnl
	rec, frame, err := groupRecord(db.now().UTC(), group)
	// Waits while the backlog is full: acknowledging slows to bbolt's pace,
	// and fails (the sender retries) when bbolt does not move at all.
	if err == nil && j.abandoned {
		err = errClosed // see below: nothing may follow a record left for replay
	}
	if err == nil && !j.room.TryAcquire(j.weight(rec)) {
		// The materializer must not wait for intake to go quiet now: intake
		// is waiting for it.
		j.starved.Store(true)
		ctx, cancel := context.WithTimeout(j.stop, journalBacklogWait)
		if j.room.Acquire(ctx, j.weight(rec)) != nil {
			err = errClosed
			if j.stop.Err() == nil {
				err = fmt.Errorf("intake journal: the backlog (%d events) is full and nothing was applied to the database for %s (is the database failing? see the log)", journalBacklog, journalBacklogWait)
			}
		}
		cancel()
		j.starved.Store(false)
	}
	if err != nil {
		for _, r := range group {
			r.err = err
			close(r.done)
		}
		return
	}
	j.fileMu.Lock()
	if err = j.broken; err == nil {
		t0 := time.Now()
		if _, err = j.f.WriteAt(frame, j.end); err == nil {
			err = j.f.Sync()
		}
		j.syncs.observe(time.Since(t0))
		if err != nil {
			// What was written may or may not be on disk: cut it off and
			// stop acknowledging until a restart replays the journal.
			_ = j.f.Truncate(j.end)
			j.broken = fmt.Errorf("intake journal write failed (restart attestd; unacknowledged events are redelivered or found by the poller): %w", err)
			err = j.broken
		} else {
			j.end += int64(len(frame))
			rec.end = j.end
			rec.acked = time.Now()
			j.addPending(rec)
		}
	}
	j.fileMu.Unlock()
	if err == nil {
		select {
		case j.apply <- rec:
		case <-j.stop.Done():
			// Durable: the next open applies it. Nothing after it may be
			// applied before it (its offset would pass this one), so the
			// writer acknowledges nothing more.
			j.abandoned = true
		}
	} else {
		j.room.Release(j.weight(rec))
	}
	for _, r := range group {
		r.err = err
		close(r.done)
	}
}

// weight is what rec takes of the backlog (a record larger than all of it
// takes all of it).
func (j *journal) weight(rec *journalRecord) int64 {
	return min(int64(len(rec.Items)), journalBacklog)
}

// advise computes what intake will do with items, as far as known now:
// duplicates among acknowledged-but-unapplied events and in bbolt. The
// materializer decides for real (the same dedupe, in its transaction).
func (db *DB) advise(j *journal, items []IntakeItem) []IntakeResult {
	out := make([]IntakeResult, len(items))
	j.pendMu.Lock()
	for i, it := range items {
		out[i].Duplicate = it.EventKey != "" && j.pendEvents[it.EventKey] > 0 || j.pendRefs[it.Ref] > 0
	}
	j.pendMu.Unlock()
	_ = db.bolt.View(func(tx *bolt.Tx) error {
		events, images, meta := tx.Bucket(bucketEvents), tx.Bucket(bucketImages), tx.Bucket(bucketMeta)
		for i, it := range items {
			switch {
			case out[i].Duplicate || it.Deleted:
			case it.EventKey != "" && events.Get([]byte(it.EventKey)) != nil, images.Get([]byte(it.Ref)) != nil:
				out[i].Duplicate = true
			case it.BaselineKey != "" && meta.Get([]byte("baseline/"+it.BaselineKey)) == nil:
				j.pendMu.Lock()
				pending := j.pendBaseKey[it.BaselineKey] > 0
				j.pendMu.Unlock()
				out[i].RecordedOnly = !pending
			}
		}
		return nil
	})
	return out
}

func (j *journal) addPending(r *journalRecord) {
	j.pending.Add(int64(len(r.Items)))
	j.pendMu.Lock()
	defer j.pendMu.Unlock()
	for _, it := range r.Items {
		if it.EventKey != "" {
			j.pendEvents[it.EventKey]++
		}
		j.pendRefs[it.Ref]++
		if it.BaselineKey != "" {
			j.pendBaseKey[it.BaselineKey]++
		}
	}
}

func (j *journal) dropPending(recs []*journalRecord) {
	j.pendMu.Lock()
	defer j.pendMu.Unlock()
	dec := func(m map[string]int, k string) {
		if m[k]--; m[k] <= 0 {
			delete(m, k)
		}
	}
	for _, r := range recs {
		j.pending.Add(-int64(len(r.Items)))
		for _, it := range r.Items {
			if it.EventKey != "" {
				dec(j.pendEvents, it.EventKey)
			}
			dec(j.pendRefs, it.Ref)
			if it.BaselineKey != "" {
				dec(j.pendBaseKey, it.BaselineKey)
			}
		}
	}
}

// applyJournal applies records to bbolt in one transaction that also
// records the offset after the last one.
func (db *DB) applyJournal(j *journal, recs []*journalRecord) error {
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		for _, r := range recs {
			if _, err := intakeTx(tx, r.Items, r.Time); err != nil {
				return err
			}
		}
		v := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, j.gen), uint64(recs[len(recs)-1].end))
		return tx.Bucket(bucketMeta).Put(keyJournal, v)
	})
	if err == nil {
		j.applied.Store(recs[len(recs)-1].end)
	}
	return err
}

// materialize applies acknowledged records to bbolt in order, retrying a
// failed transaction (the records stay in the journal either way), until
// Close has stopped the writer and everything is applied. It yields to the
// writer (see journal.go's header).
func (db *DB) materialize(j *journal) {
	defer close(j.done)
	var (
		queue  []*journalRecord
		items  int64
		closed bool
	)
	tick := time.NewTimer(0) // reset before each wait (Go ≥ 1.23 timers: no stale fire)
	defer tick.Stop()
	busy, calls := time.Now(), int64(0) // when an Intake call was last seen coming in or in flight
	take := func(r *journalRecord) { queue, items = append(queue, r), items+int64(len(r.Items)) }
	for {
		if len(queue) == 0 {
			r, ok := <-j.apply
			if !ok {
				return
			}
			take(r)
		}
	drain:
		for !closed {
			select {
			case r, ok := <-j.apply:
				if !ok {
					closed = true
					break drain
				}
				take(r)
			default:
				break drain
			}
		}
		now := time.Now()
		if c := j.calls.Load(); c != calls || j.inflight.Load() > 0 {
			busy, calls = now, c
		}
		// Forced: shutting down, or the backlog is old or large; else only
		// when intake has been quiet (the first arrival after a transaction
		// sends the materializer back to waiting: its work must not make a
		// busy intake look quiet).
		limit := journalApplyItems
		if closed {
			limit = 16 * journalApplyItems
		} else if now.Sub(queue[0].acked) < journalMaxLag && 4*items < 3*journalBacklog && !j.starved.Load() {
			if now.Sub(busy) < journalIdle {
				tick.Reset(journalIdle / 4)
				select { // a burst: let the writer have the disk and the CPU
				case r, ok := <-j.apply:
					if ok {
						take(r)
					} else {
						closed = true
					}
				case <-tick.C:
				}
				continue
			}
		}
		n, batchItems := 0, 0
		for n < len(queue) && (n == 0 || batchItems+len(queue[n].Items) <= limit) {
			batchItems += len(queue[n].Items)
			n++
		}
		if !db.applyRetrying(j, queue[:n]) {
			return // closing: what is not applied is replayed at the next open
		}
		queue, items = queue[n:], items-int64(batchItems)
		db.maybeRotate(j)
	}
}

// applyRetrying applies batch, retrying with backoff until it succeeds
// (the records stay in the journal meanwhile) or Close begins (false),
// then frees its room in the backlog and tells OnIntakeApplied.
func (db *DB) applyRetrying(j *journal, batch []*journalRecord) bool {
	for backoff := 50 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := db.applyJournal(j, batch)
		if err == nil {
			break
		}
		db.logger.Error("intake journal: applying to the database failed; retrying (the events are safe in the journal)", "err", err, "records", len(batch))
		j.applyErr.Store(&err)
		select {
		case <-time.After(backoff):
		case <-db.closing:
			return false
		}
	}
	j.applyErr.Store(nil)
	j.dropPending(batch)
	var w int64
	for _, r := range batch {
		w += j.weight(r)
	}
	j.room.Release(w)
	if fn := j.onApplied.Load(); fn != nil {
		(*fn)()
	}
	return true
}

// maybeRotate empties the journal under a new generation once it is large
// and fully applied.
func (db *DB) maybeRotate(j *journal) {
	j.fileMu.Lock()
	defer j.fileMu.Unlock()
	if j.end < journalRotateSize || j.applied.Load() != j.end || j.broken != nil {
		return
	}
	switch recorded, err := db.rotate(j, j.gen+1); {
	case err != nil && recorded:
		j.broken = fmt.Errorf("intake journal rotation failed (restart attestd): %w", err)
	case err != nil:
		db.logger.Warn("intake journal: rotation postponed", "err", err)
	}
}

// closeJournal waits for the materializer to apply everything the stopped
// writer acknowledged, then closes the file.
func (db *DB) closeJournal() {
	close(db.jrnl.apply)
	<-db.jrnl.done
	_ = db.jrnl.f.Close()
}
