// Package webhook is the generic connector, for in-house privacy systems and scripts: it reads
// the body of the HTTP API's POST /v1/erasure-requests, and sends each request's outcome back as
// a signed webhook that follows Standard Webhooks (https://www.standardwebhooks.com): headers
// webhook-id, webhook-timestamp and webhook-signature ("v1," and the base64 HMAC-SHA256 of
// id.timestamp.body under a whsec_ secret). Verify is what a receiver runs.
//
// The signature itself is computed by the Standard Webhooks reference library; this package
// adds what that library leaves to its callers: the secret's format and length, the message id's
// alphabet, a clock and a tolerance one can choose, and errors a caller can branch on.
package webhook

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a message's webhook-timestamp may lie from the receiver's clock,
// either way; the reference libraries use five minutes.
const DefaultTolerance = 5 * time.Minute

const (
	secretPrefix = "whsec_"
	// The spec: a symmetric secret is "Random. At least 24 bytes (192 bits, 512 maximum)".
	minSecretBytes = 24
	maxSecretBytes = 64
	maxIDBytes     = 128
)

// Reasons Verify refuses a message; test them with errors.Is.
var (
	// ErrMissingHeader: webhook-id, webhook-timestamp or webhook-signature is absent.
	ErrMissingHeader = errors.New("missing header")
	// ErrBadTimestamp: webhook-timestamp is not a whole number of Unix seconds.
	ErrBadTimestamp = errors.New("webhook-timestamp is not Unix seconds")
	// ErrStaleTimestamp: webhook-timestamp is further from now than the tolerance, in the
	// past (a replay) or the future.
	ErrStaleTimestamp = errors.New("webhook-timestamp outside the tolerance")
	// ErrNoMatchingSignature: no v1 signature in webhook-signature matches the body.
	ErrNoMatchingSignature = errors.New("no matching signature")
	// ErrBadSecret: the secret is not whsec_ and the base64 of 24 to 64 bytes.
	ErrBadSecret = errors.New("bad secret")
)

// parseSecret decodes a whsec_ secret. Its errors name the setting and never show the secret,
// not even a piece of it.
func parseSecret(setting, secret string) ([]byte, error) {
	b64, ok := strings.CutPrefix(secret, secretPrefix)
	if !ok {
		return nil, fmt.Errorf("%s: %w: must start with %s (Standard Webhooks' symmetric secret format)", setting, ErrBadSecret, secretPrefix)
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		// CorruptInputError says only at which byte; still, say nothing of the input.
		return nil, fmt.Errorf("%s: %w: the part after %s is not standard base64", setting, ErrBadSecret, secretPrefix)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, fmt.Errorf("%s: %w: decodes to %d bytes; Standard Webhooks asks for %d to %d random bytes",
			setting, ErrBadSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return key, nil
}

// checkID refuses a message id that could not travel in a header, or that holds a full stop: the
// spec warns that a "." in the id makes id.timestamp.body ambiguous.
func checkID(id string) error {
	if id == "" {
		return errors.New("empty")
	}
	if len(id) > maxIDBytes {
		return fmt.Errorf("%d bytes, longer than %d", len(id), maxIDBytes)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("byte %d is not a letter, digit, _ or -", i)
		}
	}
	return nil
}

// signer holds the reference library's signer for one key.
type signer struct{ wh *standardwebhooks.Webhook }

func newSigner(key []byte) signer {
	// NewWebhookRaw never fails; it only holds the key.
	wh, _ := standardwebhooks.NewWebhookRaw(key)
	return signer{wh: wh}
}

// sign returns the webhook-signature value: "v1," and the base64 HMAC-SHA256 of id.ts.body.
func (s signer) sign(id string, ts time.Time, body []byte) string {
	sig, _ := s.wh.Sign(id, ts, body) // HMAC cannot fail
	return sig
}

// Verify checks a Standard Webhooks message as a receiver must: the three headers present, the
// timestamp within tolerance of now (DefaultTolerance when tolerance <= 0), and one of the
// space-separated v1 signatures matching, compared in constant time. The error wraps one of
// ErrMissingHeader, ErrBadTimestamp, ErrStaleTimestamp, ErrNoMatchingSignature or ErrBadSecret;
// it never shows the secret or a signature.
//
// Verify the body exactly as received: parsing and re-encoding the JSON first changes the bytes.
func Verify(secret string, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := parseSecret("secret", secret)
	if err != nil {
		return err
	}
	return verifyKey(newSigner(key), header, body, now, tolerance)
}

func verifyKey(s signer, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	for _, h := range []string{HeaderID, HeaderTimestamp, HeaderSignature} {
		if header.Get(h) == "" {
			return fmt.Errorf("%s: %w", h, ErrMissingHeader)
		}
	}
	ts, err := parseTimestamp(header.Get(HeaderTimestamp))
	if err != nil {
		return err
	}
	// Compare instants, not a difference: a timestamp centuries away overflows time.Duration.
	switch {
	case ts.Before(now.Add(-tolerance)):
		return fmt.Errorf("%w: %s old, more than %s", ErrStaleTimestamp, now.Sub(ts).Truncate(time.Second), tolerance)
	case ts.After(now.Add(tolerance)):
		return fmt.Errorf("%w: %s in the future, more than %s", ErrStaleTimestamp, ts.Sub(now).Truncate(time.Second), tolerance)
	}
	// The headers are checked above, so the library can only find no match. Its timestamp
	// check reads the wall clock with a fixed tolerance; ours is done, with the caller's.
	if err := s.wh.VerifyIgnoringTimestamp(body, header); err != nil {
		return fmt.Errorf("%s: %w", HeaderSignature, ErrNoMatchingSignature)
	}
	return nil
}

// parseTimestamp reads webhook-timestamp strictly: digits only (strconv alone would take "+1").
func parseTimestamp(v string) (time.Time, error) {
	if len(v) > 18 || strings.TrimLeft(v, "0123456789") != "" {
		return time.Time{}, ErrBadTimestamp
	}
	secs, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, ErrBadTimestamp
	}
	return time.Unix(secs, 0), nil
}
