package connector

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
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

// ErrorBody is the refusal body of the bearer doors (the generic API, Fides, OneTrust): the
// field at fault, as the sender's wire names it, and what is wrong.
type ErrorBody struct {
	Error struct {
		Field   string `json:"field,omitempty"`
		Message string `json:"message"`
	} `json:"error"`
}

// Refuse answers status with an ErrorBody.
func Refuse(w http.ResponseWriter, status int, field, message string) {
	var e ErrorBody
	e.Error.Field, e.Error.Message = field, message
	WriteJSON(w, status, e)
}

// Bearer serves next only the requests that carry "Authorization: Bearer <token>", checked in
// constant time before anything of the body is read. Any other is refused 401, naming setting
// (where the token is set), said to in, and its connection closed unread.
func Bearer(token, setting string, in Intake, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !EqualSecret(got, token) {
			in.Refused(RefusedUnauthenticated, "")
			CloseAfter(w)
			w.Header().Set("WWW-Authenticate", `Bearer realm="erasure-worker"`)
			Refuse(w, http.StatusUnauthorized, "", "missing or wrong bearer token (Authorization: Bearer <"+setting+">)")
			return
		}
		next(w, r)
	})
}

// ReadJSON reads a door's JSON body: one that says it is not JSON is refused 415, one over
// MaxBody 413, each said to in. It returns false once it has answered, or the sender went away.
func ReadJSON(w http.ResponseWriter, r *http.Request, in Intake) ([]byte, bool) {
	if !IsJSON(r) {
		in.Refused(RefusedNotJSON, "")
		Refuse(w, http.StatusUnsupportedMediaType, "", "the body must be JSON (Content-Type: application/json)")
		return nil, false
	}
	return ReadBody(w, r, func() {
		in.Refused(RefusedTooLarge, "")
		Refuse(w, http.StatusRequestEntityTooLarge, "", "the body is larger than 64 KiB")
	})
}

// Unavailable answers a request that the database could not take, 503 with a Retry-After:
// nothing was stored, and the sender should try again. It logs err for the operator, and
// answers nothing to a sender that went away.
func Unavailable(w http.ResponseWriter, r *http.Request, log *slog.Logger, door string, err error) {
	if r.Context().Err() != nil {
		return
	}
	log.Error("a door could not reach the database; the sender is told to retry", "door", door, "err", err)
	w.Header().Set("Retry-After", RetryLater)
	Refuse(w, http.StatusServiceUnavailable, "", "the database is unavailable; try again (repeating the same request is safe)")
}
