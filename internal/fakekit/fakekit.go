// Package fakekit holds what the project's fakes of outside services share, as httptest sits
// beside net/http: the faults they inject and how one draw picks among them, strict JSON
// decoding, the admin endpoints under /_fake/, and the serving and graceful stop of the
// cmd/*fake binaries. Each fake keeps only its vendor's wire.
package fakekit

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	randv2 "math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"250ms\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Rates are the shares, in [0, 1], of calls that get each kind of random fault, by kind: what
// a fake's Stats.Faulted counts it as ("rate_limit"). A kind's JSON field is kind+"_rate".
type Rates map[string]float64

// RatesOf reads the rates of a fake's faults struct: each float64 field whose JSON name ends in
// _rate, by kind.
func RatesOf(faults any) Rates {
	rates := Rates{}
	v := reflect.ValueOf(faults)
	for i := range v.NumField() {
		kind, isRate := strings.CutSuffix(jsonName(v.Type().Field(i)), "_rate")
		if isRate && v.Field(i).Kind() == reflect.Float64 {
			rates[kind] = v.Field(i).Float()
		}
	}
	return rates
}

// Validate reports, naming the JSON field, a rate of a fake's faults struct outside [0, 1], rates
// that add up above 1 (one draw picks among them: they are shares of the same calls), or a
// negative Duration. door ("pull") prefixes the names for a fake whose doors have faults of
// their own.
func Validate(door string, faults any) error {
	dot, colon := "", ""
	if door != "" {
		dot, colon = door+".", door+": "
	}
	rates, sum := RatesOf(faults), 0.0
	for _, kind := range slices.Sorted(maps.Keys(rates)) {
		if r := rates[kind]; math.IsNaN(r) || r < 0 || r > 1 {
			return fmt.Errorf("%s%s_rate must be between 0 and 1, got %v", dot, kind, r)
		}
		sum += rates[kind]
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("%sfault rates add up to %v; they are shares of the same calls and must not exceed 1", colon, sum)
	}
	v := reflect.ValueOf(faults)
	for i := range v.NumField() {
		if d, ok := v.Field(i).Interface().(Duration); ok && d < 0 {
			return fmt.Errorf("%s%s must not be negative, got %v", dot, jsonName(v.Type().Field(i)), d)
		}
	}
	return nil
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}

// Roll maps a uniform draw u in [0,1) to the kind of fault it falls on, or "" for none. Each
// kind takes a slice of [0,1) as wide as its rate, in the order of their names.
func Roll(rates Rates, u float64) string {
	for _, kind := range slices.Sorted(maps.Keys(rates)) {
		if r := rates[kind]; r > 0 && u < r {
			return kind
		}
		u -= max(rates[kind], 0)
	}
	return ""
}

// Draw picks the random fault of one call from a fake's faults struct, or "" for none.
func Draw(faults any) string { return Roll(RatesOf(faults), randv2.Float64()) }

// Snapshot returns a copy of a fake's stats whose maps are its own, for a reader outside the
// fake's lock.
func Snapshot[S any](st S) S {
	v := reflect.ValueOf(&st).Elem()
	for i := range v.NumField() {
		if f := v.Field(i); f.Kind() == reflect.Map && !f.IsNil() {
			c := reflect.MakeMapWithSize(f.Type(), f.Len())
			for it := f.MapRange(); it.Next(); {
				c.SetMapIndex(it.Key(), it.Value())
			}
			f.Set(c)
		}
	}
	return st
}

// Latency is base plus a uniform 0..jitter.
func Latency(base, jitter Duration) time.Duration {
	d := time.Duration(base)
	if j := time.Duration(jitter); j > 0 {
		d += randv2.N(j + 1)
	}
	return d
}

// RetryAfter sets the Retry-After header of a 429 to d in whole seconds, rounded up and at
// least 1, and returns them.
func RetryAfter(w http.ResponseWriter, d Duration) int64 {
	secs := max(int64(math.Ceil(time.Duration(d).Seconds())), 1)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	return secs
}

// Sleep waits d, or until the client goes away (then it returns false).
func Sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	select {
	case <-time.After(d):
		return true
	case <-r.Context().Done():
		return false
	}
}

// Hang never answers: it waits until the client goes away or the server's base context ends.
// It reads the body first: net/http notices a closed connection only once the handler has
// consumed the body.
func Hang(r *http.Request) {
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	<-r.Context().Done()
}

// Abort ends a call without an answer. Returning from the handler instead would send an empty
// 200, and a hang released by the server's shutdown would count as delivered.
func Abort() { panic(http.ErrAbortHandler) }

// Span widens [first, last] to hold t; concurrent calls take a fake's lock out of order.
func Span(first, last, t time.Time) (time.Time, time.Time) {
	if first.IsZero() || t.Before(first) {
		first = t
	}
	if t.After(last) {
		last = t
	}
	return first, last
}

// NewUUID returns a random UUIDv4.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// WriteJSON answers status with body as JSON.
func WriteJSON(w http.ResponseWriter, status int, body any) {
	b, err := json.Marshal(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// maxAdminBody bounds what the admin endpoints read.
const maxAdminBody = 64 << 10

// DecodeStrict reads one JSON value from body into v (a pointer to a struct), refusing unknown
// fields and trailing data: a misspelt fault must not be silently ignored. Errors name the field
// at fault, or say "body".
func DecodeStrict(body io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(body, maxAdminBody))
	if err != nil {
		return fmt.Errorf("body: %v", err)
	}
	return decodeStrict(b, v)
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		return errors.New("body: trailing data after the JSON object")
	}
	if err == nil {
		return nil
	}
	// A value's own decoder (a Duration's) cannot say which field it was: try them one by one.
	var fields map[string]json.RawMessage
	if json.Unmarshal(b, &fields) == nil {
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
			d := json.NewDecoder(bytes.NewReader(one))
			d.DisallowUnknownFields()
			if ferr := d.Decode(reflect.New(reflect.TypeOf(v).Elem()).Interface()); ferr != nil {
				return fmt.Errorf("%s: %v", k, ferr)
			}
		}
	}
	return fmt.Errorf("body: %v", err)
}

// DecodeFaults reads a PUT /_fake/faults body strictly into f. Wherever the faults have an
// outage_until, "outage_for":"30s" may stand instead: the outage then ends 30 s after now.
func DecodeFaults(body io.Reader, now time.Time, f any) error {
	b, err := io.ReadAll(io.LimitReader(body, maxAdminBody))
	if err != nil {
		return fmt.Errorf("body: %v", err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil { // refuses trailing data too
		return decodeStrict(b, f)
	}
	if err := outageFor(v, "", now); err != nil {
		return err
	}
	b, _ = json.Marshal(v)
	return decodeStrict(b, f)
}

// outageFor turns each "outage_for" among the objects of v into the "outage_until" it means.
func outageFor(v any, path string, now time.Time) error {
	m, _ := v.(map[string]any)
	for k, sub := range m {
		if err := outageFor(sub, path+k+".", now); err != nil {
			return err
		}
	}
	raw, ok := m["outage_for"]
	if !ok {
		return nil
	}
	s, isString := raw.(string)
	d, err := time.ParseDuration(s)
	switch {
	case !isString:
		return fmt.Errorf("%soutage_for: duration must be a string like \"30s\"", path)
	case err != nil:
		return fmt.Errorf("%soutage_for: %v", path, err)
	case d < 0:
		return fmt.Errorf("%soutage_for must not be negative", path)
	}
	delete(m, "outage_for")
	m["outage_until"] = now.Add(d)
	return nil
}
