package worker_test

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// testLogger sends the worker's logs to the test's log, shown when a test fails or with -v.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
