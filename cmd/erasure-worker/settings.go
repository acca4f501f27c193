package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// settingSet is one command's settings: each is read from its flag, else from the environment,
// else from its default, and converted once at start-up with an error naming the setting.
type settingSet struct {
	command string
	fs      *flag.FlagSet
	env     *environment
	list    []*setting
	extra   []string // flags that are not settings, for --help
	operand string   // what follows the flags in the usage line, e.g. "[FILE]"
	err     error    // the first conversion error
}

type setting struct {
	env      string // DATABASE_URL
	flag     string // database-url
	def      string
	help     string
	required bool
	raw      string
	fromFlag bool
	// A secret has no flag: every user of the machine can read a process's arguments (ps).
	// It comes from the environment, or from the file its companion NAME_FILE names.
	secret   bool
	file     *setting // the companion NAME_FILE of a secret
	fromFile bool
}

func newSettingSet(command string, env *environment) *settingSet {
	s := &settingSet{command: command, env: env, fs: flag.NewFlagSet(command, flag.ContinueOnError)}
	s.fs.SetOutput(io.Discard)
	return s
}

// add declares a setting; its flag is the environment name in lower kebab case.
func (s *settingSet) add(env, def, help string) *setting {
	st := &setting{env: env, flag: strings.ReplaceAll(strings.ToLower(env), "_", "-"), def: def, help: help}
	s.fs.Func(st.flag, help, func(v string) error { st.raw, st.fromFlag = v, true; return nil })
	s.list = append(s.list, st)
	return st
}

func (s *settingSet) require(env, help string) *setting {
	st := s.add(env, "", help)
	st.required = true
	return st
}

// secret declares a setting read only from the environment, or from the file named by its
// companion NAME_FILE (whose flag, a path, is allowed); fileHelp documents NAME_FILE.
func (s *settingSet) secret(env, help, fileHelp string) *setting {
	st := &setting{env: env, flag: strings.ReplaceAll(strings.ToLower(env), "_", "-"), help: help, secret: true}
	s.list = append(s.list, st)
	st.file = s.add(env+"_FILE", "", fileHelp)
	return st
}

func (s *settingSet) requireSecret(env, help, fileHelp string) *setting {
	st := s.secret(env, help, fileHelp)
	st.required = true
	return st
}

// requireDatabaseURL declares DATABASE_URL, which every command needs; read it with databaseURL.
func (s *settingSet) requireDatabaseURL() *setting {
	return s.requireSecret("DATABASE_URL", databaseURLHelp,
		"file holding the PostgreSQL connection string, e.g. a mounted Kubernetes Secret; a final newline is not part of it")
}

const databaseURLHelp = "PostgreSQL connection string (postgres://user:pass@host:5432/db), to the database or through a pooler, in transaction mode too; connect_timeout=N (seconds) replaces the 5s connect timeout"

// parse reads the flags, then the environment, and returns the remaining arguments. It reports
// errHelp after printing --help.
func (s *settingSet) parse(args []string) ([]string, error) {
	// Refused before parsing, wherever it stands: after "--" or a positional argument the flag
	// package would take it for an operand and might repeat it in an error.
	if st := s.secretFlagIn(args); st != nil {
		return nil, fmt.Errorf("%s: --%s is refused: a flag's value is visible to every user of the machine (ps); set %s or %s instead",
			s.command, st.flag, st.env, st.file.env)
	}
	if err := s.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.usage(s.env.stdout)
			return nil, errHelp
		}
		return nil, fmt.Errorf("%s: %v (see 'erasure-worker %s --help')", s.command, err, s.command)
	}
	for _, st := range s.list {
		if st.fromFlag {
			continue
		}
		if v, ok := lookup(s.env.getenv, st.env); ok {
			st.raw = v
		} else {
			st.raw = st.def
		}
	}
	for _, st := range s.list {
		if st.file != nil {
			s.readSecretFile(st)
		}
	}
	return s.fs.Args(), nil
}

// secretFlagIn returns the secret whose flag is among args (-name, --name, --name=value).
func (s *settingSet) secretFlagIn(args []string) *setting {
	for _, a := range args {
		name, ok := strings.CutPrefix(a, "-")
		if !ok {
			continue
		}
		name = strings.TrimPrefix(name, "-")
		name, _, _ = strings.Cut(name, "=")
		for _, st := range s.list {
			if st.secret && name == st.flag {
				return st
			}
		}
	}
	return nil
}

// readSecretFile takes a secret from its NAME_FILE when that is set.
func (s *settingSet) readSecretFile(st *setting) {
	path := strings.TrimSpace(st.file.raw)
	switch {
	case path == "":
	case st.raw != "":
		s.fail(st.file, "%s and %s are both set: set only one of them", st.env, st.file.env)
	default:
		v, err := readSecret(path)
		if err != nil {
			s.fail(st.file, "%v", err)
			return
		}
		st.raw, st.fromFile = v, true
	}
}

var errHelp = errors.New("help shown")

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func (s *settingSet) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: erasure-worker %s [flags]%s\n\nSettings (flag, or environment variable; a flag wins):\n", s.command, s.operand)
	secrets := false
	for _, st := range s.list {
		def := st.def
		switch {
		case st.required && st.secret:
			def = "required, or " + st.file.env
		case st.required:
			def = "required"
		case def == "":
			def = "not set"
		default:
			def = "default " + def
		}
		if st.secret {
			secrets = true
			fmt.Fprintf(w, "  %s (environment only; %s)\n      %s\n", st.env, def, st.help)
			continue
		}
		fmt.Fprintf(w, "  --%s, %s (%s)\n      %s\n", st.flag, st.env, def, st.help)
	}
	if secrets {
		fmt.Fprintln(w, "\nSecrets have no flag: a flag's value is visible to every user of the machine (ps).\nSet them in the environment, or name a file holding one in NAME_FILE.")
	}
	if len(s.extra) > 0 {
		fmt.Fprintln(w, "\nFlags:")
	}
	for _, e := range s.extra {
		fmt.Fprintln(w, e)
	}
}

// flagExtra documents a flag that is not a setting (no environment variable).
func (s *settingSet) flagExtra(name, help string) {
	s.extra = append(s.extra, fmt.Sprintf("  --%s\n      %s", name, help))
}

func (s *settingSet) fail(st *setting, format string, args ...any) {
	if s.err != nil {
		return
	}
	name := fmt.Sprintf("%s (--%s)", st.env, st.flag)
	switch {
	case st.fromFile:
		name = fmt.Sprintf("%s (read from %s)", st.env, st.file.env)
	case st.secret:
		name = st.env
	}
	s.err = fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
}

func (s *settingSet) str(st *setting) string {
	v := strings.TrimSpace(st.raw)
	s.checkRequired(st, v)
	return v
}

// verbatim reads a secret as given, spaces and all.
func (s *settingSet) verbatim(st *setting) string {
	s.checkRequired(st, st.raw)
	return st.raw
}

func (s *settingSet) checkRequired(st *setting, v string) {
	switch {
	case !st.required || v != "":
	case st.secret:
		s.fail(st, "is required (or %s): %s", st.file.env, st.help)
	default:
		s.fail(st, "is required: %s", st.help)
	}
}

func (s *settingSet) duration(st *setting) time.Duration {
	v := s.str(st)
	d, err := time.ParseDuration(v)
	if err != nil {
		s.fail(st, "%q is not a duration: write it like 30s, 5m or 1h", v)
		return 0
	}
	if d <= 0 {
		s.fail(st, "must be above zero, got %s", v)
	}
	return d
}

func (s *settingSet) integer(st *setting, min int) int {
	v := s.str(st)
	n, err := strconv.Atoi(v)
	if err != nil {
		s.fail(st, "%q is not a whole number", v)
		return 0
	}
	if n < min {
		s.fail(st, "must be at least %d, got %d", min, n)
	}
	return n
}

// concurrency reads CONCURRENCY: auto (0 to the worker) or a whole number of at least 1.
func (s *settingSet) concurrency(st *setting) int {
	if strings.EqualFold(strings.TrimSpace(st.raw), "auto") {
		return 0
	}
	v := s.str(st)
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		s.fail(st, "%q is not auto or a whole number of at least 1", v)
		return 0
	}
	return n
}

func (s *settingSet) number(st *setting) float64 {
	v := s.str(st)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f != f {
		s.fail(st, "%q is not a number above zero", v)
		return 0
	}
	return f
}

func (s *settingSet) boolean(st *setting) bool {
	v := s.str(st)
	b, err := strconv.ParseBool(v)
	if err != nil {
		s.fail(st, "%q is not true or false", v)
	}
	return b
}

func (s *settingSet) oneOf(st *setting, allowed ...string) string {
	v := strings.ToLower(s.str(st))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	s.fail(st, "%q is not one of %s", st.raw, strings.Join(allowed, ", "))
	return ""
}

// databaseURL checks the shape of a connection string without ever repeating it: it may hold
// a password.
func (s *settingSet) databaseURL(st *setting) string {
	v := s.str(st)
	if v == "" {
		return ""
	}
	if strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://") {
		if _, err := url.Parse(v); err != nil {
			s.fail(st, "is not a valid URL (its value is not shown: it may hold a password)")
		}
	}
	return v
}

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
