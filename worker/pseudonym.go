package worker

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/erasure-worker/erasure-worker/queue"
)

// PseudonymPrefix starts every pseudonymised external_user_id: what is left of a finished
// request's id once IDENTIFIER_RETENTION has passed.
const PseudonymPrefix = queue.PseudonymPrefix

// minKeyBytes is the shortest key accepted: HMAC-SHA256's own block of security.
const minKeyBytes = 32

// IdentifierKeys are the keys of IDENTIFIER_KEY_FILE, newest first. The newest pseudonymises;
// look-ups try every one, so that a key can be rotated without losing the evidence kept under
// the older ones. The keys live outside the database: a pseudonym cannot be reversed, nor
// matched, without them.
type IdentifierKeys struct {
	keys [][]byte
}

// ReadIdentifierKeys reads a key file: one key per line, newest first, each at least 32 bytes
// (e.g. `openssl rand -base64 32`); blank lines and lines starting with # are skipped. Errors
// name the line but never show a key.
func ReadIdentifierKeys(path string) (IdentifierKeys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return IdentifierKeys{}, fmt.Errorf("cannot read the key file: %w", err)
	}
	var k IdentifierKeys
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if len(line) < minKeyBytes {
			return IdentifierKeys{}, fmt.Errorf("line %d: a key must be at least %d bytes (e.g. openssl rand -base64 32)", n, minKeyBytes)
		}
		k.keys = append(k.keys, []byte(line))
	}
	if err := sc.Err(); err != nil {
		return IdentifierKeys{}, fmt.Errorf("cannot read the key file: %w", err)
	}
	if len(k.keys) == 0 {
		return IdentifierKeys{}, errors.New("the key file holds no key")
	}
	return k, nil
}

// NewIdentifierKeys makes keys from values, newest first (for tests and tools).
func NewIdentifierKeys(keys ...[]byte) IdentifierKeys { return IdentifierKeys{keys: keys} }

// Len is how many keys there are.
func (k IdentifierKeys) Len() int { return len(k.keys) }

// Pseudonym is the id as the newest key pseudonymises it.
func (k IdentifierKeys) Pseudonym(externalUserID string) string {
	return pseudonym(k.keys[0], externalUserID)
}

// Pseudonyms are the id as each key would have pseudonymised it, newest first: what a look-up
// by id matches.
func (k IdentifierKeys) Pseudonyms(externalUserID string) []string {
	out := make([]string, len(k.keys))
	for i, key := range k.keys {
		out[i] = pseudonym(key, externalUserID)
	}
	return out
}

func pseudonym(key []byte, id string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id))
	return PseudonymPrefix + hex.EncodeToString(m.Sum(nil))
}

// String never shows a key.
func (k IdentifierKeys) String() string { return fmt.Sprintf("%d identifier key(s)", len(k.keys)) }

// GoString never shows a key either.
func (k IdentifierKeys) GoString() string { return k.String() }
