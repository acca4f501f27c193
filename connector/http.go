package connector

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
)

// MaxBody bounds a body on every door: an erasure request is a few hundred bytes.
const MaxBody = 64 << 10

// EqualSecret compares a credential in constant time, whatever the lengths; an empty want
// matches nothing.
func EqualSecret(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1 && len(want) > 0
}

// CloseAfter makes the answer close the connection at once. A door calls it before it refuses a
// request whose body it has not read: net/http reads up to 256 KiB of an unread body before it
// sends the answer unless the answer says Connection: close, and even then once the answer is
// sent (to find the body's end), so that a sender who never sends the body holds the connection
// until ReadTimeout, and with it one of the API_MAX_CONNECTIONS. Ending the connection's reads
// now ends that read at once. w must be the server's ResponseWriter or unwrap to it
// (http.ResponseController).
func CloseAfter(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// ReadBody reads at most MaxBody bytes of r's body. It returns false when it could not:
// tooLarge has answered a body over the limit, or the sender went away.
func ReadBody(w http.ResponseWriter, r *http.Request, tooLarge func()) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		tooLarge()
		return nil, false
	}
	if err != nil {
		return nil, false
	}
	return body, true
}

// IsJSON tells whether r says its body is JSON.
func IsJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// WriteJSON answers with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"cannot encode the answer"}}`)
	}
	WriteRaw(w, status, append(b, '\n'))
}

// WriteRaw answers with a JSON body already encoded.
func WriteRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// RetryLater is the Retry-After, in seconds, of a door's 503 when the database is away.
const RetryLater = "5"
