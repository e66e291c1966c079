package store

import "errors"

var (
	// ErrNotFound: no record, job or tag by that key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-set lost (state or revision changed underneath).
	ErrConflict = errors.New("conflict")
	// ErrInvalidTransition: the state machine does not allow the move at all.
	ErrInvalidTransition = errors.New("invalid state transition")
	// ErrNoJob: nothing is ready to be claimed.
	ErrNoJob = errors.New("no job ready")
	// ErrLocked: another process holds the database file.
	ErrLocked = errors.New("database is locked")
	// ErrCorrupt: the file is not a readable attestd database.
	ErrCorrupt = errors.New("database is corrupt")
	// ErrSchemaTooNew: the file was written by a newer attestd.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary")
	errClosed       = errors.New("store is closed")
	// ErrInvalidItem: an intake item the store cannot record (a malformed
	// ref, a key longer than intake allows): the sender's input is wrong.
	ErrInvalidItem = errors.New("invalid intake item")
	// ErrNotOwner: a job transition was attempted by a worker that no longer holds the claim.
	ErrNotOwner = errors.New("job is not claimed by this owner")
)
