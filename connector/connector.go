package connector

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/settings"
)

// Connector is one privacy request system, as the binary registers it: all that the rest of
// the service knows of it goes through this interface and the Parts it returns.
type Connector interface {
	Info() Info
	// Declare declares the connector's settings on s. Once s is parsed, the function it returns
	// reads them, checks them (naming the setting at fault through s.Fail) and returns the
	// connector's parts, or nil when its settings leave it off.
	Declare(s *settings.Set) func() *Parts
}

// Info is what names a connector.
type Info struct {
	// Name is the connector's stable name: the reports' connector column, the metrics' connector
	// label, `reports requeue --connector`. Lower case letters.
	Name string
	// Door is the name of its door in erasure_api_requests_total and in the evidence ("api" for
	// the generic API); Name when empty.
	Door string
	// RefPrefix starts the request_ref of every request this system sends ("acme:"), so that
	// two systems' ids never meet; "" for the generic API, whose callers choose their refs and
	// may not use another connector's prefix.
	RefPrefix string
}

// DoorName is Door, or Name when Door is empty.
func (i Info) DoorName() string {
	if i.Door != "" {
		return i.Door
	}
	return i.Name
}

// Parts are what a configured connector does; each is nil when its settings leave it off.
type Parts struct {
	Door      Door      // requests pushed to us, on API_LISTEN_ADDR
	Puller    Puller    // requests fetched from the system
	Deliverer Deliverer // outcomes reported back
	// OnBy names the setting that turned the door on, for the errors of the settings that
	// the door needs beside it (API_LISTEN_ADDR).
	OnBy string
}

// Door is a connector that the privacy request system pushes requests to.
type Door interface {
	// Routes are its handlers, by net/http.ServeMux pattern ("POST /v1/acme"). Every handler
	// authenticates before it reads the body, stores what it takes through in, and answers
	// every refusal naming the field at fault.
	Routes(in Intake, log *slog.Logger) map[string]http.Handler
}

// Puller is a connector that fetches requests from the privacy request system. One replica at
// a time pulls, every PullInterval.
type Puller interface {
	PullInterval() time.Duration
	// Pull takes in everything pending at the system through in.
	Pull(ctx context.Context, in Intake, log *slog.Logger) error
}

// Deliverer reports outcomes back. Deliver never logs, and its Delivery's error holds no
// credential, no URL query and no external_user_id.
type Deliverer interface {
	Deliver(ctx context.Context, r Report) Delivery
}

// Paced is a Deliverer whose receiver publishes a rate limit: its reports are sent no faster.
type Paced interface {
	Pace() (limit rate.Limit, burst int)
}

// Request is one erasure request as a connector hands it in.
type Request struct {
	// ID is the system's own id of the request; the request_ref is the connector's RefPrefix
	// followed by it.
	ID             string
	ExternalUserID string
	DueAt          time.Time // zero: received + the default deadline
	// IDField and UserField name the fields of the system's wire that ID and ExternalUserID
	// came from ("metadata.uid"), for the FieldError of a refused request.
	IDField, UserField string
	// Reports are the reports to write with the request, delivered once it finishes.
	Reports []NewReport
	// Several: the system may send several people under one ID, each a request of its own
	// (Transcend lists one item per identifier of a request, each with its own nonce). The first
	// is stored under ID, the others under ID#2, ID#3, ... up to ID#MaxPeople: each takes the
	// first that is free or already holds that person, so that a repeat finds its own. Without
	// it, another person under a stored ID is a Conflict.
	Several bool
}

// MaxPeople bounds the people of one Several request.
const MaxPeople = 16

// NewReport is one report to write beside a new request.
type NewReport struct {
	// Lane is the receiver, where a connector reports to many (one callback host each): each
	// lane is delivered apart, so that one hung receiver holds back only its own reports. ""
	// for the connector's one receiver.
	Lane string
	// Credentials is what the delivery needs, in the connector's own JSON object: kept until the
	// report ends, never shown. A receiver that names the person keeps the raw id here, under
	// IdentifierCredential, rather than reading it from the request, which is pseudonymised
	// IDENTIFIER_RETENTION after it finished whatever its reports do.
	Credentials []byte
	// AtIntake makes the report deliverable as soon as the request is stored, to tell the
	// receiver that it was taken (a status such as "in progress"), rather than once the request
	// finishes. The request's other reports of this connector wait until it is delivered or has
	// failed, so that the receiver never hears of the intake after the outcome.
	AtIntake bool
	// Hold keeps the report back until this long after intake, for a receiver that cannot take
	// the outcome straight after it handed the request over (Report.NotBefore).
	Hold time.Duration
	// Renewed: a repeat of the request that brings this report again replaces the stored one (a
	// sender that issues a new credential each time it retries: Fides' reply-to-token), with a
	// fresh hold and count of attempts. An undelivered report goes with the new credentials; a
	// delivered or failed one is sent again once the request has finished, since the sender
	// asking again means it still waits. A delivery in flight is left to end.
	Renewed bool
}

// IdentifierCredential is the member of a report's Credentials that holds personal data: the
// raw id, for a receiver that names the person. It is deleted when the report fails or gives
// up (REPORT_MAX_AGE); the other members stay for `reports requeue` until the report is
// delivered, when every credential is deleted. The queue knows it by the same name
// (queue.IdentifierCredential).
const IdentifierCredential = "identifier"

// Admission is what intake did with one Request.
type Admission int

const (
	Inserted  Admission = iota + 1 // stored; it will be carried out
	Duplicate                      // the same request was stored before; nothing changed
	Conflict                       // its ref was used before by a request for another person
	Refused                        // not stored; Err says which field is at fault
)

// Admitted is what became of one Request.
type Admitted struct {
	Admission Admission
	Err       *FieldError // Refused only
	// Record is the stored request (Inserted, Duplicate), as its status endpoint shows it.
	Record Record
}

// Intake stores requests for a connector: the binary gives each connector one, bound to its
// name and prefix, so that a connector needs no database of its own.
type Intake interface {
	// Submit stores reqs idempotently, each alone: a refused one never stops its neighbours. The
	// error is for failures that are not about one request (the database is away), after which
	// nothing can be assumed and the sender should try again.
	Submit(ctx context.Context, reqs ...Request) ([]Admitted, error)
	// Lookup reads the request of this connector with the system's id, or ErrNotFound.
	Lookup(ctx context.Context, id string) (Record, error)
	// Refused says that the door refused a request before or at intake, for one of the
	// Refusal reasons, naming the field at fault where one is ("" otherwise): every refusal is
	// logged (without ids) and counted by reason, so that a door refusing most of its traffic
	// (a typo in a setting, a sender misconfigured) is seen.
	Refused(reason Refusal, field string)
	// Denied says that the door answered the system's request id with a final denial, without
	// carrying it out (Ketch's denied/insufficient_identification): besides what Refused does,
	// it keeps a record of the request and the reason, for the operator and the auditor
	// (`evidence --ref`), EVIDENCE_RETENTION long. The error is the database's; the answer may
	// go out regardless, since the sender will ask again.
	Denied(ctx context.Context, id string, reason Refusal, field string) error
}

// Refusal is why a door refused a request: a metric's label, so a small fixed set.
type Refusal string

const (
	RefusedUnauthenticated Refusal = "unauthenticated" // a missing or wrong credential
	RefusedTooLarge        Refusal = "too_large"       // a body over MaxBody
	RefusedNotJSON         Refusal = "not_json"        // a body that says it is not JSON
	RefusedInvalid         Refusal = "invalid"         // a field the wire or intake refuses
	RefusedConflict        Refusal = "conflict"        // an id already used for another person
	// RefusedUnidentified: the request names no person the connector can erase (no identity in
	// the space its settings name). Often a setting's typo: most of a door's traffic.
	RefusedUnidentified Refusal = "unidentified"
)

// Refusals are every Refusal, for the metric's series.
var Refusals = []Refusal{RefusedUnauthenticated, RefusedTooLarge, RefusedNotJSON, RefusedInvalid, RefusedConflict, RefusedUnidentified}

// ErrNotFound is Lookup's answer for an id that no request has.
var ErrNotFound = fmt.Errorf("no request has this id")

// FieldError is a request refused for one field, named as the sender's wire names it.
type FieldError struct {
	Field  string // "request_ref", "metadata.uid"; "" when no single field is at fault
	Reason string // what is wrong, without the field's value
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// Record is a stored request as a status endpoint shows it, and `evidence --json` exports it:
// no external_user_id.
type Record struct {
	ID            int64          `json:"-"`
	RequestRef    string         `json:"request_ref"`
	Status        string         `json:"status"`
	Outcome       string         `json:"outcome,omitempty"`
	Attempts      int            `json:"attempts"`
	ReceivedAt    time.Time      `json:"received_at"`
	DueAt         time.Time      `json:"due_at"`
	CompletedAt   *time.Time     `json:"completed_at"`
	LastErrorCode string         `json:"last_error_code,omitempty"`
	LastError     string         `json:"last_error,omitempty"`
	Calls         []CallRecord   `json:"calls"`
	Reports       []ReportRecord `json:"reports"`
}

// Finished tells whether the request has its outcome.
func (r Record) Finished() bool { return r.CompletedAt != nil }

// CallRecord is one call to Knot made for a request.
type CallRecord struct {
	Attempt    int       `json:"attempt"`
	Worker     string    `json:"worker"`
	StartedAt  time.Time `json:"started_at"`
	DurationMS int64     `json:"duration_ms"`
	HTTPStatus *int      `json:"http_status"`
	ErrorCode  string    `json:"error_code,omitempty"`
	Result     string    `json:"result"`
}

// ReportRecord is one report of a request, without its credentials.
type ReportRecord struct {
	Connector   string     `json:"connector"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	DeliveredAt *time.Time `json:"delivered_at"`
	LastResult  string     `json:"last_result,omitempty"`
	HTTPStatus  *int       `json:"http_status,omitempty"`
}

// Report is one claimed report, as a Deliverer sends it.
type Report struct {
	ID          int64 // unique among reports; the same on every attempt
	Target      int   // which of the request's receivers (the order of its NewReports)
	Attempts    int   // earlier attempts that counted
	Credentials []byte

	RequestID  int64
	RequestRef string
	// ExternalUserID is the request's raw id while it keeps it, for a receiver that names the
	// person; "" once the request is pseudonymised (IDENTIFIER_RETENTION). Never logged.
	ExternalUserID string
	// Outcome is deleted, not_found, rejected, invalid or exhausted; "" while the request has
	// not finished (an AtIntake report).
	Outcome     string
	ErrorCode   string    // Knot's error_code of a failed request
	CompletedAt time.Time // zero while the request has not finished
	// AtIntake: this is the report the request's NewReport asked for at intake.
	AtIntake bool
	// NotBefore is the end of the report's Hold: zero when it has none. The queue delivers no
	// report sooner; a deliverer may still be handed one earlier by a release that did not
	// know holds, during a rolling update.
	NotBefore time.Time
}

// String leaves out what a log must not hold.
func (r Report) String() string {
	return fmt.Sprintf("connector.Report{ID:%d RequestID:%d RequestRef:%q Outcome:%s}", r.ID, r.RequestID, r.RequestRef, r.Outcome)
}

// GoString is String, for %#v.
func (r Report) GoString() string { return r.String() }

// LogValue is what slog shows of a Report.
func (r Report) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("report_id", r.ID), slog.Int64("request_id", r.RequestID), slog.String("request_ref", r.RequestRef))
}

// Registry holds the connectors the binary registers, in order.
type Registry struct{ list []Connector }

// NewRegistry registers connectors; two of one name, door or prefix are a programming error.
func NewRegistry(cs ...Connector) *Registry {
	r := &Registry{}
	for _, c := range cs {
		in := c.Info()
		for _, o := range r.list {
			oi := o.Info()
			if oi.Name == in.Name || oi.DoorName() == in.DoorName() || (in.RefPrefix != "" && oi.RefPrefix == in.RefPrefix) {
				panic("connector: " + in.Name + " registered twice")
			}
		}
		r.list = append(r.list, c)
	}
	return r
}

// All returns the registered connectors.
func (r *Registry) All() []Connector { return slices.Clone(r.list) }

// Names returns the registered connectors' names.
func (r *Registry) Names() []string {
	out := make([]string, len(r.list))
	for i, c := range r.list {
		out[i] = c.Info().Name
	}
	return out
}

// Lookup returns the connector of this name.
func (r *Registry) Lookup(name string) (Info, bool) {
	for _, c := range r.list {
		if c.Info().Name == name {
			return c.Info(), true
		}
	}
	return Info{}, false
}

// ByRef returns the connector whose prefix starts ref.
func (r *Registry) ByRef(ref string) (Info, bool) {
	for _, c := range r.list {
		if p := c.Info().RefPrefix; p != "" && strings.HasPrefix(ref, p) {
			return c.Info(), true
		}
	}
	return Info{}, false
}

// Prefixes returns every registered ref prefix.
func (r *Registry) Prefixes() []string {
	var out []string
	for _, c := range r.list {
		if p := c.Info().RefPrefix; p != "" {
			out = append(out, p)
		}
	}
	return out
}
