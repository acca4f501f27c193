package onetrust

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/connector"
)

// The outcomes of erasure_requests.outcome (queue.Outcome*; this package does not import the
// queue).
const (
	outcomeDeleted   = "deleted"
	outcomeNotFound  = "not_found"
	outcomeRejected  = "rejected"
	outcomeInvalid   = "invalid"
	outcomeExhausted = "exhausted"
)

// deliverer puts each report's status to its subtask, no faster than limit a second.
type deliverer struct {
	c     *Client
	limit rate.Limit
}

// Pace keeps the lane inside OneTrust's published limits (ONETRUST_REPORT_RATE), with a
// burst of one second's worth.
func (d deliverer) Pace() (rate.Limit, int) { return d.limit, max(1, int(d.limit)) }

// Deliver tells the subtask named by the request_ref how its erasure stands: IN_PROGRESS for
// the report written at intake, then the outcome (StatusFor).
func (d deliverer) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	id, ok := strings.CutPrefix(r.RequestRef, Connector{}.Info().RefPrefix)
	if !ok || id == "" {
		return rejected(fmt.Errorf("request_ref %q names no OneTrust subtask", r.RequestRef))
	}
	status, comment, err := StatusFor(r)
	if err != nil {
		return rejected(err)
	}
	return d.c.Put(ctx, Update{SubtaskID: id, Status: status, Comment: comment})
}

// StatusFor is the status and comment a report puts to its subtask:
//
//	at intake  IN_PROGRESS  the erasure is queued
//	deleted    COMPLETED    the user was erased at Knot
//	not_found  COMPLETED    nothing was found to delete (OneTrust has no status for it)
//	rejected, invalid, exhausted
//	           FAILED       why, with Knot's error code
//
// A comment names the request by its request_ref, never the person: it is shown to everyone who
// works the request in OneTrust.
func StatusFor(r connector.Report) (status, comment string, err error) {
	if r.AtIntake || r.Outcome == "" {
		return StatusInProgress, fmt.Sprintf("erasure-worker took this subtask as %s; the erasure at Knot is queued.", r.RequestRef), nil
	}
	switch r.Outcome {
	case outcomeDeleted:
		return StatusCompleted, fmt.Sprintf("The user was erased at Knot (%s).", r.RequestRef), nil
	case outcomeNotFound:
		return StatusCompleted, fmt.Sprintf("Nothing was found to delete: Knot has no user with this id (%s).", r.RequestRef), nil
	case outcomeRejected, outcomeInvalid, outcomeExhausted:
		why := map[string]string{
			outcomeRejected:  "Knot refused it",
			outcomeInvalid:   "the external_user_id is not one Knot accepts",
			outcomeExhausted: "every attempt failed",
		}[r.Outcome]
		if code := errorCode(r.ErrorCode, r.ExternalUserID); code != "" {
			why += ", error code " + code
		}
		return StatusFailed, fmt.Sprintf("The erasure at Knot failed: %s (%s, %s).", why, r.Outcome, r.RequestRef), nil
	}
	return "", "", fmt.Errorf("outcome %q has no OneTrust status", safeName(r.Outcome))
}

// errorCode is Knot's error_code (or ours, http_503) as a comment may quote it: a short code of
// letters, digits and _-.:, and not one that holds the user's id, which would then reach a
// third party.
func errorCode(code, user string) string {
	if len(code) > 64 || strings.ContainsFunc(code, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.:", r))
	}) {
		return ""
	}
	if user != "" && len(user) >= 4 && strings.Contains(code, user) {
		return ""
	}
	return code
}
