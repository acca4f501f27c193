package console

import (
	"fmt"
	"strings"

	"github.com/erasure-worker/erasure-worker/queue"
)

// chart is the overview's daily figures drawn as an inline SVG on the server: three lines told
// apart by colour and by dash pattern, and the same figures as a table beside it.
type chart struct {
	Width, Height     int
	Left, Top, Bottom int // the plot's edges
	Right             int
	Max               int64
	Received          string // polyline points
	Finished          string
	Due               string
	Days              []queue.Day
	First, Last       string // the first and last day, for the axis
	Desc              string
	TotalReceived     int64
	TotalFinished     int64
	TotalDue          int64
}

func newChart(days []queue.Day) chart {
	c := chart{Width: 640, Height: 240, Left: 48, Right: 630, Top: 12, Bottom: 210, Days: days}
	for _, d := range days {
		c.Max = max(c.Max, d.Received, d.Finished, d.Due)
		c.TotalReceived += d.Received
		c.TotalFinished += d.Finished
		c.TotalDue += d.Due
	}
	if c.Max == 0 {
		c.Max = 1
	}
	points := func(v func(queue.Day) int64) string {
		var b strings.Builder
		for i, d := range days {
			x := c.Left
			if len(days) > 1 {
				x += i * (c.Right - c.Left) / (len(days) - 1)
			}
			y := c.Bottom - int(v(d)*int64(c.Bottom-c.Top)/c.Max)
			fmt.Fprintf(&b, "%d,%d ", x, y)
		}
		return strings.TrimSpace(b.String())
	}
	c.Received = points(func(d queue.Day) int64 { return d.Received })
	c.Finished = points(func(d queue.Day) int64 { return d.Finished })
	c.Due = points(func(d queue.Day) int64 { return d.Due })
	if len(days) > 0 {
		c.First, c.Last = days[0].Date.Format("2006-01-02"), days[len(days)-1].Date.Format("2006-01-02")
	}
	c.Desc = fmt.Sprintf("Requests per day (UTC) from %s to %s: %d received, %d finished, %d due in all; the busiest day had %d. The table below gives every day's figures.",
		c.First, c.Last, c.TotalReceived, c.TotalFinished, c.TotalDue, c.Max)
	return c
}
