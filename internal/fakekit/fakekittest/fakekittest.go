// Package fakekittest runs a cmd/*fake binary in-process for its tests, through the run or serve
// that fakekit.Main gives it, and reads the URL it prints as a script would.
package fakekittest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
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

// Terminate sends SIGTERM to the test process, as a person stopping the binary would; run takes
// it. The binary must then stop with exit code 0.
func (b *Binary) Terminate(t *testing.T) {
	t.Helper()
	p, _ := os.FindProcess(os.Getpid())
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("cannot signal self: %v", err)
	}
	if code := b.Wait(t); code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, b.Stderr)
	}
}

// TerminateWhileHung makes call in the background, waits until the binary counts it as a fault
// of kind (a hang), then stops the binary by SIGTERM: the call must end within 5 s, released by
// the shutdown rather than waited for. call returns what is wrong with how it ended, or "".
func (b *Binary) TerminateWhileHung(t *testing.T, kind string, call func() string) {
	t.Helper()
	ended := make(chan string, 1)
	go func() { ended <- call() }()
	b.AwaitFault(t, kind) // the call has reached the handler
	b.Terminate(t)
	select {
	case problem := <-ended:
		if problem != "" {
			t.Error(problem)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the hung call is still open 5s after shutdown")
	}
}

// AwaitFault waits, up to 5 s, until the binary's /_fake/stats counts a fault of kind.
func (b *Binary) AwaitFault(t *testing.T, kind string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		var st struct {
			Faulted map[string]int64 `json:"faulted"`
		}
		if Do(t, "GET", b.Base+"/_fake/stats", "", &st); st.Faulted[kind] > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s counted no %s fault within 5s", b.name, kind)
}

// Usage is one start of a binary that must not serve: its flags and environment, and what its
// error (or, for -h, its usage text) must say.
type Usage struct {
	Name    string
	Args    []string
	Env     map[string]string
	WantErr string
}

// CheckUsage starts the binary through serve once per case, on a free port, and checks that it
// exits 2 (0 for -h) without serving, that stderr says WantErr, that stdout is empty, and that
// stderr shows none of secrets.
func CheckUsage(t *testing.T, serve func(context.Context, []string, func(string) string, io.Writer, io.Writer) int, cases []Usage, secrets ...string) {
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			code := serve(context.Background(), append([]string{"-addr", "127.0.0.1:0"}, tc.Args...), Env(tc.Env), &stdout, &stderr)
			want := 2
			if slices.Contains(tc.Args, "-h") {
				want = 0
			}
			if code != want || !strings.Contains(stderr.String(), tc.WantErr) || stdout.Len() != 0 {
				t.Errorf("exit code %d (want %d), stderr %q (want it to say %q), stdout %q (want nothing)",
					code, want, stderr.String(), tc.WantErr, stdout.String())
			}
			for i, secret := range secrets {
				if strings.Contains(stderr.String(), secret) {
					t.Errorf("stderr shows secrets[%d]", i)
				}
			}
		})
	}
}

// Do calls url with method and body and decodes a JSON answer into out (unless out is nil); it
// returns the status.
func Do(t *testing.T, method, url, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
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
