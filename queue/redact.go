package queue

import (
	"fmt"
	"log/slog"
)

// The types that carry an external_user_id or a report's credentials print without them, however
// they are printed (%v, %+v, %#v, slog): a row logged by mistake must not put personal data or a
// credential in a log.

func (r NewRequest) String() string {
	return fmt.Sprintf("queue.NewRequest{RequestRef:%q ExternalUserID:<redacted> DueAt:%s Reports:%d}", r.RequestRef, r.DueAt, len(r.Reports))
}

// GoString is String, for %#v.
func (r NewRequest) GoString() string { return r.String() }

// LogValue names the request by its ref.
func (r NewRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("request_ref", r.RequestRef))
}

func (r NewReport) String() string {
	return fmt.Sprintf("queue.NewReport{Connector:%s Target:%d Lane:%q Credentials:<redacted>}", r.Connector, r.Target, r.Lane)
}

// GoString is String, for %#v.
func (r NewReport) GoString() string { return r.String() }

// LogValue leaves the credentials out.
func (r NewReport) LogValue() slog.Value {
	return slog.GroupValue(slog.String("connector", r.Connector), slog.Int("target", r.Target))
}

func (j Job) String() string {
	return fmt.Sprintf("queue.Job{ID:%d RequestRef:%q ExternalUserID:<redacted> Attempt:%d}", j.ID, j.RequestRef, j.Attempt)
}

// GoString is String, for %#v.
func (j Job) GoString() string { return j.String() }

// LogValue names the request by its id and ref.
func (j Job) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("request_id", j.ID), slog.String("request_ref", j.RequestRef))
}

func (r Report) String() string {
	return fmt.Sprintf("queue.Report{ID:%d Connector:%s Lane:%q RequestID:%d RequestRef:%q ExternalUserID:<redacted> Credentials:<redacted> Outcome:%s}",
		r.ID, r.Connector, r.Lane, r.RequestID, r.RequestRef, r.Outcome)
}

// GoString is String, for %#v.
func (r Report) GoString() string { return r.String() }

// LogValue names the report and its request.
func (r Report) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("report_id", r.ID), slog.String("connector", r.Connector),
		slog.Int64("request_id", r.RequestID), slog.String("request_ref", r.RequestRef))
}

func (r Record) String() string {
	return fmt.Sprintf("queue.Record{ID:%d RequestRef:%q ExternalUserID:<redacted> Status:%s Outcome:%s Calls:%d Reports:%d}",
		r.ID, r.RequestRef, r.Status, r.Outcome, len(r.Calls), len(r.Reports))
}

// GoString is String, for %#v.
func (r Record) GoString() string { return r.String() }

// LogValue names the request by its id and ref.
func (r Record) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("request_id", r.ID), slog.String("request_ref", r.RequestRef))
}

func (i Identified) String() string {
	return fmt.Sprintf("queue.Identified{ID:%d ExternalUserID:<redacted>}", i.ID)
}

// GoString is String, for %#v.
func (i Identified) GoString() string { return i.String() }

// LogValue names the request by its id.
func (i Identified) LogValue() slog.Value { return slog.GroupValue(slog.Int64("request_id", i.ID)) }

func (p Pseudonym) String() string {
	return fmt.Sprintf("queue.Pseudonym{ID:%d Raw:<redacted> Pseudonym:%s}", p.ID, p.Pseudonym)
}

// GoString is String, for %#v.
func (p Pseudonym) GoString() string { return p.String() }

// LogValue names the request by its id.
func (p Pseudonym) LogValue() slog.Value { return slog.GroupValue(slog.Int64("request_id", p.ID)) }
