package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/prometheus/client_golang/prometheus"
)

// IntakeQueue is what intake needs of the queue.
type IntakeQueue interface {
	Enqueue(ctx context.Context, reqs []queue.NewRequest) ([]queue.EnqueueResult, error)
	RecordDenial(ctx context.Context, d queue.Denial) error
	Lookup(ctx context.Context, requestRef string) (queue.Record, error)
	LookupRefs(ctx context.Context, refs []string) (map[string]queue.Record, error)
	RenewReports(ctx context.Context, id int64, reports []queue.NewReport) (int64, error)
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
	refusals *prometheus.CounterVec
	log      *slog.Logger

	mu     sync.Mutex
	logged map[connector.Refusal]refusalLog
}

// IntakeConfig configures an Intake.
type IntakeConfig struct {
	Info connector.Info
	// Prefixes are every registered connector's ref prefix.
	Prefixes []string
	Keys     IdentifierKeys
	// Refusals counts refusals by door and reason (NewRefusalMetric); nil counts none.
	Refusals *prometheus.CounterVec
	Logger   *slog.Logger // nil logs nothing
}

// NewIntake returns the intake of one connector.
func NewIntake(q IntakeQueue, cfg IntakeConfig) *Intake {
	in := &Intake{q: q, info: cfg.Info, keys: cfg.Keys, refusals: cfg.Refusals, log: cfg.Logger,
		logged: map[connector.Refusal]refusalLog{}}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	for _, p := range cfg.Prefixes {
		if p != cfg.Info.RefPrefix {
			in.reserved = append(in.reserved, p)
		}
	}
	return in
}

// NewRefusalMetric is erasure_door_refusals_total, registered with reg unless it is nil.
func NewRefusalMetric(reg prometheus.Registerer) *prometheus.CounterVec {
	m := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "erasure_door_refusals_total",
		Help: "Requests a door refused, by door and reason: unauthenticated, too_large, not_json, invalid, conflict, unidentified (the request names no person the connector can erase).",
	}, []string{"door", "reason"})
	if reg != nil {
		reg.MustRegister(m)
	}
	return m
}

// refusalLogEvery is how often one reason of one door is logged at most; the refusals between
// two lines are counted in the second.
const refusalLogEvery = 10 * time.Second

type refusalLog struct {
	at     time.Time
	unsaid int
}

// Refused implements connector.Intake.
func (in *Intake) Refused(reason connector.Refusal, field string) {
	if in.refusals != nil {
		in.refusals.WithLabelValues(in.info.DoorName(), string(reason)).Inc()
	}
	in.mu.Lock()
	l := in.logged[reason]
	now := time.Now()
	if !l.at.IsZero() && now.Sub(l.at) < refusalLogEvery {
		l.unsaid++
		in.logged[reason] = l
		in.mu.Unlock()
		return
	}
	in.logged[reason] = refusalLog{at: now}
	in.mu.Unlock()
	args := []any{"door", in.info.DoorName(), "reason", string(reason)}
	if field != "" {
		args = append(args, "field", field)
	}
	if l.unsaid > 0 {
		args = append(args, "more_since_last_line", l.unsaid)
	}
	in.log.Warn("a door refused a request", args...)
}

// Denied implements connector.Intake.
func (in *Intake) Denied(ctx context.Context, id string, reason connector.Refusal, field string) error {
	in.Refused(reason, field)
	return in.q.RecordDenial(ctx, queue.Denial{RequestRef: in.info.RefPrefix + id, Door: in.info.DoorName(), Reason: string(reason), Field: field})
}

// Submit implements connector.Intake.
func (in *Intake) Submit(ctx context.Context, reqs ...connector.Request) ([]connector.Admitted, error) {
	out, err := in.submit(ctx, reqs)
	if err != nil {
		return nil, err
	}
	// A Several request whose ID holds another person goes to its next slot, ID#2, ID#3, ...,
	// until one is free or holds this person.
	slotted := slices.Clone(reqs)
	for slot := 2; slot <= connector.MaxPeople; slot++ {
		var again []int
		for i, a := range out {
			if a.Admission == connector.Conflict && reqs[i].Several {
				again = append(again, i)
			}
		}
		if len(again) == 0 {
			break
		}
		batch := make([]connector.Request, len(again))
		for k, i := range again {
			slotted[i].ID = reqs[i].ID + "#" + strconv.Itoa(slot)
			batch[k] = slotted[i]
		}
		got, err := in.submit(ctx, batch)
		if err != nil {
			return nil, err
		}
		for k, i := range again {
			out[i] = got[k]
		}
	}
	for i, a := range out {
		switch a.Admission {
		case connector.Refused:
			in.Refused(connector.RefusedInvalid, a.Err.Field)
		case connector.Conflict:
			in.Refused(connector.RefusedConflict, orField(reqs[i].IDField, "request_ref"))
		}
	}
	return out, nil
}

// submit stores reqs once, each under its ID.
func (in *Intake) submit(ctx context.Context, reqs []connector.Request) ([]connector.Admitted, error) {
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
			nr.Reports = append(nr.Reports, queue.NewReport{Connector: in.info.Name, Target: t, Lane: rep.Lane,
				Credentials: rep.Credentials, AtIntake: rep.AtIntake, Hold: rep.Hold})
		}
		rows, at = append(rows, nr), append(at, i)
	}
	res, err := in.q.Enqueue(ctx, rows)
	if err != nil {
		return nil, err
	}
	// The stored requests, in one look-up for the batch: their records answer a door, and a
	// repeat's stored id tells a conflict.
	var taken []string
	for j, r := range res {
		if r.Admission != queue.Rejected {
			taken = append(taken, rows[j].RequestRef)
		}
	}
	var recs map[string]queue.Record
	if len(taken) > 0 {
		if recs, err = in.q.LookupRefs(ctx, taken); err != nil {
			return nil, err
		}
	}
	for j, r := range res {
		i := at[j]
		if r.Admission == queue.Rejected {
			out[i] = connector.Admitted{Admission: connector.Refused, Err: in.fieldError(reqs[i], r.Err)}
			continue
		}
		rec, ok := recs[rows[j].RequestRef]
		if !ok {
			// Deleted between the insert and the look-up (EVIDENCE_RETENTION): say so, as for
			// a database that is away, and the sender tries again.
			return nil, fmt.Errorf("look up request %s: %w", rows[j].RequestRef, queue.ErrNotFound)
		}
		a := connector.Admitted{Admission: connector.Inserted, Record: RecordOf(rec)}
		if r.Admission == queue.Duplicate {
			a.Admission = connector.Duplicate
			if !in.sameID(rec.ExternalUserID, reqs[i].ExternalUserID) {
				a = connector.Admitted{Admission: connector.Conflict}
			} else if err := in.renew(ctx, rec, rows[j].Reports, reqs[i].Reports); err != nil {
				return nil, err
			}
		}
		out[i] = a
	}
	return out, nil
}

// renew replaces the stored reports of a repeated request that its sender marked Renewed.
func (in *Intake) renew(ctx context.Context, rec queue.Record, rows []queue.NewReport, reports []connector.NewReport) error {
	var renewed []queue.NewReport
	for t, rep := range reports {
		if rep.Renewed {
			renewed = append(renewed, rows[t])
		}
	}
	if len(renewed) == 0 {
		return nil
	}
	_, err := in.q.RenewReports(ctx, rec.ID, renewed)
	return err
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
		return connector.EqualSecret(given, stored)
	}
	if in.keys.Len() == 0 {
		return true
	}
	for _, p := range in.keys.Pseudonyms(given) {
		if connector.EqualSecret(p, stored) {
			return true
		}
	}
	return false
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
