//go:build chaos

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// A slow-body flood at the doors (issue 23): 8,000 connections, each the head of a POST
// /v1/erasure-requests with a wrong token and a Content-Length of 100 KiB whose body never comes,
// held up to 20 s, against one worker that serves the doors and carries requests out (ROLE=all,
// as the base Deployment runs it, under its GOMEMLIMIT). Throughout, valid requests are answered
// within a second and erasures go on; afterwards, the worker's peak RSS is under 160 MiB, well
// inside the base Deployment's 256 MiB limit. Each refusal closes its connection without waiting
// for the body. Measured with the refusal's connector.CloseAfter removed: no flood connection
// answered within the hold, 3,392 unable to connect, valid requests unanswered after 15 s; with
// it removed and API_MAX_CONNECTIONS at 100,000 as well, a peak RSS of 193 MiB (issue 23 saw
// 269 MiB before the fix).
//
// Not parallel: it runs alone, before the other scenarios, so that its latencies are the
// worker's and not the neighbours'.
func TestChaosFlood(t *testing.T) {
	const (
		flood       = 8000
		rampFor     = 2 * time.Second // the flood's connections are opened over this much time
		holdFor     = 20 * time.Second
		bodyLen     = 100 << 10 // below net/http's 256 KiB: unread, it would be read before the answer
		answerIn    = time.Second
		peakRSS     = 160 << 10 // kB, as /proc reports it
		rate        = 50        // RATE_LIMIT_RPS
		backlog     = 1300      // at the rate, it lasts a little beyond the flood
		validEvery  = 500 * time.Millisecond
		sampleEvery = 250 * time.Millisecond
	)
	chaosRaiseNoFile(t, flood+1000)
	r := newRig(t, withFake("-latency", "5ms"), withDoors(0, nil))
	r.workerBin = chaosPlainBinary(t) // the race detector's shadow memory would be measured too
	r.enqueue(t, "flood-backlog", backlog)
	w := r.startWorker(t, "worker", "ROLE=all", "GOMEMLIMIT=256MiB", fmt.Sprintf("RATE_LIMIT_RPS=%d", rate),
		"POLL_INTERVAL=200ms", "STATS_INTERVAL=1s")
	r.doors.waitAPI(t, 30*time.Second)
	pid := w.cmd.Process.Pid
	queuetest.WaitFor(t, 30*time.Second, "erasures under way", func() bool { return chaosSucceeded(t, r) > 0 })
	before := chaosProcStatus(t, pid, "VmHWM")

	// The flood, the valid requests and the erasures, side by side.
	began := time.Now()
	end := began.Add(holdFor)
	var flooders sync.WaitGroup
	results := make([]floodResult, flood)
	flooders.Go(func() {
		for i := range flood {
			time.Sleep(time.Until(began.Add(rampFor * time.Duration(i) / flood)))
			flooders.Go(func() { results[i] = floodConn(r.doors.apiAddr, bodyLen, end) })
		}
	})

	var valid []time.Duration
	var validErrs chaosRowErrors
	var rssMax int64
	var erasures []floodProgress
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	conn := r.db(t)
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for time.Now().Before(end) {
			if kb, err := procStatus(pid, "VmRSS"); err == nil {
				rssMax = max(rssMax, kb)
			}
			time.Sleep(sampleEvery)
		}
	})
	sampler.Go(func() {
		for time.Now().Before(end) {
			var n int64
			if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM erasure_requests WHERE status = 'succeeded'`).Scan(&n); err == nil {
				erasures = append(erasures, floodProgress{time.Since(began), n})
			}
			time.Sleep(time.Second)
		}
	})
	for i := 0; time.Now().Before(end); i++ {
		next := time.Now().Add(validEvery)
		took, err := chaosSubmit(client, r.doors.apiAddr, fmt.Sprintf("flood-valid-%d", i))
		valid = append(valid, took)
		if err != nil {
			validErrs.add("valid request %d, %v into the flood: %v", i, time.Since(began).Round(time.Millisecond), err)
		} else if took > answerIn {
			validErrs.add("valid request %d, %v into the flood: answered in %v", i, time.Since(began).Round(time.Millisecond), took.Round(time.Millisecond))
		}
		time.Sleep(time.Until(next))
	}
	sampler.Wait()
	flooders.Wait()
	// The kernel updates VmHWM lazily: a sample of VmRSS may be above it.
	hwm := max(chaosProcStatus(t, pid, "VmHWM"), rssMax)

	// The figures.
	var f floodFigures
	for _, res := range results {
		f.add(res)
	}
	slices.Sort(valid)
	worst := valid[len(valid)-1]
	t.Logf("flood of %d slow-body connections over %v, held up to %v: %s", flood, rampFor, holdFor, f)
	t.Logf("%d valid requests during the flood: median %v, worst %v", len(valid),
		valid[len(valid)/2].Round(time.Millisecond), worst.Round(time.Millisecond))
	t.Logf("worker peak RSS (VmHWM, or a larger VmRSS sampled): %d MiB before the flood, %d MiB after (largest VmRSS sampled %d MiB); limit %d MiB",
		before>>10, hwm>>10, rssMax>>10, peakRSS>>10)
	t.Logf("requests succeeded while flooded, by second: %v", erasures)

	// What a user would notice.
	validErrs.report(t)
	if hwm >= peakRSS {
		t.Errorf("the worker's peak RSS reached %d MiB during the flood, want under %d MiB: a pod limited to 256 MiB is close to its OOM kill", hwm>>10, peakRSS>>10)
	}
	if f.answered != flood || f.closed != flood {
		t.Errorf("of %d flood connections, %d were answered 401 and %d closed by the worker within %v: each refusal must close its connection without waiting for the body",
			flood, f.answered, f.closed, holdFor)
	}
	// Erasures go on: some finished in every 5 s of the flood, and at least half the rate's worth
	// over all of it.
	for i := range erasures {
		j := slices.IndexFunc(erasures, func(p floodProgress) bool { return p.at >= erasures[i].at+5*time.Second })
		if j >= 0 && erasures[j].succeeded == erasures[i].succeeded {
			t.Errorf("no erasure finished from %v to %v into the flood", erasures[i].at.Round(time.Second), erasures[j].at.Round(time.Second))
			break
		}
	}
	if n := len(erasures); n < 2 || erasures[n-1].succeeded-erasures[0].succeeded < int64(rate*(erasures[n-1].at-erasures[0].at).Seconds()/2) {
		t.Errorf("erasures during the flood: %v; want at least half of RATE_LIMIT_RPS=%d", erasures, rate)
	}

	// Every request, the backlog and those sent during the flood, is carried out.
	c := r.drained(t, 2*time.Minute)
	if got, want := c["succeeded/deleted"]+c["succeeded/not_found"], int64(backlog+len(valid)); got != want || chaosFailed(c) != 0 {
		t.Errorf("final states %v: want all %d succeeded (the backlog and the valid requests)", c, want)
	}
	w.noPanic(t)
}

// floodProgress is how many requests had succeeded at a moment of the flood.
type floodProgress struct {
	at        time.Duration
	succeeded int64
}

func (p floodProgress) String() string {
	return fmt.Sprintf("%v:%d", p.at.Round(100*time.Millisecond), p.succeeded)
}

// floodResult is what one flood connection met.
type floodResult struct {
	dialErr  error
	status   int           // of the answer; 0 when none came within the hold
	answerIn time.Duration // from the dial to the answer
	closed   bool          // the worker closed the connection after its answer, within the hold
}

// floodConn opens a connection to addr, sends the head of a POST with a wrong token and a body of
// bodyLen that never comes, and waits until the worker answers and closes, or until end.
func floodConn(addr string, bodyLen int, end time.Time) floodResult {
	began := time.Now()
	c, err := (&net.Dialer{Deadline: end}).Dial("tcp", addr)
	if err != nil {
		return floodResult{dialErr: err}
	}
	defer c.Close()
	_ = c.SetDeadline(end)
	head := "POST /v1/erasure-requests HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer wrong-token\r\n" +
		"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(bodyLen) + "\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		return floodResult{dialErr: err}
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return floodResult{}
	}
	res := floodResult{status: resp.StatusCode, answerIn: time.Since(began)}
	_, err = io.Copy(io.Discard, br) // the answer's body, then EOF once the worker closes
	res.closed = err == nil
	return res
}

// floodFigures sums up the flood's connections.
type floodFigures struct {
	dialFailed, answered, otherStatus, unanswered, closed int
	answerIn                                              []time.Duration
	firstDialErr                                          error
}

func (f *floodFigures) add(r floodResult) {
	switch {
	case r.dialErr != nil:
		f.dialFailed++
		if f.firstDialErr == nil {
			f.firstDialErr = r.dialErr
		}
		return
	case r.status == http.StatusUnauthorized:
		f.answered++
	case r.status == 0:
		f.unanswered++
	default:
		f.otherStatus++
	}
	if r.status != 0 {
		f.answerIn = append(f.answerIn, r.answerIn)
	}
	if r.closed {
		f.closed++
	}
}

func (f floodFigures) String() string {
	s := fmt.Sprintf("%d answered 401, %d another status, %d unanswered when the hold ended, %d closed by the worker, %d could not connect",
		f.answered, f.otherStatus, f.unanswered, f.closed, f.dialFailed)
	if f.firstDialErr != nil {
		s += fmt.Sprintf(" (first: %v)", f.firstDialErr)
	}
	if len(f.answerIn) > 0 {
		slices.Sort(f.answerIn)
		s += fmt.Sprintf("; answered within median %v, worst %v of connecting", f.answerIn[len(f.answerIn)/2].Round(time.Millisecond),
			f.answerIn[len(f.answerIn)-1].Round(time.Millisecond))
	}
	return s
}

// chaosSubmit sends one valid request through POST /v1/erasure-requests on a new connection and
// returns how long its answer took; an answer but 202 is an error.
func chaosSubmit(client *http.Client, addr, ref string) (time.Duration, error) {
	body := fmt.Sprintf(`{"request_ref":%q,"external_user_id":"%s-person"}`, ref, ref)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/erasure-requests", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+rigAPIToken)
	req.Header.Set("Content-Type", "application/json")
	began := time.Now()
	resp, err := client.Do(req)
	took := time.Since(began)
	if err != nil {
		return took, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return took, fmt.Errorf("answered %s, want 202", resp.Status)
	}
	return took, nil
}

// chaosSucceeded counts the requests that succeeded.
func chaosSucceeded(t *testing.T, r *rig) int64 {
	t.Helper()
	c := r.counts(t)
	return c["succeeded/deleted"] + c["succeeded/not_found"]
}

// chaosRaiseNoFile makes sure this process may open n files: the flood's connections are this
// process's. The workers it starts raise their own soft limit to the hard one, as every Go
// program does.
func chaosRaiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < n {
		t.Fatalf("RLIMIT_NOFILE's hard limit is %d, and the flood needs %d open files: raise it (ulimit -Hn, or prlimit)", lim.Max, n)
	}
	if lim.Cur < n {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
}

// chaosProcStatus reads a kB field of /proc/PID/status.
func chaosProcStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	kb, err := procStatus(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return kb
}

func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// chaosPlainBinary builds erasure-worker as the image does (no race detector, no cgo), for a
// test that measures its memory.
func chaosPlainBinary(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "erasure-worker")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/erasure-worker/erasure-worker/cmd/erasure-worker")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}
