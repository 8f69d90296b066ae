// Package store is pecgate's durable state: run-time routing overrides,
// per (user, mailbox) UID maps, folder maps, pinned authentication
// verifiers, the credential vault, pending changes and copy progress.
//
// The interface every backend implements is deliberately small: a
// transactional key-value store (Store, Tx). Typed accessors (GetMap,
// SetOverride, ...) are written once on top of Tx, so the embedded bbolt
// store (store/bolt) and PostgreSQL (store/pg) only move bytes, and one
// conformance suite (store/storetest) runs against both.
//
// Invariant 6 (crash safety) rests on Update: a copy's mapping is written
// in the same transaction that records the copy as done.
package store

import (
	"context"
	"errors"
	"fmt"
)

// ErrNotFound is returned by typed accessors when a key is absent.
var ErrNotFound = errors.New("store: not found")

// CheckBucket is every backend's check of a bucket name: it must not be
// empty.
func CheckBucket(bucket string) error {
	if bucket == "" {
		return errors.New("empty bucket name")
	}
	return nil
}

// CheckKey is every backend's check of a bucket and key: neither may be
// empty.
func CheckKey(bucket, key string) error {
	if err := CheckBucket(bucket); err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("empty key in bucket %q", bucket)
	}
	return nil
}

// Store is a transactional key-value store.
type Store interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed when fn
	// returns nil and rolled back otherwise. Updates are serialised.
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is one transaction. Buckets need no creation; keys and values are
// opaque bytes. A value returned by Get is valid only inside the
// transaction unless copied.
type Tx interface {
	// Get returns the value of key in bucket, or nil when absent.
	Get(bucket, key string) ([]byte, error)
	Put(bucket, key string, value []byte) error
	Delete(bucket, key string) error
	// ForEach calls fn for every key in bucket that starts with prefix, in
	// ascending byte order, until fn returns an error.
	ForEach(bucket, prefix string, fn func(key string, value []byte) error) error
}

// Bucket names used by the typed accessors.
const (
	BucketOverrides = "overrides" // "domain:NAME" / "user:ADDR" -> state
	BucketMaps      = "uidmaps"   // "USER\x00MAILBOX" -> Map (binary)
	BucketFolders   = "folders"   // "USER" -> FolderMap (JSON)
	BucketVerifiers = "verifiers" // "USER" -> verifier (PHC string)
	BucketVault     = "vault"     // "PROVIDER\x00USER" -> sealed credential
	BucketPending   = "pending"   // "USER\x00MAILBOX\x00VUID" -> pending change (JSON)
	BucketProgress  = "progress"  // "USER" -> Progress (JSON)
)
