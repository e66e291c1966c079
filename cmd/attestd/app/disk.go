package app

import (
	"fmt"
	"log/slog"
	"syscall"
)

// minFreeBytes is the free space the data directory's filesystem must keep
// for attestd to take on work: bbolt grows its file and the layer cache
// writes whole layers. Below it the workers claim no job and /readyz
// answers 503 with the reason; intake keeps accepting events while the
// database can still commit them (it answers 503 once it cannot, and the
// sender retries).
const minFreeBytes = 64 << 20

// warnDiskSize says at start when the data directory's filesystem could not
// hold the layer cache: a large (or hostile) image under the limits would
// then fill the disk on each attempt, pausing every job until it is
// removed, instead of being refused by a limit.
func warnDiskSize(dir string, cache int64, log *slog.Logger) {
	if size, _, err := statfs(dir); err == nil && cache > 0 && uint64(cache)+minFreeBytes > size {
		log.Warn("the data directory's filesystem is smaller than analysis.layer_cache: an image within the analysis limits can fill it; lower layer_cache (and max_image_bytes) or give data_dir more room",
			"data_dir", dir, "filesystem_bytes", size, "layer_cache", cache)
	}
}

// diskSpace reports a data directory whose filesystem is (nearly) full, as
// an error that says what to do; nil while there is room.
func diskSpace(dir string) error {
	_, free, err := statfs(dir)
	if err != nil {
		return fmt.Errorf("data_dir %s: %w", dir, err)
	}
	if free < minFreeBytes {
		return fmt.Errorf("data_dir %s: filesystem full (%d MiB free, attestd needs %d MiB): free space there; jobs wait and senders are told to retry meanwhile, nothing is lost",
			dir, free>>20, minFreeBytes>>20)
	}
	return nil
}

// statfs is the size of dir's filesystem and the bytes free to an
// unprivileged writer, in the unit the counts use (Frsize; some
// filesystems report only Bsize).
func statfs(dir string) (size, free uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	unit := uint64(st.Frsize)
	if unit == 0 {
		unit = uint64(st.Bsize)
	}
	return st.Blocks * unit, st.Bavail * unit, nil
}
