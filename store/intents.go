package store

import (
	"encoding/json"
	"fmt"
	"time"
)

// BucketIntents holds copies in flight: written before the APPEND to new,
// deleted in the transaction that records the copy's mapping. An intent
// found later means a copy may sit in new unrecorded (a crash between the
// APPEND and the record): it must be adopted, not shown as a new message
// nor copied again (invariant 6).
const BucketIntents = "intents" // "USER\x00MAILBOX\x00V" -> Intent (JSON)

// Intent is one copy in flight.
type Intent struct {
	V            UID       `json:"v"`
	Old          UID       `json:"old"`
	Size         int64     `json:"size"`
	InternalDate time.Time `json:"internaldate"`
}

func intentPrefix(user, mailbox string) string {
	return CanonicalUser(user) + "\x00" + CanonicalMailbox(mailbox) + "\x00"
}

// PutIntent records a copy about to start.
func PutIntent(tx Tx, user, mailbox string, in Intent) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return tx.Put(BucketIntents, fmt.Sprintf("%s%010d", intentPrefix(user, mailbox), in.V), b)
}

// DeleteIntent forgets a copy that is recorded (or known not to have
// happened).
func DeleteIntent(tx Tx, user, mailbox string, v UID) error {
	return tx.Delete(BucketIntents, fmt.Sprintf("%s%010d", intentPrefix(user, mailbox), v))
}

// ListIntents returns the copies in flight of (user, mailbox).
func ListIntents(tx Tx, user, mailbox string) ([]Intent, error) {
	var out []Intent
	err := tx.ForEach(BucketIntents, intentPrefix(user, mailbox), func(key string, value []byte) error {
		var in Intent
		if err := json.Unmarshal(value, &in); err != nil {
			return fmt.Errorf("store: intent %q: %w", key, err)
		}
		out = append(out, in)
		return nil
	})
	return out, err
}
