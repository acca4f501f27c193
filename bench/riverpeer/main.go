// Command riverpeer is erasure-worker's job written on River, the peer that `make bench`
// (section 9) measures the service against: the same backlog, the same call to Knot through
// knotclient, the same evidence kept for every call. It is a module of its own so that River
// never becomes a dependency of the service.
//
// It migrates River's schema into DATABASE_URL, inserts -jobs jobs before any timing starts,
// prints {"ready":true} and, with -wait, waits for a line on standard input (so that the bench
// can read every process's CPU time first). Then it starts a River client, waits until every
// job is completed and prints one JSON line: {"jobs":N,"seconds":S,"rate":R,...}. With -wait it
// then waits for standard input to close before stopping, so that its CPU time can be read
// while it still runs.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/erasure-worker/erasure-worker/knotclient"
)

func main() { os.Exit(run(os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)) }

func run(args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("riverpeer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	jobs := fs.Int("jobs", 30000, "jobs to insert and work")
	workers := fs.Int("max-workers", 100, "River's MaxWorkers on the one queue: the calls in flight")
	// River documents FetchCooldown as what bounds throughput ("Throughput is limited by this
	// value"; default 100ms): a producer fetches at most once per cooldown, at most as many jobs
	// as it has free workers, so the default caps 100 workers at 1,000 jobs/s whatever the job
	// costs. A user tuning River for throughput lowers it; 1ms is River's minimum
	// (FetchCooldownMin). FetchPollInterval stays at its default: LISTEN/NOTIFY and finished jobs
	// trigger fetches, the poll is only the fallback.
	cooldown := fs.Duration("fetch-cooldown", river.FetchCooldownMin, "River's FetchCooldown")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the timed part to this file")
	wait := fs.Bool("wait", false, "after inserting, wait for a line on stdin before starting; after finishing, wait for stdin to close")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := config{
		dbURL:    getenv("DATABASE_URL"),
		knotURL:  getenv("KNOT_BASE_URL"),
		clientID: getenv("KNOT_CLIENT_ID"),
		secret:   getenv("KNOT_SECRET"),
		jobs:     *jobs,
		workers:  *workers,
		cooldown: *cooldown,
		profile:  *cpuprofile,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var in *bufio.Reader
	if *wait {
		in = bufio.NewReader(stdin)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := peer(ctx, cfg, in, stdout, log); err != nil {
		fmt.Fprintf(stderr, "riverpeer: %v\n", err)
		return 1
	}
	return 0
}

type config struct {
	dbURL, knotURL, clientID, secret string
	jobs, workers                    int
	cooldown                         time.Duration
	profile                          string
}

// deleteArgs is one erasure request: whom to delete.
type deleteArgs struct {
	ExternalUserID string `json:"external_user_id"`
}

func (deleteArgs) Kind() string { return "erasure_delete_user" }

// evidence is what a user needs of each call, kept with the job by river.RecordOutput as ours
// keeps it in erasure_attempts.
type evidence struct {
	StartedAt  time.Time `json:"started_at"`
	DurationMs int64     `json:"duration_ms"`
	HTTPStatus int       `json:"http_status,omitempty"`
	Outcome    string    `json:"outcome"` // deleted, not_found, or the failure's class
	ErrorCode  string    `json:"error_code,omitempty"`
}

type deleteWorker struct {
	river.WorkerDefaults[deleteArgs]
	knot *knotclient.Client
}

func (w *deleteWorker) Work(ctx context.Context, job *river.Job[deleteArgs]) error {
	started := time.Now()
	res, err := w.knot.DeleteUser(ctx, job.Args.ExternalUserID)
	ev := evidence{StartedAt: started, DurationMs: time.Since(started).Milliseconds()}
	var kerr *knotclient.Error
	switch {
	case err == nil:
		ev.HTTPStatus, ev.Outcome = res.StatusCode, res.Outcome.String()
	case errors.As(err, &kerr):
		ev.HTTPStatus, ev.Outcome, ev.ErrorCode = kerr.StatusCode, kerr.Class.String(), kerr.ErrorCode
	default:
		ev.Outcome = "error"
	}
	if rerr := river.RecordOutput(ctx, ev); rerr != nil {
		return rerr
	}
	if kerr != nil && kerr.Class == knotclient.Permanent {
		return river.JobCancel(err) // retrying cannot help: River's way to fail at once
	}
	return err // River retries anything else with its backoff
}

// result is the one line printed at the end.
type result struct {
	Jobs    int     `json:"jobs"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	// StartedAt and FinishedAt bound the timed part (Unix nanoseconds): from just before
	// Client.Start to the last completion event.
	StartedAt  int64 `json:"started_at_unix_nano"`
	FinishedAt int64 `json:"finished_at_unix_nano"`
}

func peer(ctx context.Context, cfg config, in *bufio.Reader, stdout io.Writer, log *slog.Logger) error {
	knot, err := knotclient.New(knotclient.Config{BaseURL: cfg.knotURL, ClientID: cfg.clientID, Secret: cfg.secret})
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, cfg.dbURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)

	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, &deleteWorker{knot: knot})
	client, err := river.NewClient(driver, &river.Config{
		Queues:        map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.workers}},
		Workers:       workers,
		FetchCooldown: cfg.cooldown,
		Logger:        log,
	})
	if err != nil {
		return err
	}

	params := make([]river.InsertManyParams, cfg.jobs)
	for i := range params {
		params[i] = river.InsertManyParams{Args: deleteArgs{ExternalUserID: fmt.Sprintf("person-river-%d", i+1)}}
	}
	if _, err := client.InsertManyFast(ctx, params); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	params = nil
	fmt.Fprintln(stdout, `{"ready":true}`)
	if in != nil {
		if _, err := in.ReadString('\n'); err != nil {
			return fmt.Errorf("waiting for the start line: %w", err)
		}
	}

	// Sized for every job, so that no event is dropped while this loop is busy.
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: cfg.jobs + 1,
		Kinds:    []river.EventKind{river.EventKindJobCompleted},
	})
	defer cancel()
	if cfg.profile != "" {
		f, err := os.Create(cfg.profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	started := time.Now()
	if err := client.Start(ctx); err != nil {
		return err
	}
	for done := 0; done < cfg.jobs; {
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted after %d of %d jobs", done, cfg.jobs)
		case <-events:
			done++
		}
	}
	took := time.Since(started)
	pprof.StopCPUProfile() // no-op without -cpuprofile
	out, err := json.Marshal(result{
		Jobs: cfg.jobs, Seconds: took.Seconds(), Rate: float64(cfg.jobs) / took.Seconds(),
		StartedAt: started.UnixNano(), FinishedAt: started.Add(took).UnixNano(),
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(out))
	if in != nil {
		_, _ = io.Copy(io.Discard, in) // until stdin closes
	}
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	return client.Stop(stopCtx)
}
