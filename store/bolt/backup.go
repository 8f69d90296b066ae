package bolt

import (
	"errors"
	"fmt"
	"io"

	bbolt "go.etcd.io/bbolt"
)

// Backup writes a consistent copy of the whole store to w while the store
// stays in use: one read transaction streams every page of the file as of
// its start (bbolt's Tx.WriteTo), so Updates that commit meanwhile are not
// in the copy. Updates go on during the copy, except one that needs the
// file to grow past its mapped size: bbolt cannot remap under a reader, so
// that one waits for the copy to end. The bytes written are a complete
// pecgate.db: put them at PATH/pecgate.db (FileName), with the gateway
// stopped, to restore.
func (d *DB) Backup(w io.Writer) error {
	return d.db.View(func(tx *bbolt.Tx) error {
		if _, err := tx.WriteTo(w); err != nil {
			return fmt.Errorf("store/bolt: backup: %w", err)
		}
		return nil
	})
}

// CheckFile opens the bbolt file at path read-only and checks it page by
// page (bbolt's Tx.Check): a backup that was cut short or altered fails
// here. It returns every problem found, joined, and the file's size.
func CheckFile(path string) (size int64, err error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: OpenTimeout})
	if err != nil {
		return 0, fmt.Errorf("store/bolt: %s is not a readable store: %w", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		size = tx.Size()
		var errs []error
		n := 0
		// Drain the channel: Check's goroutine reads the transaction
		// until it has sent everything.
		for e := range tx.Check() {
			if n++; n <= 10 {
				errs = append(errs, e)
			}
		}
		if n > 10 {
			errs = append(errs, fmt.Errorf("(%d more problems)", n-10))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return 0, fmt.Errorf("store/bolt: %s is damaged: %w", path, err)
	}
	return size, nil
}
