package ketchfake

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Faults are injected into the callbacks the fake serves. Rates are shares in [0, 1] of the
// events that pass the credential check; a faulted event is not recorded, so its retry counts.
type Faults struct {
	// ErrorRate is the share answered 500 with a Ketch Error (status "internal").
	ErrorRate float64 `json:"error_rate"`
	// RateLimitRate is the share answered 429 with Retry-After.
	RateLimitRate float64 `json:"rate_limit_rate"`
	// RetryAfter is sent on 429s, in whole seconds rounded up (at least 1).
	RetryAfter Duration `json:"retry_after"`
	// ConflictRate is the share answered 409 (status "conflict").
	ConflictRate float64 `json:"conflict_rate"`
	// HangRate is the share never answered: they block until the client goes away, and end
	// without an answer (not an empty 200) when the server shuts down.
	HangRate float64 `json:"hang_rate"`
	// Latency is added to every callback; LatencyJitter adds a uniform 0..jitter.
	Latency       Duration `json:"latency"`
	LatencyJitter Duration `json:"latency_jitter"`
	// OutageUntil: every callback answers 503 (status "unavailable") until this time.
	OutageUntil time.Time `json:"outage_until,omitzero"`
	// RejectCredentials: every callback answers 401, whatever its headers.
	RejectCredentials bool `json:"reject_credentials"`
	// RejectAfterFinal: an event after a final one is answered 409 instead of 204. Ketch
	// documents that it accepts no such event but not how it answers; either way it is counted.
	RejectAfterFinal bool `json:"reject_after_final"`
}

// Validate reports a rate outside [0, 1], rates that sum above 1, or a negative duration, naming
// the field.
func (f Faults) Validate() error {
	sum := 0.0
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"error_rate", f.ErrorRate}, {"rate_limit_rate", f.RateLimitRate},
		{"conflict_rate", f.ConflictRate}, {"hang_rate", f.HangRate},
	} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			return fmt.Errorf("%s must be between 0 and 1, got %v", r.name, r.v)
		}
		sum += r.v
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("fault rates add up to %v; they are shares of the same callbacks and must not exceed 1", sum)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"retry_after", f.RetryAfter}, {"latency", f.Latency}, {"latency_jitter", f.LatencyJitter}} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative, got %v", d.name, time.Duration(d.v))
		}
	}
	return nil
}

// roll maps a uniform draw u in [0,1) to a fault kind, or "" for none.
func (f Faults) roll(u float64) string {
	for _, k := range []struct {
		kind string
		rate float64
	}{
		{"hang", f.HangRate}, {"rate_limit", f.RateLimitRate}, {"error", f.ErrorRate}, {"conflict", f.ConflictRate},
	} {
		if k.rate > 0 && u < k.rate {
			return k.kind
		}
		u -= max(k.rate, 0)
	}
	return ""
}

func (f Faults) latency() time.Duration {
	d := time.Duration(f.Latency)
	if j := time.Duration(f.LatencyJitter); j > 0 {
		d += rand.N(j + 1)
	}
	return d
}

func (f Faults) retryAfterSeconds() int64 {
	secs := int64(math.Ceil(time.Duration(f.RetryAfter).Seconds()))
	return max(secs, 1)
}

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("250ms").
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

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
