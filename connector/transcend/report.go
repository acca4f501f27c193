package transcend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/erasure-worker/erasure-worker/connector"
)

// The outcomes of erasure_requests.outcome that Report maps (queue.Outcome*; this package does
// not import the queue).
const (
	outcomeDeleted   = "deleted"
	outcomeNotFound  = "not_found"
	outcomeRejected  = "rejected"
	outcomeInvalid   = "invalid"
	outcomeExhausted = "exhausted"
)

// Values of the PUT body's profileStatus.
const (
	profileSkipped = "SKIPPED"
	profileError   = "ERROR"
)

// maxErrorCode bounds the error code quoted in a failure's message.
const maxErrorCode = 64

type reportBody struct {
	// Profiles is deprecated in the reference but still accepted, and the only field older
	// Sombra versions know; newer ones take the identifier from the nonce.
	Profiles      []reportProfile `json:"profiles,omitempty"`
	ProfileStatus string          `json:"profileStatus,omitempty"`
	Message       string          `json:"message,omitempty"`
}

type reportProfile struct {
	ProfileID string `json:"profileId"`
}

// Report tells Transcend how the item with this nonce ended, with PUT /v1/data-silo:
//
//	deleted    {"profiles":[{"profileId":identifier}]}                           resolved
//	not_found  {"profiles":[{"profileId":identifier}],"profileStatus":"SKIPPED"}
//	rejected, invalid, exhausted
//	           {"profiles":[{"profileId":identifier}],"profileStatus":"ERROR","message":"…"}
//
// The body for deleted is exactly what Transcend's own examples (python/cron.py) and CLI
// (markCronIdentifierCompleted) send: the profile alone marks it resolved. The message of a
// failure names the outcome and the error code, never the identifier. An empty identifier
// leaves out the deprecated profiles, for Sombra versions that read the identifier from the
// nonce (multi-tenant, 7.199.0 and later), e.g. once the raw id has been pseudonymised.
//
// Transcend's 409 (the request was completed or revoked meanwhile) counts as connector.Closed.
// An outcome Transcend cannot be told, or a nonce that cannot be sent, is connector.Rejected
// without a call.
func (c *Client) Report(ctx context.Context, nonce, identifier, outcome, errorCode string) connector.Delivery {
	switch {
	case nonce == "":
		return rejected(errors.New("nonce is empty"))
	case len(nonce) > maxHeaderValue || !validHeaderValue(nonce) || strings.ContainsAny(nonce, " \t"):
		return rejected(errors.New("nonce is not usable as a header value"))
	}
	body, err := reportBodyFor(identifier, outcome, errorCode)
	if err != nil {
		return rejected(err)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return rejected(errors.New("cannot encode the report"))
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.base+"/v1/data-silo", bytes.NewReader(b))
	if err != nil {
		return rejected(errors.New("cannot build the request"))
	}
	c.authorize(req)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Transcend-Nonce", nonce)

	resp, err := c.hc.Do(req)
	if err != nil {
		d := connector.FromError(ctx, err)
		d.Err = fmt.Errorf("transcend report: %w", d.Err)
		return d
	}
	// Sombra's answer says nothing we act on, and may echo what we sent: read a little, for
	// the connection's sake, and keep none of it.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()

	d := connector.FromAnswer(resp.StatusCode, resp.Header, c.now(), http.StatusConflict)
	switch {
	case d.Err == nil:
	case d.Result == connector.Unauthorized:
		d.Err = fmt.Errorf("transcend report: %w: check %s (and %s for a self-hosted Sombra)", d.Err, settingAPIKey, settingSombraKey)
	default:
		d.Err = fmt.Errorf("transcend report: %w", d.Err)
	}
	return d
}

func rejected(err error) connector.Delivery {
	return connector.Delivery{Result: connector.Rejected, Err: fmt.Errorf("transcend report: %w", err)}
}

// reportBodyFor maps our outcome to the PUT body (privacy-systems.md's table).
func reportBodyFor(identifier, outcome, errorCode string) (reportBody, error) {
	var body reportBody
	if identifier != "" {
		body.Profiles = []reportProfile{{ProfileID: identifier}}
	}
	switch outcome {
	case outcomeDeleted:
	case outcomeNotFound:
		body.ProfileStatus = profileSkipped
	case outcomeRejected, outcomeInvalid, outcomeExhausted:
		body.ProfileStatus = profileError
		body.Message = failureMessage(outcome, errorCode, identifier)
	default:
		return reportBody{}, fmt.Errorf("outcome %q has no Transcend status (want deleted, not_found, rejected, invalid or exhausted)", truncate(outcome, 32))
	}
	return body, nil
}

// failureMessage is what the Transcend dashboard shows for a failed erasure. The error code is
// ours or Knot's (INVALID_FIELD, http_403, …); anything else in its place is left out, lest it
// carry the identifier to a third party.
func failureMessage(outcome, errorCode, identifier string) string {
	msg := "Knot erasure failed: " + outcome
	if code := cleanErrorCode(errorCode, identifier); code != "" {
		msg += " (" + code + ")"
	}
	return msg
}

func cleanErrorCode(code, identifier string) string {
	if code == "" || len(code) > maxErrorCode {
		return ""
	}
	for i := 0; i < len(code); i++ {
		b := code[i]
		ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.' || b == ':'
		if !ok {
			return ""
		}
	}
	// A short identifier is in many codes by chance (http_403 holds "4"); a long one is not.
	if len(identifier) >= 4 && strings.Contains(code, identifier) {
		return ""
	}
	return code
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
