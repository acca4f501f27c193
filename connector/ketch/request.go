package ketch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// Limits on what a DeleteRequest may hold. Ketch documents none; these keep one request from
// filling a row, and match the limits of erasure_requests.
const (
	// MaxRequestBytes bounds the body ParseDeleteRequest reads. The door should refuse a longer
	// body before reading it all (413).
	MaxRequestBytes = 256 << 10
	// MaxExternalUserIDBytes bounds the identityValue that becomes external_user_id.
	MaxExternalUserIDBytes = 1024
	// MaxCallbacks bounds request.callbacks.
	MaxCallbacks = 16
	// MaxCallbackURLBytes bounds a callback's url.
	MaxCallbackURLBytes = 2048
	// MaxCallbackHeaders bounds the headers of one callback.
	MaxCallbackHeaders = 32
	// maxHeaderNameBytes and maxHeaderValueBytes bound one header.
	maxHeaderNameBytes  = 256
	maxHeaderValueBytes = 8 << 10
	// maxTenantBytes bounds metadata.tenant, which is echoed in every answer.
	maxTenantBytes = 255
	// maxDueUnix is 9999-12-31T23:59:59Z: later deadlines are nonsense and PostgreSQL's
	// timestamptz would refuse some of them.
	maxDueUnix = 253402300799
)

// Request is what we keep of a DeleteRequest. Its String, GoString and LogValue leave out the
// external_user_id and the callbacks' URLs and headers.
type Request struct {
	Metadata Metadata
	// ExternalUserID is the identityValue of the identity in the configured identity space.
	ExternalUserID string
	// DueAt is request.dueTimestamp; zero when absent.
	DueAt time.Time
	// Callbacks are where status events go, each with the headers to send it with (Ketch's
	// credential: a secret).
	Callbacks []Callback
}

func (r Request) String() string {
	return fmt.Sprintf("ketch.Request{uid %q, tenant %q, due %s, %d callbacks}",
		r.Metadata.UID, r.Metadata.Tenant, dueString(r.DueAt), len(r.Callbacks))
}

// GoString keeps %#v from printing the fields.
func (r Request) GoString() string { return r.String() }

// LogValue names the request by its uid only.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("uid", r.Metadata.UID),
		slog.String("tenant", r.Metadata.Tenant),
		slog.Int("callbacks", len(r.Callbacks)),
	)
}

func dueString(t time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return t.UTC().Format(time.RFC3339)
}

// Callback is one entry of request.callbacks: a URL and the headers to send with every event.
// Its String, GoString and LogValue name the host only: the headers carry Ketch's credential and
// the URL may carry a token.
type Callback struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
}

func (c Callback) String() string {
	return fmt.Sprintf("ketch.Callback{host %q, %d headers}", callbackHost(c.URL), len(c.Headers))
}

// GoString keeps %#v from printing the fields.
func (c Callback) GoString() string { return c.String() }

// LogValue names the host only.
func (c Callback) LogValue() slog.Value {
	return slog.GroupValue(slog.String("host", callbackHost(c.URL)), slog.Int("headers", len(c.Headers)))
}

func callbackHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "?"
	}
	return u.Host
}

// RequestErrorKind says how a refused request is answered.
type RequestErrorKind int

const (
	// Invalid: the body is not a DeleteRequest we can read (not JSON, another apiVersion or kind,
	// a field of the wrong type or out of bounds). Answered 400 with a Ketch Error, status
	// "invalid".
	Invalid RequestErrorKind = iota + 1
	// Unidentified: a well-formed DeleteRequest that names no Knot user (no usable identity in the
	// configured space). Answered 200 with a DeleteResponse denied/insufficient_identification:
	// Status.md's pair for "the Data Subject was not sufficiently identified", and final, so Ketch
	// closes the request instead of waiting for an event.
	Unidentified
)

func (k RequestErrorKind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case Unidentified:
		return "unidentified"
	}
	return "RequestErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// RequestError is why ParseDeleteRequest refused a body. Its text names the field at fault and
// never quotes a value from the body.
type RequestError struct {
	Kind RequestErrorKind
	// Field is the JSON path at fault ("request.identities", "request.callbacks[1].url").
	Field string
	// Reason says what is wrong with it.
	Reason string
	// Metadata is the request's when it was read before the fault; nil otherwise. An
	// Unidentified error always has it.
	Metadata *Metadata
}

func (e *RequestError) Error() string { return "ketch: " + e.Field + ": " + e.Reason }

// Answer is the HTTP status and body that answer the refused request: a 400 Error for Invalid, a
// 200 DeleteResponse denied/insufficient_identification (expected completion now) for
// Unidentified.
func (e *RequestError) Answer(now time.Time) (int, []byte) {
	if e.Kind == Unidentified && e.Metadata != nil {
		return http.StatusOK, DeleteResponseBody(*e.Metadata, StatusDenied, ReasonInsufficientIdentification, "", now)
	}
	return http.StatusBadRequest, ErrorBody(e.Metadata, http.StatusBadRequest, ErrorInvalid, e.Field+": "+e.Reason)
}

// The reasons of RequestError. None quotes the body: a value there may be an identity or a
// credential. Only the configured identity space is ever named.
const (
	reasonTooLarge      = "larger than 262144 bytes"
	reasonNotUTF8       = "not valid UTF-8"
	reasonNotObject     = "not a JSON object"
	reasonMissing       = "missing"
	reasonNotString     = "not a string"
	reasonNotArray      = "not an array"
	reasonBlank         = "blank"
	reasonControl       = "contains a control character"
	reasonNotUnicode    = "not valid Unicode"
	reasonAPIVersion    = `must be "dsr/v1"`
	reasonKind          = `must be "DeleteRequest"`
	reasonTenantTooLong = "longer than 255 bytes"
	reasonIDTooLong     = "longer than 1024 bytes"
	reasonNotWhole      = "not a whole number of Unix seconds"
	reasonNegative      = "negative"
	reasonTooLate       = "after the year 9999"
	reasonTooMany       = "more than 16 callbacks"
	reasonURLTooLong    = "longer than 2048 bytes"
	reasonURLNotHTTP    = "not an absolute http or https URL"
	reasonTooManyHdrs   = "more than 32 headers"
	reasonHeaderName    = "a header name is not a valid HTTP field name"
	reasonHeaderValue   = "a header value is not a valid HTTP field value"
	reasonHeaderTwice   = "two headers with the same name"
	reasonHeaderNotStr  = "a header value is not a string"
)

func reasonNoIdentity(space string) string {
	return fmt.Sprintf("no identity in space %q", space)
}

func reasonHashed(space string) string {
	return fmt.Sprintf("the identity in space %q is hashed; Knot needs the raw value", space)
}

func reasonAmbiguous(space string) string {
	return fmt.Sprintf("more than one identity in space %q, with different values", space)
}

// ParseDeleteRequest reads a DeleteRequest (Delete.md) and keeps what the erasure needs: the
// metadata, the identityValue of the identity whose identitySpace is identitySpace (the Knot
// external_user_id), the deadline and the callbacks. The subject, the claims and the other
// identities are never decoded. Unknown fields are ignored: Ketch may add some. Keys match
// exactly (the protocol is case-sensitive), unlike encoding/json's default.
//
// metadata.uid is checked as an opaque key (non-blank, at most 255 bytes, no control
// characters), not as a UUID: it is only our idempotency key, and refusing a uid of another
// form would only refuse an erasure. Every error is a *RequestError.
func ParseDeleteRequest(body []byte, identitySpace string) (Request, error) {
	var req Request
	p := parser{}
	switch {
	case len(body) > MaxRequestBytes:
		return req, p.invalid("body", reasonTooLarge)
	case !utf8.Valid(body):
		// encoding/json would replace invalid bytes silently, and the id would name someone else.
		return req, p.invalid("body", reasonNotUTF8)
	}
	top, ok := object(body)
	if !ok {
		return req, p.invalid("body", reasonNotObject)
	}

	if err := p.constant(top, "apiVersion", APIVersion, reasonAPIVersion); err != nil {
		return req, err
	}
	if err := p.constant(top, "kind", KindDeleteRequest, reasonKind); err != nil {
		return req, err
	}
	md, err := p.metadata(top["metadata"])
	if err != nil {
		return req, err
	}
	p.md = &md
	req.Metadata = md

	if absent(top["request"]) {
		return req, p.invalid("request", reasonMissing)
	}
	r, ok := object(top["request"])
	if !ok {
		return req, p.invalid("request", reasonNotObject)
	}
	// Everything that makes the body malformed is checked before the identity, so that a
	// malformed body is always answered as one.
	if req.Callbacks, err = p.callbacks(r["callbacks"]); err != nil {
		return req, err
	}
	if req.DueAt, err = p.due(r["dueTimestamp"]); err != nil {
		return req, err
	}
	if req.ExternalUserID, err = p.identity(r["identities"], identitySpace); err != nil {
		return req, err
	}
	return req, nil
}

// parser carries the metadata into the errors found after it was read.
type parser struct{ md *Metadata }

func (p parser) invalid(field, reason string) *RequestError {
	return &RequestError{Kind: Invalid, Field: field, Reason: reason, Metadata: p.md}
}

func (p parser) unidentified(field, reason string) *RequestError {
	return &RequestError{Kind: Unidentified, Field: field, Reason: reason, Metadata: p.md}
}

func (p parser) constant(obj map[string]json.RawMessage, key, want, reason string) error {
	raw := obj[key]
	if absent(raw) {
		return p.invalid(key, reasonMissing)
	}
	s, ok := str(raw)
	if !ok || s != want {
		return p.invalid(key, reason)
	}
	return nil
}

func (p parser) metadata(raw json.RawMessage) (Metadata, error) {
	var md Metadata
	if absent(raw) {
		return md, p.invalid("metadata", reasonMissing)
	}
	obj, ok := object(raw)
	if !ok {
		return md, p.invalid("metadata", reasonNotObject)
	}
	if absent(obj["uid"]) {
		return md, p.invalid("metadata.uid", reasonMissing)
	}
	uid, ok := str(obj["uid"])
	if !ok {
		return md, p.invalid("metadata.uid", reasonNotString)
	}
	// Its length is intake's to check, with the prefix it is stored under (queue.ValidateIDs).
	if reason := checkText(uid, 0, ""); reason != "" {
		return md, p.invalid("metadata.uid", reason)
	}
	// Metadata.md says the tenant is required, but we only echo it: a request without one is
	// still carried out.
	var tenant string
	if !absent(obj["tenant"]) {
		if tenant, ok = str(obj["tenant"]); !ok {
			return md, p.invalid("metadata.tenant", reasonNotString)
		}
		if len(tenant) > maxTenantBytes {
			return md, p.invalid("metadata.tenant", reasonTenantTooLong)
		}
		if hasControl(tenant) {
			return md, p.invalid("metadata.tenant", reasonControl)
		}
	}
	return Metadata{UID: uid, Tenant: tenant}, nil
}

// checkText applies the rules of request_ref and external_user_id: non-blank, bounded (when
// maxBytes is not 0), no
// control characters (PostgreSQL refuses NUL; logs and Knot refuse the rest), and no U+FFFD
// (what encoding/json makes of a lone surrogate escape, so not what was sent).
func checkText(s string, maxBytes int, tooLong string) string {
	switch {
	case s == "":
		return reasonMissing
	case maxBytes > 0 && len(s) > maxBytes:
		return tooLong
	case hasControl(s):
		return reasonControl
	case strings.ContainsRune(s, utf8.RuneError):
		return reasonNotUnicode
	case strings.TrimSpace(s) == "":
		return reasonBlank
	}
	return ""
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func (p parser) due(raw json.RawMessage) (time.Time, error) {
	const field = "request.dueTimestamp"
	if absent(raw) {
		return time.Time{}, nil
	}
	secs, reason := wholeSeconds(raw)
	switch {
	case reason != "":
		return time.Time{}, p.invalid(field, reason)
	case secs < 0:
		return time.Time{}, p.invalid(field, reasonNegative)
	case secs > maxDueUnix:
		return time.Time{}, p.invalid(field, reasonTooLate)
	case secs == 0:
		return time.Time{}, nil
	}
	return time.Unix(secs, 0).UTC(), nil
}

// wholeSeconds reads a JSON number that is a whole number (123, 123.0, 1.23e2). Numbers too large
// for any deadline come back as math.MaxInt64 or -1, for the caller's range check.
func wholeSeconds(raw json.RawMessage) (int64, string) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || (t[0] != '-' && (t[0] < '0' || t[0] > '9')) {
		return 0, reasonNotWhole
	}
	if v, err := strconv.ParseInt(string(t), 10, 64); err == nil {
		return v, ""
	}
	f, err := strconv.ParseFloat(string(t), 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, reasonNotWhole
	case f > maxDueUnix:
		return math.MaxInt64, ""
	case f < 0:
		return -1, ""
	case f != math.Trunc(f):
		return 0, reasonNotWhole
	}
	return int64(f), ""
}

func (p parser) callbacks(raw json.RawMessage) ([]Callback, error) {
	const field = "request.callbacks"
	if absent(raw) {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, p.invalid(field, reasonNotArray)
	}
	if len(items) > MaxCallbacks {
		return nil, p.invalid(field, reasonTooMany)
	}
	var cbs []Callback
	for i, item := range items {
		at := fmt.Sprintf("%s[%d]", field, i)
		obj, ok := object(item)
		if !ok {
			return nil, p.invalid(at, reasonNotObject)
		}
		var cb Callback
		if absent(obj["url"]) {
			return nil, p.invalid(at+".url", reasonMissing)
		}
		if cb.URL, ok = str(obj["url"]); !ok {
			return nil, p.invalid(at+".url", reasonNotString)
		}
		var hdrs map[string]json.RawMessage
		if !absent(obj["headers"]) {
			if hdrs, ok = object(obj["headers"]); !ok {
				return nil, p.invalid(at+".headers", reasonNotObject)
			}
			cb.Headers = make(map[string]string, len(hdrs))
			for k, v := range hdrs {
				s, ok := str(v)
				if !ok {
					return nil, p.invalid(at+".headers", reasonHeaderNotStr)
				}
				cb.Headers[k] = s
			}
		}
		if field, reason := checkCallback(cb); reason != "" {
			return nil, p.invalid(at+field, reason)
		}
		cbs = append(cbs, cb)
	}
	return cbs, nil
}

// checkCallback returns the sub-field at fault and why, or "" for a callback we can call.
func checkCallback(cb Callback) (string, string) {
	switch {
	case cb.URL == "":
		return ".url", reasonMissing
	case len(cb.URL) > MaxCallbackURLBytes:
		return ".url", reasonURLTooLong
	}
	u, err := url.Parse(cb.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return ".url", reasonURLNotHTTP
	}
	if len(cb.Headers) > MaxCallbackHeaders {
		return ".headers", reasonTooManyHdrs
	}
	seen := make(map[string]bool, len(cb.Headers))
	for k, v := range cb.Headers {
		if !validHeaderName(k) {
			return ".headers", reasonHeaderName
		}
		if !validHeaderValue(v) {
			return ".headers", reasonHeaderValue
		}
		// Two spellings of one name would be sent as one, chosen at random.
		c := http.CanonicalHeaderKey(k)
		if seen[c] {
			return ".headers", reasonHeaderTwice
		}
		seen[c] = true
	}
	return "", ""
}

// validHeaderName is RFC 9110's token.
func validHeaderName(s string) bool {
	return len(s) <= maxHeaderNameBytes && httpguts.ValidHeaderFieldName(s)
}

// validHeaderValue refuses what net/http would refuse to send: control characters but tab.
func validHeaderValue(s string) bool {
	return len(s) <= maxHeaderValueBytes && httpguts.ValidHeaderFieldValue(s)
}

// identity finds the one identityValue in space, decoding nothing of the other identities but
// their space and format.
func (p parser) identity(raw json.RawMessage, space string) (string, error) {
	const field = "request.identities"
	if absent(raw) {
		return "", p.unidentified(field, reasonNoIdentity(space))
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return "", p.invalid(field, reasonNotArray)
	}
	var (
		found, hashed bool
		value         string
	)
	for i, item := range items {
		at := fmt.Sprintf("%s[%d]", field, i)
		obj, ok := object(item)
		if !ok {
			return "", p.invalid(at, reasonNotObject)
		}
		var s string
		if !absent(obj["identitySpace"]) {
			if s, ok = str(obj["identitySpace"]); !ok {
				return "", p.invalid(at+".identitySpace", reasonNotString)
			}
		}
		if space == "" || s != space {
			continue
		}
		var format string
		if !absent(obj["identityFormat"]) {
			if format, ok = str(obj["identityFormat"]); !ok {
				return "", p.invalid(at+".identityFormat", reasonNotString)
			}
		}
		var v string
		if !absent(obj["identityValue"]) {
			if v, ok = str(obj["identityValue"]); !ok {
				return "", p.invalid(at+".identityValue", reasonNotString)
			}
		}
		// identityFormat defaults to raw; md5, sha1 and the others are hashes of the id, which
		// name no Knot user.
		if format != "" && format != "raw" {
			hashed = true
			continue
		}
		if reason := checkText(v, MaxExternalUserIDBytes, reasonIDTooLong); reason != "" {
			return "", p.unidentified(at+".identityValue", reason)
		}
		if found && v != value {
			return "", p.unidentified(field, reasonAmbiguous(space))
		}
		found, value = true, v
	}
	switch {
	case found:
		return value, nil
	case hashed:
		return "", p.unidentified(field, reasonHashed(space))
	}
	return "", p.unidentified(field, reasonNoIdentity(space))
}

// object decodes a JSON object keeping its keys exactly as written; ok is false for anything
// else, null included.
func object(raw []byte) (map[string]json.RawMessage, bool) {
	if absent(raw) {
		return nil, false
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, false
	}
	return m, true
}

// str decodes a JSON string; ok is false for any other value.
func str(raw json.RawMessage) (string, bool) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || t[0] != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(t, &s); err != nil {
		return "", false
	}
	return s, true
}

// absent is true for a missing key and for null.
func absent(raw []byte) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// EncodeCallbacks writes callbacks, headers included, as one JSON value for the report row. The
// value holds Ketch's credentials: store it only until the report is delivered.
func EncodeCallbacks(cbs []Callback) ([]byte, error) {
	for i, cb := range cbs {
		if field, reason := checkCallback(cb); reason != "" {
			return nil, fmt.Errorf("ketch: callbacks[%d]%s: %s", i, field, reason)
		}
	}
	if cbs == nil {
		cbs = []Callback{}
	}
	return json.Marshal(cbs)
}

// DecodeCallbacks reads what EncodeCallbacks wrote, and checks each callback again.
func DecodeCallbacks(b []byte) ([]Callback, error) {
	var cbs []Callback
	if err := json.Unmarshal(b, &cbs); err != nil {
		// json's errors quote no values, but say where: enough, and nothing secret.
		return nil, fmt.Errorf("ketch: stored callbacks: not a JSON array of callbacks")
	}
	for i, cb := range cbs {
		if field, reason := checkCallback(cb); reason != "" {
			return nil, fmt.Errorf("ketch: stored callbacks[%d]%s: %s", i, field, reason)
		}
	}
	return cbs, nil
}
