// Package connector is the shape every privacy request system plugs into: the Connector
// interface and its registry, the Intake a connector stores requests through, what every door
// shares, and the result of delivering one report, classified the same way for every receiver,
// so that the worker's reporter retries, pauses and closes reports without knowing whose they
// are.
//
// Each system lives in a folder of its own below this one, with its settings, its wire format,
// its authentication and a fake beside it; connectortest is the suite each passes. None of them
// knows PostgreSQL.
package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/retryafter"
)

// Result is what a receiver's answer means for the report.
type Result string

const (
	// Delivered: the receiver took the report (any 2xx).
	Delivered Result = "delivered"
	// Closed: the receiver answered that the request is already closed or no longer
	// modifiable (a 409, where the receiver documents it so). Nothing more can be said to it: this counts as delivered.
	Closed Result = "closed"
	// Retry: no answer (network, timeout) or a 5xx; try again after a backoff.
	Retry Result = "retry"
	// RateLimited: 429; try again no sooner than RetryAfter.
	RateLimited Result = "rate_limited"
	// Unauthorized: 401; the credential is wrong, so every report of this connector would be
	// refused too. The reporter pauses the connector until a person fixes it.
	Unauthorized Result = "unauthorized"
	// Rejected: another 4xx; this report will be refused however often it is sent. It waits for
	// a person (`erasure-worker reports requeue`).
	Rejected Result = "rejected"
)

// Done tells whether the report needs no further delivery.
func (r Result) Done() bool { return r == Delivered || r == Closed }

// MaxRetryAfter caps a receiver's Retry-After, so that a bad header cannot park reports for days.
const MaxRetryAfter = 10 * time.Minute

// Delivery is the outcome of one attempt to deliver one report.
type Delivery struct {
	Result     Result
	HTTPStatus int           // 0 when no answer came
	RetryAfter time.Duration // RateLimited (and a 503 that says so) only; 0 when not given
	// Err says why the report was not delivered, fit for a log and for the evidence: it never
	// holds a credential, a header, a URL's query or an external_user_id.
	Err error
}

// FromAnswer classifies a receiver's HTTP status. closed lists the statuses that this receiver
// documents as "the request is already closed" (a 409, say); they count as delivered.
func FromAnswer(status int, header http.Header, now time.Time, closed ...int) Delivery {
	d := Delivery{HTTPStatus: status}
	for _, c := range closed {
		if status == c {
			d.Result = Closed
			return d
		}
	}
	switch {
	case status >= 200 && status <= 299:
		d.Result = Delivered
		return d
	case status == http.StatusUnauthorized:
		d.Result = Unauthorized
	case status == http.StatusTooManyRequests:
		d.Result = RateLimited
		d.RetryAfter = retryafter.Parse(header.Get("Retry-After"), now, MaxRetryAfter)
	case status == http.StatusRequestTimeout, status >= 500 && status <= 599:
		d.Result = Retry
		if status == http.StatusServiceUnavailable {
			d.RetryAfter = retryafter.Parse(header.Get("Retry-After"), now, MaxRetryAfter)
		}
	case status >= 400 && status <= 499:
		d.Result = Rejected
	default:
		// 1xx, 3xx (redirects are not followed) or nonsense: most likely a misconfigured URL.
		// Retry rather than give up, so that an operator has time to notice.
		d.Result = Retry
	}
	d.Err = fmt.Errorf("receiver answered %d %s", status, http.StatusText(status))
	return d
}

// FromError classifies a failure to get an answer at all. The error is rewritten so that it
// names the host but never the URL's path or query (a callback URL may carry a token).
// A dial that the Outbound policy refused is Rejected: sending again would be refused again.
func FromError(ctx context.Context, err error) Delivery {
	if errors.Is(err, ErrNotPublic) {
		return Delivery{Result: Rejected, Err: Redact(ctx, err)}
	}
	return Delivery{Result: Retry, Err: Redact(ctx, err)}
}

// Redact rewrites an error from an HTTP client so that it names the host only.
func Redact(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		host := "receiver"
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			host = u.Host
		}
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s %s: %w", ue.Op, host, ctx.Err())
		case errors.As(ue.Err, &ne) && ne.Timeout():
			return fmt.Errorf("%s %s: timed out", ue.Op, host)
		}
		return fmt.Errorf("%s %s: %s", ue.Op, host, scrubURL(ue.Err.Error(), ue.URL))
	}
	return err
}

func scrubURL(msg, rawURL string) string {
	if rawURL == "" {
		return msg
	}
	return strings.ReplaceAll(msg, rawURL, "<url>")
}
