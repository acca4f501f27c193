// Package settings reads a command's settings: each from its flag, else from the environment,
// else from its default, converted once at start-up with an error that names the setting.
// Secrets have no flag (every user of a machine can read a process's arguments) and come from
// the environment or from the file their companion NAME_FILE names. The binary and every
// connector declare their settings through one Set, so that one rule holds in one place.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set is one command's settings: each is read from its flag, else from the environment,
// else from its default, and converted once at start-up with an error naming the setting.
type Set struct {
	command string
	fs      *flag.FlagSet
	getenv  func(string) string
	stdout  io.Writer // where --help goes
	list    []*Setting
	extra   []string // flags that are not settings, for --help
	operand string   // what follows the flags in the usage line, e.g. "[FILE]"
	err     error    // the first conversion error
}

// Setting is one declared setting; read it with the Set's readers once the Set is parsed.
type Setting struct {
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
	file     *Setting // the companion NAME_FILE of a secret
	fromFile bool
}

// New returns the settings of the command `erasure-worker command`, read from getenv, with
// --help printed to stdout.
func New(command string, getenv func(string) string, stdout io.Writer) *Set {
	s := &Set{command: command, getenv: getenv, stdout: stdout, fs: flag.NewFlagSet(command, flag.ContinueOnError)}
	s.fs.SetOutput(io.Discard)
	return s
}

// Flags is the command's flag set, for flags that are not settings (document them with
// FlagExtra).
func (s *Set) Flags() *flag.FlagSet { return s.fs }

// SetOperand sets what follows the flags in the usage line, e.g. " [FILE]".
func (s *Set) SetOperand(o string) { s.operand = o }

// Err is the first error met while reading the settings.
func (s *Set) Err() error { return s.err }

// SetErr records err as the settings' error unless one is recorded already: for a check
// whose error names its settings itself.
func (s *Set) SetErr(err error) {
	if s.err == nil {
		s.err = err
	}
}

// Name is the setting's environment name.
func (st *Setting) Name() string { return st.env }

// Waive makes a required setting optional, for a run in which it is not needed (a role that
// does not use it); call it after Parse and before reading the setting.
func (s *Set) Waive(st *Setting) { st.required = false }

// Command is the command these settings are of, as --help names it.
func (s *Set) Command() string { return s.command }

// File is the companion NAME_FILE of a secret; nil for other settings.
func (st *Setting) File() *Setting { return st.file }

// Raw is the setting's value as given, before any conversion; "" when not set and no default.
func (st *Setting) Raw() string { return st.raw }

// Add declares a setting; its flag is the environment name in lower kebab case.
func (s *Set) Add(env, def, help string) *Setting {
	st := &Setting{env: env, flag: strings.ReplaceAll(strings.ToLower(env), "_", "-"), def: def, help: help}
	s.fs.Func(st.flag, help, func(v string) error { st.raw, st.fromFlag = v, true; return nil })
	s.list = append(s.list, st)
	return st
}

func (s *Set) Require(env, help string) *Setting {
	st := s.Add(env, "", help)
	st.required = true
	return st
}

// Secret declares a setting read only from the environment, or from the file named by its
// companion NAME_FILE (whose flag, a path, is allowed); fileHelp documents NAME_FILE.
func (s *Set) Secret(env, help, fileHelp string) *Setting {
	st := &Setting{env: env, flag: strings.ReplaceAll(strings.ToLower(env), "_", "-"), help: help, secret: true}
	s.list = append(s.list, st)
	st.file = s.Add(env+"_FILE", "", fileHelp)
	return st
}

func (s *Set) RequireSecret(env, help, fileHelp string) *Setting {
	st := s.Secret(env, help, fileHelp)
	st.required = true
	return st
}

// RequireDatabaseURL declares DATABASE_URL, which every command needs; read it with databaseURL.
func (s *Set) RequireDatabaseURL() *Setting {
	return s.RequireSecret("DATABASE_URL", databaseURLHelp,
		"file holding the PostgreSQL connection string, e.g. a mounted Kubernetes Secret; a final newline is not part of it")
}

const databaseURLHelp = "PostgreSQL connection string (postgres://user:pass@host:5432/db), to the database or through a pooler, in transaction mode too; connect_timeout=N (seconds) replaces the 5s connect timeout"

// Parse reads the flags, then the environment, and returns the remaining arguments. It reports
// ErrHelp after printing --help.
func (s *Set) Parse(args []string) ([]string, error) {
	// Refused before parsing, wherever it stands: after "--" or a positional argument the flag
	// package would take it for an operand and might repeat it in an error.
	if st := s.secretFlagIn(args); st != nil {
		return nil, fmt.Errorf("%s: --%s is refused: a flag's value is visible to every user of the machine (ps); set %s or %s instead",
			s.command, st.flag, st.env, st.file.env)
	}
	if err := s.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.Usage(s.stdout)
			return nil, ErrHelp
		}
		return nil, fmt.Errorf("%s: %v (see 'erasure-worker %s --help')", s.command, err, s.command)
	}
	for _, st := range s.list {
		if st.fromFlag {
			continue
		}
		if v, ok := lookup(s.getenv, st.env); ok {
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
func (s *Set) secretFlagIn(args []string) *Setting {
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
func (s *Set) readSecretFile(st *Setting) {
	path := strings.TrimSpace(st.file.raw)
	switch {
	case path == "":
	case st.raw != "":
		s.Fail(st.file, "%s and %s are both set: set only one of them", st.env, st.file.env)
	default:
		v, err := ReadSecretFile(path)
		if err != nil {
			s.Fail(st.file, "%v", err)
			return
		}
		st.raw, st.fromFile = v, true
	}
}

// ErrHelp is Parse's answer once it has printed --help.
var ErrHelp = errors.New("help shown")

func lookup(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func (s *Set) Usage(w io.Writer) {
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

// FlagExtra documents a flag that is not a setting (no environment variable).
func (s *Set) FlagExtra(name, help string) {
	s.extra = append(s.extra, fmt.Sprintf("  --%s\n      %s", name, help))
}

func (s *Set) Fail(st *Setting, format string, args ...any) {
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

func (s *Set) String(st *Setting) string {
	v := strings.TrimSpace(st.raw)
	s.checkRequired(st, v)
	return v
}

// Verbatim reads a secret as given, spaces and all.
func (s *Set) Verbatim(st *Setting) string {
	s.checkRequired(st, st.raw)
	return st.raw
}

func (s *Set) checkRequired(st *Setting, v string) {
	switch {
	case !st.required || v != "":
	case st.secret:
		s.Fail(st, "is required (or %s): %s", st.file.env, st.help)
	default:
		s.Fail(st, "is required: %s", st.help)
	}
}

func (s *Set) Duration(st *Setting) time.Duration {
	v := s.String(st)
	d, err := time.ParseDuration(v)
	if err != nil {
		s.Fail(st, "%q is not a duration: write it like 30s, 5m or 1h", v)
		return 0
	}
	if d <= 0 {
		s.Fail(st, "must be above zero, got %s", v)
	}
	return d
}

func (s *Set) Int(st *Setting, min int) int {
	v := s.String(st)
	n, err := strconv.Atoi(v)
	if err != nil {
		s.Fail(st, "%q is not a whole number", v)
		return 0
	}
	if n < min {
		s.Fail(st, "must be at least %d, got %d", min, n)
	}
	return n
}

// AutoInt reads CONCURRENCY: auto (0 to the worker) or a whole number of at least 1.
func (s *Set) AutoInt(st *Setting) int {
	if strings.EqualFold(strings.TrimSpace(st.raw), "auto") {
		return 0
	}
	v := s.String(st)
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		s.Fail(st, "%q is not auto or a whole number of at least 1", v)
		return 0
	}
	return n
}

func (s *Set) Number(st *Setting) float64 {
	v := s.String(st)
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f != f {
		s.Fail(st, "%q is not a number above zero", v)
		return 0
	}
	return f
}

func (s *Set) Bool(st *Setting) bool {
	v := s.String(st)
	b, err := strconv.ParseBool(v)
	if err != nil {
		s.Fail(st, "%q is not true or false", v)
	}
	return b
}

func (s *Set) OneOf(st *Setting, allowed ...string) string {
	v := strings.ToLower(s.String(st))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	s.Fail(st, "%q is not one of %s", st.raw, strings.Join(allowed, ", "))
	return ""
}

// DatabaseURL checks the shape of a connection string without ever repeating it: it may hold
// a password.
func (s *Set) DatabaseURL(st *Setting) string {
	v := s.String(st)
	if v == "" {
		return ""
	}
	if strings.HasPrefix(v, "postgres://") || strings.HasPrefix(v, "postgresql://") {
		if _, err := url.Parse(v); err != nil {
			s.Fail(st, "is not a valid URL (its value is not shown: it may hold a password)")
		}
	}
	return v
}

// ReadSecretFile reads a secret file as Kubernetes mounts it; one trailing newline is not part
// of the secret.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the secret file: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", errors.New("the secret file is empty")
	}
	return s, nil
}

// Period reads a retention period in whole days (30d) or as a Go duration (36h), above zero and at most
// maxDays.
func (s *Set) Period(st *Setting, maxDays int) time.Duration {
	v := s.String(st)
	bad := func() time.Duration {
		s.Fail(st, "%q is not a retention period: write whole days like 30d, or a Go duration like 36h", v)
		return 0
	}
	if n, ok := strings.CutSuffix(v, "d"); ok {
		d, err := strconv.Atoi(n)
		switch {
		case err != nil:
			return bad()
		case d < 1:
			s.Fail(st, "must be above zero, got %s", v)
			return 0
		case d > maxDays:
			s.Fail(st, "must be at most %dd, got %s", maxDays, v)
			return 0
		}
		return time.Duration(d) * 24 * time.Hour
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return bad()
	}
	if d <= 0 {
		s.Fail(st, "must be above zero, got %s", v)
	}
	return d
}

// ParseTimeOrDate reads an RFC 3339 time or a date, which is midnight UTC.
func ParseTimeOrDate(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}
