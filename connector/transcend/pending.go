package transcend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/erasure-worker/erasure-worker/connector"
)

// MaxPageSize is the largest limit PendingPage asks for. The pending-requests reference has
// said both 100 and 5,000 over time; 100 is what every version accepts and what Transcend's own
// CLI pulls.
const MaxPageSize = 100

// maxPageBody bounds what we read of one page: 100 items with their attributes and purposes
// fit many times over, and a misconfigured URL must not make us buffer a web site.
const maxPageBody = 8 << 20

// Limits an item's fields must keep. The lengths of requestId and identifier are intake's to
// check (queue.ValidateIDs), with the prefix the request_ref is stored under.
const (
	maxTypeBytes = 255
	// maxDaysUntilOverdue: a century either way. Past that the number is not a deadline, and
	// DueAt would overflow a time.Duration near 292 years.
	maxDaysUntilOverdue = 36500
)

// Item is one pending erasure: a request whose identifier this data silo must erase.
//
// Items stay pending in Transcend until reported, so the same item comes back on every pull:
// intake must be idempotent on (RequestID, DataSiloID).
type Item struct {
	// RequestID is Transcend's id of the data subject request.
	RequestID string
	// DataSiloID is the integration the item belongs to; PendingPage keeps only items of the
	// configured one.
	DataSiloID string
	// Identifier is the value this data silo is configured to receive: the Knot
	// external_user_id. Personal data: keep it out of logs.
	Identifier string `json:"-"`
	// Type names the kind of identifier ("email", or one the customer defined).
	Type string
	// Nonce authorises Report for this item alone, and may be reused until the item is closed.
	// A credential: keep it only as long as the report is undelivered, and out of logs.
	Nonce string `json:"-"`
	// DaysUntilOverdue counts days from the pull until the request is overdue, by the customer's
	// own deadline for erasures; negative once past it, and fractional. Meaningful only when
	// HasDeadline is set.
	DaysUntilOverdue float64
	// HasDeadline is false when Transcend sent no daysUntilOverdue (the field is optional in its
	// reference); the caller then applies its own default.
	HasDeadline bool
}

// String names the item by its request id only.
func (it Item) String() string {
	return fmt.Sprintf("transcend item (request %s, data silo %s)", it.RequestID, it.DataSiloID)
}

// GoString keeps %#v from printing the identifier and the nonce.
func (it Item) GoString() string { return it.String() }

// LogValue keeps slog from printing the identifier and the nonce.
func (it Item) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("request_id", it.RequestID),
		slog.String("data_silo_id", it.DataSiloID),
		slog.String("type", it.Type),
	}
	if it.HasDeadline {
		attrs = append(attrs, slog.Float64("days_until_overdue", it.DaysUntilOverdue))
	}
	return slog.GroupValue(attrs...)
}

// DueAt is the deadline of an item pulled at received: received plus daysUntilOverdue days,
// rounded to the second and held within a century either way.
func DueAt(received time.Time, daysUntilOverdue float64) time.Time {
	d := daysUntilOverdue
	if math.IsNaN(d) {
		d = 0
	}
	d = max(-maxDaysUntilOverdue, min(maxDaysUntilOverdue, d))
	return received.Add(time.Duration(math.Round(d*86400)) * time.Second)
}

// Page is one answer of GET pending-requests. Items and Invalid together hold every element of
// the answer, so the next page exists when Len() equals the limit asked for.
type Page struct {
	Items []Item
	// Invalid lists the elements that cannot be carried out (a blank identifier, a missing
	// nonce, another data silo's item). They stay pending in Transcend and come back on the
	// next pull; the rest of the page is good.
	Invalid []ItemError
}

// Len is the number of elements the answer held, valid or not.
func (p Page) Len() int { return len(p.Items) + len(p.Invalid) }

// ItemError says why one element of a page was left out. It never holds the identifier or the
// nonce.
type ItemError struct {
	// Index is the element's position in the answer's items array, from 0.
	Index int
	// RequestID is the element's requestId when that much of it was usable, else "".
	RequestID string
	// Field is the JSON field at fault (requestId, identifier, nonce, dataSiloId, type,
	// daysUntilOverdue), or "" when the element is not an object.
	Field string
	// Reason is what is wrong with it: "missing", "blank", "not a string", ...
	Reason string
}

func (e ItemError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "items[%d]", e.Index)
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request %s)", e.RequestID)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Reason)
	return b.String()
}

// PullError is why PendingPage brought no page back.
type PullError struct {
	// Result says what to do, in the terms the reporter uses: connector.Unauthorized (pause
	// pulling and alert: the key is wrong, or not scoped to this data silo),
	// connector.RateLimited (wait RetryAfter), connector.Retry (back off and try again: no
	// answer, a 5xx, or an answer that was not a page), connector.Rejected (Sombra refused the
	// request itself; a person must look).
	Result     connector.Result
	HTTPStatus int           // 0 when no answer came
	RetryAfter time.Duration // when the answer said; 0 otherwise
	// Err never holds a key, a nonce, an identifier or the URL's query.
	Err error
}

func (e *PullError) Error() string { return "transcend: pull pending erasures: " + e.Err.Error() }

func (e *PullError) Unwrap() error { return e.Err }

// PendingPage fetches one page of the data silo's pending erasures, oldest first: limit items
// (1 to MaxPageSize) from offset. Every failure is a *PullError. A page whose elements are partly
// unusable is not a failure: those elements are in Page.Invalid.
func (c *Client) PendingPage(ctx context.Context, limit, offset int) (Page, error) {
	switch {
	case limit < 1 || limit > MaxPageSize:
		return Page{}, &PullError{Result: connector.Rejected, Err: fmt.Errorf("limit must be between 1 and %d, got %d", MaxPageSize, limit)}
	case offset < 0:
		return Page{}, &PullError{Result: connector.Rejected, Err: fmt.Errorf("offset must not be negative, got %d", offset)}
	}
	u := c.base + "/v1/data-silo/" + url.PathEscape(c.silo) + "/pending-requests/ERASURE?" +
		url.Values{"limit": {strconv.Itoa(limit)}, "offset": {strconv.Itoa(offset)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		// The URL was validated in New.
		return Page{}, &PullError{Result: connector.Rejected, Err: errors.New("cannot build the request")}
	}
	c.authorize(req)
	// The reference asks for it to get JSON back, even on a GET.
	req.Header.Set("Content-Type", "application/json")

	resp, err := c.hc.Do(req)
	if err != nil {
		return Page{}, &PullError{Result: connector.Retry, Err: connector.Redact(ctx, err)}
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // reuse the connection
		d := connector.FromAnswer(resp.StatusCode, resp.Header, c.now())
		err := d.Err
		if d.Result == connector.Unauthorized {
			err = fmt.Errorf("%w: check %s (and %s for a self-hosted Sombra), and that the key is scoped to %s",
				d.Err, settingAPIKey, settingSombraKey, settingDataSiloID)
		}
		return Page{}, &PullError{Result: d.Result, HTTPStatus: d.HTTPStatus, RetryAfter: d.RetryAfter, Err: err}
	}

	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPageBody+1))
	if err != nil {
		return Page{}, &PullError{Result: connector.Retry, HTTPStatus: resp.StatusCode, Err: connector.Redact(ctx, err)}
	}
	if len(body) > maxPageBody {
		return Page{}, &PullError{Result: connector.Retry, HTTPStatus: resp.StatusCode,
			Err: fmt.Errorf("answer is larger than %d MiB", maxPageBody>>20)}
	}
	page, err := decodePage(body, c.silo)
	if err != nil {
		return Page{}, &PullError{Result: connector.Retry, HTTPStatus: resp.StatusCode,
			Err: fmt.Errorf("answer is not a page of pending requests: %w", err)}
	}
	return page, nil
}

// decodePage reads {"items":[…]}. What makes the whole answer unusable is an error; what makes
// one element unusable is an ItemError in the page. Fields we do not use (coreIdentifier,
// attributes, locale, purpose, …) are ignored, as Transcend may add more at any time; we keep
// none of them, since several are personal data. Error texts never quote the body.
func decodePage(body []byte, silo string) (Page, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return Page{}, describeJSONError(body, err, "the answer")
	}
	raw, ok := top["items"]
	if !ok || isNull(raw) {
		return Page{}, errors.New("items: missing")
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return Page{}, errors.New("items: not an array")
	}
	var p Page
	for i, el := range elems {
		it, ie := decodeItem(el, silo)
		if ie != nil {
			ie.Index = i
			p.Invalid = append(p.Invalid, *ie)
			continue
		}
		p.Items = append(p.Items, it)
	}
	return p, nil
}

func describeJSONError(body []byte, err error, what string) error {
	var syn *json.SyntaxError
	switch {
	case len(bytes.TrimSpace(body)) == 0:
		return fmt.Errorf("%s is empty", what)
	case errors.As(err, &syn):
		// SyntaxError quotes the offending character; say where instead.
		return fmt.Errorf("%s is not valid JSON (at byte %d)", what, syn.Offset)
	default:
		return fmt.Errorf("%s is not a JSON object", what)
	}
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// Reasons an element is left out.
const (
	reasonNotObject   = "not a JSON object"
	reasonMissing     = "missing"
	reasonBlank       = "blank"
	reasonNotString   = "not a string"
	reasonNotNumber   = "not a number"
	reasonTooLong     = "too long"
	reasonControl     = "contains control characters"
	reasonNotHeader   = "not usable as a header value"
	reasonOtherSilo   = "not the configured data silo"
	reasonOutOfRange  = "out of range"
	reasonUnsupported = "not a string or null"
	reasonBadUTF8     = "not valid UTF-8"
)

func decodeItem(raw json.RawMessage, silo string) (Item, *ItemError) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return Item{}, &ItemError{Reason: reasonNotObject}
	}
	var it Item
	bad := func(field, reason string) (Item, *ItemError) {
		return Item{}, &ItemError{RequestID: it.RequestID, Field: field, Reason: reason}
	}

	// requestId first, so that every later problem can name the request.
	id, reason := requiredString(m, "requestId")
	switch {
	case reason != "":
		return bad("requestId", reason)
	case hasControl(id):
		return bad("requestId", reasonControl)
	}
	it.RequestID = id

	ident, reason := requiredString(m, "identifier")
	switch {
	case reason != "":
		return bad("identifier", reason)
	case hasControl(ident):
		return bad("identifier", reasonControl)
	}

	nonce, reason := requiredString(m, "nonce")
	switch {
	case reason != "":
		return bad("nonce", reason)
	case len(nonce) > maxHeaderValue:
		return bad("nonce", reasonTooLong)
	case !validHeaderValue(nonce) || strings.ContainsAny(nonce, " \t"):
		// We must send it back as x-transcend-nonce; better to say so now than at report time.
		return bad("nonce", reasonNotHeader)
	}

	siloID, reason := requiredString(m, "dataSiloId")
	switch {
	case reason != "":
		return bad("dataSiloId", reason)
	case siloID != silo:
		// Another silo's identifier may not be a Knot external_user_id at all.
		return bad("dataSiloId", reasonOtherSilo)
	}

	typ, reason := optionalString(m, "type")
	switch {
	case reason != "":
		return bad("type", reason)
	case len(typ) > maxTypeBytes:
		return bad("type", reasonTooLong)
	case hasControl(typ):
		return bad("type", reasonControl)
	}

	if rawDays, ok := m["daysUntilOverdue"]; ok && !isNull(rawDays) {
		var days float64
		if err := json.Unmarshal(rawDays, &days); err != nil {
			// A number too large for a float64 lands here too.
			if t := bytes.TrimSpace(rawDays); len(t) > 0 && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9')) {
				return bad("daysUntilOverdue", reasonOutOfRange)
			}
			return bad("daysUntilOverdue", reasonNotNumber)
		}
		if math.Abs(days) > maxDaysUntilOverdue {
			return bad("daysUntilOverdue", reasonOutOfRange)
		}
		it.DaysUntilOverdue, it.HasDeadline = days, true
	}

	it.Identifier, it.Nonce, it.DataSiloID, it.Type = ident, nonce, siloID, typ
	return it, nil
}

// requiredString returns m[key] as a non-blank string, or why it is not one.
func requiredString(m map[string]json.RawMessage, key string) (string, string) {
	raw, ok := m[key]
	if !ok || isNull(raw) {
		return "", reasonMissing
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reasonNotString
	}
	if strings.ContainsRune(s, utf8.RuneError) {
		// encoding/json turns bad UTF-8 and lone surrogates into U+FFFD without a word: the
		// identifier would then name someone else.
		return "", reasonBadUTF8
	}
	if strings.TrimSpace(s) == "" {
		return "", reasonBlank
	}
	return s, ""
}

// optionalString returns m[key] as a string, "" when absent or null.
func optionalString(m map[string]json.RawMessage, key string) (string, string) {
	raw, ok := m[key]
	if !ok || isNull(raw) {
		return "", ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reasonUnsupported
	}
	if strings.ContainsRune(s, utf8.RuneError) {
		return "", reasonBadUTF8
	}
	return s, ""
}
