package ketch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// Event is one status change of a request, as its callbacks are told.
type Event struct {
	Status    Status
	Reason    Reason
	RequestID string // ours, as in the DeleteResponse
	// ExpectedCompletion is sent as expectedCompletionTimestamp. Delete.md makes it optional but
	// Ketch's reference receiver requires it, so the zero time sends the time of sending: for a
	// final event, that is when the request was done.
	ExpectedCompletion time.Time
}

// EventBody is the JSON of the DeleteStatusEvent for ev.
func EventBody(md Metadata, ev Event) []byte {
	return mustJSON(DeleteStatusEvent{
		APIVersion: APIVersion,
		Kind:       KindDeleteStatusEvent,
		Metadata:   md,
		Event: Body{
			Status:                      ev.Status,
			Reason:                      ev.Reason,
			ExpectedCompletionTimestamp: unixSeconds(ev.ExpectedCompletion),
			RequestID:                   ev.RequestID,
		},
	})
}

// maxAnswerBytes bounds what is read of a callback's answer: nothing in it is used, it is read
// only so that the connection can be reused.
const maxAnswerBytes = 4 << 10

// Notify posts one DeleteStatusEvent to one callback, with that callback's headers, and
// classifies the answer. A 401 or 403 fails the report: the headers are that callback's
// credential, so no other report is concerned. Only a 2xx delivers it: Ketch documents no answer meaning "already
// closed", it only says that it accepts no event after a final one, so nothing counts as
// connector.Closed. Redirects are not followed (headers such as a custom credential would follow
// them to another host). client nil means http.DefaultClient; its timeout bounds the call,
// as does ctx. The Delivery's error never holds the URL's path or query nor a header.
func Notify(ctx context.Context, client *http.Client, cb Callback, md Metadata, ev Event) connector.Delivery {
	if field, reason := checkCallback(cb); reason != "" {
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("ketch: callback%s: %s", field, reason)}
	}
	if !ValidPair(ev.Status, ev.Reason) {
		return connector.Delivery{Result: connector.Rejected,
			Err: fmt.Errorf("ketch: event: status %q with reason %q is not a pair of Status.md", ev.Status, ev.Reason)}
	}
	if ev.ExpectedCompletion.IsZero() {
		ev.ExpectedCompletion = time.Now()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cb.URL, bytes.NewReader(EventBody(md, ev)))
	if err != nil {
		// checkCallback parsed the URL already; say nothing that could hold it.
		return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("ketch: callback to %s: cannot build the request", callbackHost(cb.URL))}
	}
	for k, v := range cb.Headers {
		req.Header.Set(k, v)
	}
	// Delete.md: "The Content-Type MUST be application/json"; Ketch's own client sends both.
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")

	c := http.Client{}
	if client != nil {
		c = *client
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return connector.FromError(ctx, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
	resp.Body.Close()
	d := connector.FromAnswer(resp.StatusCode, resp.Header, time.Now())
	if d.Result == connector.Unauthorized {
		// The credential is the callback's own, not ours: refused, it fails this report alone,
		// where pausing the connector would hold back every other callback's report.
		d.Result = connector.Rejected
		d.Err = fmt.Errorf("ketch: the callback refused the credentials it came with: %w", d.Err)
	}
	return d
}
