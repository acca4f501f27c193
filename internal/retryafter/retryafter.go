// Package retryafter reads the Retry-After header (RFC 9110, section 10.2.3), the one way for
// every client of this module: Knot's and each receiver of reports.
package retryafter

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Parse reads delta-seconds or an HTTP-date, as of now. Absent, malformed and past values give
// 0; the result is capped at limit. An HTTP-date has whole seconds, and its sender most likely
// cut the instant it meant down to them: a wait for a date is its whole seconds plus one, so
// that a client that waits it never comes back early.
func Parse(v string, now time.Time, limit time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange), err == nil && secs > uint64(limit/time.Second):
			return limit
		case err != nil:
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > limit:
		return limit
	}
	return min(d.Truncate(time.Second)+time.Second, limit)
}
