// Package fakekittest runs a cmd/*fake binary in-process for its tests, through the run or serve
// that fakekit.Main gives it, and reads the URL it prints as a script would.
package fakekittest

import (
	"bufio"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// Binary is a fake binary running in-process.
type Binary struct {
	// Base is the URL the binary printed it listens on.
	Base string
	// Stderr holds the binary's logs.
	Stderr *SyncBuffer
	name   string
	done   chan int
}

// Start runs the binary named name with run, in the background, and returns once it has printed
// "NAME listening on http://127.0.0.1:PORT".
func Start(t *testing.T, name string, run func(stdout, stderr io.Writer) int) *Binary {
	t.Helper()
	pr, pw := io.Pipe()
	b := &Binary{Stderr: &SyncBuffer{}, name: name, done: make(chan int, 1)}
	go func() {
		code := run(pw, b.Stderr)
		pw.Close()
		b.done <- code
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the listening line: %v; stderr:\n%s", err, b.Stderr)
	}
	prefix := name + " listening on "
	if !strings.HasPrefix(line, prefix+"http://127.0.0.1:") {
		t.Fatalf("first line = %q", line)
	}
	go io.Copy(io.Discard, pr) // nothing more is expected, but never block the server
	b.Base = strings.TrimSpace(strings.TrimPrefix(line, prefix))
	return b
}

// Wait returns the binary's exit code once it has stopped.
func (b *Binary) Wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-b.done:
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not stop", b.name)
		return -1
	}
}

// Env is a getenv that reads m.
func Env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// SyncBuffer collects what a binary writes from its own goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
