// Package ketch speaks the Ketch Forwarder protocol (repository ketch-com/ketch-forwarder,
// api/dsr/v1): it reads the DeleteRequest Ketch pushes to us, writes the DeleteResponse and Error
// answers, and posts DeleteStatusEvents to the request's callbacks. It keeps only what the
// erasure needs (the request's uid, one identity, the deadline and the callbacks) and never
// decodes the subject, the claims or the other identities.
//
// It serves nothing and stores nothing: the worker's HTTP door calls ParseDeleteRequest and writes
// the answer, the reporter calls Notify once per callback.
package ketch

import (
	"encoding/json"
	"time"
)

// APIVersion is the only apiVersion of the protocol (Delete.md, Error.md: "Must be dsr/v1").
const APIVersion = "dsr/v1"

// The message kinds we read and write.
const (
	KindDeleteRequest     = "DeleteRequest"
	KindDeleteResponse    = "DeleteResponse"
	KindDeleteStatusEvent = "DeleteStatusEvent"
	KindError             = "Error"
)

// Metadata identifies a request; every answer and event carries the request's own.
type Metadata struct {
	UID    string `json:"uid"`
	Tenant string `json:"tenant"`
}

// Status is a request's status as Ketch knows it (Status.md, "Status code"). Case-sensitive.
type Status string

// The statuses of Status.md and the DSRRequestStatus enum of openapi/forwarder_gen.yaml.
const (
	StatusUnknown    Status = "unknown"
	StatusPending    Status = "pending"
	StatusInProgress Status = "in_progress"
	StatusCompleted  Status = "completed"
	StatusCancelled  Status = "cancelled"
	StatusDenied     Status = "denied"
)

// Final tells whether Ketch accepts no event after this status (Delete.md: "Once the status is
// set to completed, cancelled or denied, then no further events will be accepted").
func (s Status) Final() bool {
	return s == StatusCompleted || s == StatusCancelled || s == StatusDenied
}

// Reason says why a request has its status (Status.md, "Reason"). Case-sensitive.
type Reason string

// The reasons of Status.md (both versions of its table) and of the DSRRequestStatusReason enum.
const (
	ReasonUnknown                       Reason = "unknown" // any status; the default
	ReasonOther                         Reason = "other"   // any status: the enum and the examples
	ReasonNeedUserVerification          Reason = "need_user_verification"
	ReasonPending                       Reason = "pending"
	ReasonRequested                     Reason = "requested"
	ReasonExecuted                      Reason = "executed"
	ReasonExecutedDirectSubjectDelivery Reason = "executed_direct_subject_delivery"
	ReasonNoMatch                       Reason = "no_match"
	ReasonInsufficientIdentification    Reason = "insufficient_identification"
	ReasonInsufficientVerification      Reason = "insufficient_verification"
	ReasonClaimNotCovered               Reason = "claim_not_covered"
	ReasonOutsideJurisdiction           Reason = "outside_jurisdiction"
	ReasonTooManyRequests               Reason = "too_many_requests"
	ReasonSuspectedFraud                Reason = "suspected_fraud"
	ReasonInvalidCredentials            Reason = "invalid_credentials"
	ReasonInsufficientPermission        Reason = "insufficient_permission"
	ReasonInternalAppError              Reason = "internal_app_error"
	ReasonSLAExpiry                     Reason = "sla_expiry"
)

// reasonsFor is Status.md's reason table: which status each specific reason goes with.
// ReasonUnknown and ReasonOther go with any status, and so does no reason at all (it is optional).
var reasonsFor = map[Status][]Reason{
	StatusPending: {ReasonNeedUserVerification, ReasonPending},
	StatusCompleted: {ReasonRequested, ReasonNoMatch, ReasonInsufficientIdentification,
		ReasonExecuted, ReasonExecutedDirectSubjectDelivery},
	StatusDenied: {ReasonNoMatch, ReasonInsufficientIdentification, ReasonInsufficientVerification,
		ReasonClaimNotCovered, ReasonOutsideJurisdiction, ReasonTooManyRequests, ReasonSuspectedFraud,
		ReasonInvalidCredentials, ReasonInsufficientPermission, ReasonInternalAppError, ReasonSLAExpiry},
}

// ValidStatus tells whether s is one of the documented statuses.
func ValidStatus(s Status) bool {
	switch s {
	case StatusUnknown, StatusPending, StatusInProgress, StatusCompleted, StatusCancelled, StatusDenied:
		return true
	}
	return false
}

// ValidPair tells whether Status.md allows reason with status.
func ValidPair(s Status, r Reason) bool {
	if !ValidStatus(s) {
		return false
	}
	if r == "" || r == ReasonUnknown || r == ReasonOther {
		return true
	}
	for _, ok := range reasonsFor[s] {
		if r == ok {
			return true
		}
	}
	return false
}

// FinalEvent maps one of our outcomes (erasure_requests.outcome) to the final status and reason
// Ketch is told. A failure has no status of its own in the protocol: denied/unknown is the
// closest, and any outcome we do not know is reported as that failure.
func FinalEvent(outcome string) (Status, Reason) {
	switch outcome {
	case "deleted":
		return StatusCompleted, ReasonExecuted
	case "not_found":
		return StatusCompleted, ReasonNoMatch
	}
	// "rejected", "invalid", "exhausted"
	return StatusDenied, ReasonUnknown
}

// Body is the status part of a DeleteResponse (its "response") and of a DeleteStatusEvent (its
// "event"): Delete.md gives both the same fields. We send only these four; results, documents,
// claims, subject and identities are for augmenting a request, which an erasure never does.
type Body struct {
	Status Status `json:"status"`
	Reason Reason `json:"reason,omitempty"`
	// ExpectedCompletionTimestamp is in Unix seconds; 0 leaves it out.
	ExpectedCompletionTimestamp int64  `json:"expectedCompletionTimestamp,omitempty"`
	RequestID                   string `json:"requestID,omitempty"`
}

// DeleteResponse is the synchronous answer to a DeleteRequest (200 OK).
type DeleteResponse struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Response   Body     `json:"response"`
}

// DeleteStatusEvent is what a callback receives when the request's status changes.
type DeleteStatusEvent struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Event      Body     `json:"event"`
}

// ErrorStatus is the string code of an Error (Error.md, "Error status code").
type ErrorStatus string

// The error status codes of Error.md.
const (
	ErrorConflict      ErrorStatus = "conflict"
	ErrorInternal      ErrorStatus = "internal"
	ErrorUnavailable   ErrorStatus = "unavailable"
	ErrorInvalid       ErrorStatus = "invalid"
	ErrorNotFound      ErrorStatus = "not_found"
	ErrorTimeout       ErrorStatus = "timeout"
	ErrorCanceled      ErrorStatus = "canceled"
	ErrorForbidden     ErrorStatus = "forbidden"
	ErrorConfiguration ErrorStatus = "configuration"
	ErrorUnimplemented ErrorStatus = "unimplemented"
)

// Error is the body of every non-200 answer (Error.md). Metadata is the request's when it could
// be read, and left out otherwise (a body that is not JSON has none to echo).
type Error struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Metadata   *Metadata   `json:"metadata,omitempty"`
	Error      ErrorDetail `json:"error"`
}

// ErrorDetail is an Error's "error" object.
type ErrorDetail struct {
	Code    int         `json:"code"` // the HTTP status code
	Status  ErrorStatus `json:"status"`
	Message string      `json:"message"`
}

// unixSeconds writes a time as the protocol's Unix seconds, 0 for the zero time.
func unixSeconds(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// DeleteResponseBody is the JSON of a DeleteResponse for the request md. requestID is ours
// (it lets a Ketch operator find the request here); expected is when we expect to be done (the
// reference receiver requires it; the zero time leaves it out).
func DeleteResponseBody(md Metadata, status Status, reason Reason, requestID string, expected time.Time) []byte {
	return mustJSON(DeleteResponse{
		APIVersion: APIVersion,
		Kind:       KindDeleteResponse,
		Metadata:   md,
		Response: Body{
			Status:                      status,
			Reason:                      reason,
			ExpectedCompletionTimestamp: unixSeconds(expected),
			RequestID:                   requestID,
		},
	})
}

// ErrorBody is the JSON of an Error answer: code is the HTTP status it is sent with, md the
// request's metadata when known (nil leaves it out). The message must not hold anything from the
// request beyond what ParseDeleteRequest's errors say.
func ErrorBody(md *Metadata, code int, status ErrorStatus, message string) []byte {
	return mustJSON(Error{
		APIVersion: APIVersion,
		Kind:       KindError,
		Metadata:   md,
		Error:      ErrorDetail{Code: code, Status: status, Message: message},
	})
}

// mustJSON marshals values that are plain structs of strings and numbers: it cannot fail.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("ketch: " + err.Error())
	}
	return b
}
