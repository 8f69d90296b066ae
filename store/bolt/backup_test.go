package bolt

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/store"
)

// TestBackupRestore copies a store while an Update is under way in another
// goroutine, restores the copy as a store directory of its own, and reads
// back every key written before the copy began, byte for byte; the copy
// passes CheckFile, and a truncated or altered copy does not.
func TestBackupRestore(t *testing.T) {
	ctx := context.Background()
	src, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := map[string][]byte{}
	err = src.Update(ctx, func(tx store.Tx) error {
		for i := range 2000 {
			k := fmt.Sprintf("user%04d@pec.ordine.example\x00INBOX", i)
			v := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xA5}, 40+i%50)
			want[k] = v
			if err := tx.Put(store.BucketMaps, k, v); err != nil {
				return err
			}
		}
		return tx.Put(store.BucketOverrides, "domain:pec.ordine.example", []byte("migrating"))
	})
	if err != nil {
		t.Fatal(err)
	}

	// A writer keeps committing during the backup: neither may fail or
	// wait for the other.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := src.Update(ctx, func(tx store.Tx) error {
				return tx.Put(store.BucketProgress, fmt.Sprintf("late%06d", i), []byte("x"))
			}); err != nil {
				done <- err
				return
			}
		}
	}()
	var buf bytes.Buffer
	err = src.Backup(&buf)
	close(stop)
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	file := filepath.Join(dir, FileName)
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	size, err := CheckFile(file)
	if err != nil || size != int64(buf.Len()) {
		t.Fatalf("CheckFile(backup) = %d, %v; want %d, nil", size, err, buf.Len())
	}
	restored, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	err = restored.View(ctx, func(tx store.Tx) error {
		n := 0
		if err := tx.ForEach(store.BucketMaps, "", func(k string, v []byte) error {
			n++
			if !bytes.Equal(v, want[k]) {
				return fmt.Errorf("%q: restored %d bytes, want %d", k, len(v), len(want[k]))
			}
			return nil
		}); err != nil {
			return err
		}
		if n != len(want) {
			return fmt.Errorf("restored %d UID maps, want %d", n, len(want))
		}
		v, err := tx.Get(store.BucketOverrides, "domain:pec.ordine.example")
		if err != nil || string(v) != "migrating" {
			return fmt.Errorf("override = %q, %v; want migrating", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A copy cut short is refused; so is one with a page overwritten.
	short := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(short, buf.Bytes()[:buf.Len()/2], 0o600)
	if _, err := CheckFile(short); err == nil {
		t.Error("CheckFile accepted a backup cut in half")
	}
	bad := bytes.Clone(buf.Bytes())
	pageSize := os.Getpagesize()
	for i := 2 * pageSize; i < len(bad) && i < 6*pageSize; i++ {
		bad[i] = 0xFF
	}
	damaged := filepath.Join(t.TempDir(), FileName)
	os.WriteFile(damaged, bad, 0o600)
	if _, err := CheckFile(damaged); err == nil || !strings.Contains(err.Error(), "damaged") && !strings.Contains(err.Error(), "not a readable store") {
		t.Errorf("CheckFile(damaged) = %v, want an error", err)
	}
}
