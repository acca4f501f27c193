package retryafter

import (
	"testing"
	"time"
)

// maxRetryAfter is Knot's cap, under which these cases were first written.
const maxRetryAfter = 24 * time.Hour

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"120", 2 * time.Minute},
		{" 5 ", 5 * time.Second},
		{"1.5", 0},
		{"5s", 0},
		{"-1", 0},
		{"86401", maxRetryAfter},
		{"Sat, 01 Mar 2025 12:00:30 GMT", 31 * time.Second},             // the sender cut its instant to the second
		{"Saturday, 01-Mar-25 12:01:00 GMT", time.Minute + time.Second}, // RFC 850
		{"Sat Mar  1 12:00:10 2025", 11 * time.Second},                  // ANSI C
		{"Sat, 01 Mar 2025 11:00:00 GMT", 0},
		{"Sat, 01 Mar 2035 11:00:00 GMT", maxRetryAfter},
		{"not a date", 0},
	}
	for _, tt := range tests {
		if got := Parse(tt.in, now, maxRetryAfter); got != tt.want {
			t.Errorf("Parse(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	// Sub-second "now" rounds up, so waiting RetryAfter is never early.
	if got := Parse("Sat, 01 Mar 2025 12:00:30 GMT", now.Add(300*time.Millisecond), maxRetryAfter); got != 30*time.Second {
		t.Errorf("rounding: got %v, want 30s", got)
	}
}
