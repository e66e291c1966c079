package app

import (
	"fmt"
	"syscall"
)

// minFreeBytes is the free space the data directory's filesystem must keep
// for attestd to take on work: bbolt grows its file and the layer cache
// writes whole layers. Below it the workers claim no job and /readyz
// answers 503 with the reason; intake keeps accepting events while the
// database can still commit them (it answers 503 once it cannot, and the
// sender retries).
const minFreeBytes = 64 << 20

// diskSpace reports a data directory whose filesystem is (nearly) full, as
// an error that says what to do; nil while there is room.
func diskSpace(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("data_dir %s: %w", dir, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < minFreeBytes {
		return fmt.Errorf("data_dir %s: filesystem full (%d MiB free, attestd needs %d MiB): free space there; jobs wait and senders are told to retry meanwhile, nothing is lost",
			dir, free>>20, minFreeBytes>>20)
	}
	return nil
}
