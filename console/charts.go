package console

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The chart's figures read the last 90 days of the primary key and two partial indexes over
// the last 60 days: seconds at ten million requests kept (4 to 10 s on one core of two while
// pages were read, in make bench), far too much for a page. They are computed off the request
// path, at the console's start and then at most every chartFresh when the overview is viewed;
// a page shows the latest figures with the time they were read, and never waits for a
// computation: until the first ends, it says so.
const (
	chartFresh   = 5 * time.Minute
	chartRetry   = 30 * time.Second // after a computation failed
	chartTimeout = 2 * time.Minute
)

type charts struct {
	queue  *queue.Queue
	now    func() time.Time
	logger *slog.Logger
	// base is cancelled by Close: a computation under way ends with it.
	base   context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	days     []queue.Day
	at       time.Time     // when days were read
	failedAt time.Time     // when the latest computation failed; zero after a success
	running  chan struct{} // closed when the computation under way ends; nil when none runs
}

// get returns the latest figures and when they were read, nil before the first computation
// ended, and starts a computation in the background when they are stale.
func (c *charts) get() ([]queue.Day, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refresh()
	return c.days, c.at
}

// refresh starts a computation unless one runs or the figures are fresh. c.mu is held.
func (c *charts) refresh() {
	now := c.now()
	fresh := c.days != nil && now.Sub(c.at) < chartFresh && now.UTC().Truncate(24*time.Hour).Equal(c.at.UTC().Truncate(24*time.Hour))
	retrying := !c.failedAt.IsZero() && now.Sub(c.failedAt) < chartRetry
	if c.running != nil || fresh || retrying {
		return
	}
	done := make(chan struct{})
	c.running = done
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(c.base, chartTimeout)
		defer cancel()
		began := c.now()
		days, err := c.queue.Daily(ctx, chartDays, began)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.running = nil
		if err != nil {
			c.failedAt = c.now()
			if c.base.Err() != nil {
				return // the console is closing
			}
			c.logger.Error("console: reading the chart's daily figures", "err", err)
			return
		}
		c.days, c.at, c.failedAt = days, began, time.Time{}
		c.logger.Debug("console: chart's daily figures read", "duration_ms", c.now().Sub(began).Milliseconds())
	}()
}

// close ends the computation under way, if any, and waits for it.
func (c *charts) close() {
	c.cancel()
	c.mu.Lock()
	done := c.running
	c.mu.Unlock()
	if done != nil {
		<-done
	}
}
