package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/erasure-worker/erasure-worker/settings"
)

func newSettingSet(command string, env *environment) *settings.Set {
	return settings.New(command, env.getenv, env.stdout)
}

var errHelp = settings.ErrHelp

// logger builds the process logger: JSON for machines, text on a terminal.
func logger(level, format string, w io.Writer) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" || (format == "auto" && isTerminal(w)) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
