package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SyncDir fsyncs the directory dir, so that what was created, renamed
// into or removed from it survives a crash: fsyncing a file makes its
// content durable, not its name (on Linux the directory entry is
// durable only once the directory itself is synced). Call it after
// creating a file that must exist after a restart, and after renaming a
// temp file into place.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// mkdirAllSynced is os.MkdirAll(dir, perm) whose new directories survive
// a crash: the parent of each directory it created is synced.
func mkdirAllSynced(dir string, perm os.FileMode, sync func(string) error) error {
	dir = filepath.Clean(dir)
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, d := range created {
		if err := sync(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}
