package worker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
)

// IntakeQueue is what intake needs of the queue.
type IntakeQueue interface {
	Enqueue(ctx context.Context, reqs []queue.NewRequest) ([]queue.EnqueueResult, error)
	Lookup(ctx context.Context, requestRef string) (queue.Record, error)
}

// Intake stores one connector's requests: it is the connector.Intake the binary gives each
// connector, and the one place where a connector's request becomes a row.
type Intake struct {
	q    IntakeQueue
	info connector.Info
	// reserved are the other connectors' prefixes, which a connector without a prefix (the
	// generic API) may not use.
	reserved []string
	keys     IdentifierKeys // to recognise a repeat of a request whose id was pseudonymised
}

// NewIntake returns the intake of the connector info, among the connectors that use the
// prefixes all.
func NewIntake(q IntakeQueue, info connector.Info, all []string, keys IdentifierKeys) *Intake {
	in := &Intake{q: q, info: info, keys: keys}
	for _, p := range all {
		if p != info.RefPrefix {
			in.reserved = append(in.reserved, p)
		}
	}
	return in
}

// Submit implements connector.Intake.
func (in *Intake) Submit(ctx context.Context, reqs ...connector.Request) ([]connector.Admitted, error) {
	out := make([]connector.Admitted, len(reqs))
	rows := make([]queue.NewRequest, 0, len(reqs))
	at := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if err := in.reservedPrefix(r); err != nil {
			out[i] = connector.Admitted{Admission: connector.Refused, Err: err}
			continue
		}
		nr := queue.NewRequest{RequestRef: in.info.RefPrefix + r.ID, ExternalUserID: r.ExternalUserID, DueAt: r.DueAt}
		for t, rep := range r.Reports {
			nr.Reports = append(nr.Reports, queue.NewReport{Connector: in.info.Name, Target: t, Lane: rep.Lane, Credentials: rep.Credentials})
		}
		rows, at = append(rows, nr), append(at, i)
	}
	res, err := in.q.Enqueue(ctx, rows)
	if err != nil {
		return nil, err
	}
	for j, r := range res {
		i := at[j]
		if r.Admission == queue.Rejected {
			out[i] = connector.Admitted{Admission: connector.Refused, Err: in.fieldError(reqs[i], r.Err)}
			continue
		}
		rec, err := in.q.Lookup(ctx, rows[j].RequestRef)
		if err != nil {
			return nil, err
		}
		a := connector.Admitted{Admission: connector.Inserted, Record: RecordOf(rec)}
		if r.Admission == queue.Duplicate {
			a.Admission = connector.Duplicate
			if !in.sameID(rec.ExternalUserID, reqs[i].ExternalUserID) {
				a = connector.Admitted{Admission: connector.Conflict}
			}
		}
		out[i] = a
	}
	return out, nil
}

// Lookup implements connector.Intake.
func (in *Intake) Lookup(ctx context.Context, id string) (connector.Record, error) {
	if in.reservedPrefix(connector.Request{ID: id}) != nil {
		return connector.Record{}, connector.ErrNotFound
	}
	rec, err := in.q.Lookup(ctx, in.info.RefPrefix+id)
	if errors.Is(err, queue.ErrNotFound) {
		return connector.Record{}, connector.ErrNotFound
	}
	if err != nil {
		return connector.Record{}, err
	}
	return RecordOf(rec), nil
}

func (in *Intake) reservedPrefix(r connector.Request) *connector.FieldError {
	for _, p := range in.reserved {
		if strings.HasPrefix(r.ID, p) {
			return &connector.FieldError{Field: orField(r.IDField, "request_ref"),
				Reason: fmt.Sprintf("the prefixes %s are kept for the connectors' requests", strings.Join(in.reserved, " and "))}
		}
	}
	return nil
}

// fieldError names the sender's field that a refusal is about, and counts the connector's
// prefix in a length it did not send.
func (in *Intake) fieldError(r connector.Request, err error) *connector.FieldError {
	var fe *queue.FieldError
	if !errors.As(err, &fe) {
		return &connector.FieldError{Reason: err.Error()}
	}
	if fe.Field == "external_user_id" {
		return &connector.FieldError{Field: orField(r.UserField, fe.Field), Reason: fe.Reason}
	}
	reason := fe.Reason
	if p := in.info.RefPrefix; p != "" && fe.Over > 0 {
		reason = fmt.Sprintf("%d bytes, longer than %d (stored as request_ref with the prefix %s, %d bytes at most)",
			len(r.ID), queue.MaxRequestRefBytes-len(p), p, queue.MaxRequestRefBytes)
	}
	return &connector.FieldError{Field: orField(r.IDField, fe.Field), Reason: reason}
}

func orField(f, def string) string {
	if f == "" {
		return def
	}
	return f
}

// sameID tells whether a repeated request names the id the stored one does: the raw id, or once
// IDENTIFIER_RETENTION has passed, its pseudonym under any key. Without keys a pseudonym cannot be
// checked, and the repeat is taken for what it says it is.
func (in *Intake) sameID(stored, given string) bool {
	if !strings.HasPrefix(stored, PseudonymPrefix) {
		return equalSecret(stored, given)
	}
	if in.keys.Len() == 0 {
		return true
	}
	for _, p := range in.keys.Pseudonyms(given) {
		if equalSecret(stored, p) {
			return true
		}
	}
	return false
}

func equalSecret(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// RecordOf is a request's record as a status endpoint and the evidence show it: no
// external_user_id.
func RecordOf(rec queue.Record) connector.Record {
	r := connector.Record{
		ID: rec.ID, RequestRef: rec.RequestRef, Status: rec.Status, Outcome: rec.Outcome, Attempts: rec.Attempts,
		ReceivedAt: rec.ReceivedAt, DueAt: rec.DueAt, CompletedAt: timeOrNil(rec.CompletedAt),
		LastErrorCode: rec.LastErrorCode, LastError: rec.LastError,
		Calls: []connector.CallRecord{}, Reports: []connector.ReportRecord{},
	}
	for _, c := range rec.Calls {
		r.Calls = append(r.Calls, connector.CallRecord{Attempt: c.Attempt, Worker: c.Worker, StartedAt: c.StartedAt,
			DurationMS: c.Duration.Milliseconds(), HTTPStatus: intOrNil(c.HTTPStatus), ErrorCode: c.ErrorCode, Result: c.Result})
	}
	for _, p := range rec.Reports {
		r.Reports = append(r.Reports, connector.ReportRecord{Connector: p.Connector, Status: p.Status, Attempts: p.Attempts,
			DeliveredAt: timeOrNil(p.DeliveredAt), LastResult: p.LastResult, HTTPStatus: intOrNil(p.HTTPStatus)})
	}
	return r
}

func timeOrNil[T interface{ IsZero() bool }](t T) *T {
	if t.IsZero() {
		return nil
	}
	return &t
}

func intOrNil(n int) *int {
	if n == 0 {
		return nil
	}
	return &n
}
