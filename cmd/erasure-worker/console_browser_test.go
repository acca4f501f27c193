package main

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"
)

// A person opens the console in a real browser (Debian's chromium, headless): logs in through
// the basic-auth challenge, reads the overview, filters the requests, opens one request's page
// and looks a person up, as the console serves them from a real process. The screenshots of the
// overview and of a request's page go to CONSOLE_SCREENSHOTS (`make screenshots` writes the
// README's, docs/console-*.png), else to a temporary directory.
func TestConsoleInABrowser(t *testing.T) {
	t.Parallel()
	browser := chromium(t)
	r := newRig(t, withFake("-missing", "0.2", "-error-rate", "0.05"), withRequests(40))
	w := r.startWorker(t, "worker", "CONCURRENCY=8", "RETRY_MIN_BACKOFF=100ms", "RETRY_MAX_BACKOFF=1s")
	r.drained(t, time.Minute)
	w.stop(t, 30*time.Second)

	const user, password = "dpo", "a long passphrase for the console"
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webConfig, fmt.Appendf(nil, "basic_auth_users:\n  %s: %s\n", user, hash), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	base := "http://" + addr
	start(t, "console", append(append([]string{}, r.env...), "CONSOLE_LISTEN_ADDR="+addr, "CONSOLE_WEB_CONFIG_FILE="+webConfig),
		r.workerBin, "console")
	waitStatus(t, base+"/", http.StatusUnauthorized, 30*time.Second)

	shots := os.Getenv("CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1000))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	// Log-in: the browser meets the console's 401 and answers its challenge, as a person who
	// types the name and password into the browser's dialog.
	var challenges atomic.Int32
	paused, auths := chromedp.Events(bctx, fetch.RequestPaused), chromedp.Events(bctx, fetch.AuthRequired)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			_, _ = chromedp.Call(bctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: ev.RequestID})
		}
	}()
	go func() {
		for ev, err := range auths {
			if err != nil {
				return
			}
			challenges.Add(1)
			_, _ = chromedp.Call(bctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: ev.RequestID,
				AuthChallengeResponse: &fetch.AuthChallengeResponse{
					Response: fetch.AuthChallengeResponseResponseProvideCredentials, Username: user, Password: password,
				}})
		}
	}()
	handle := true
	if _, err := chromedp.Call(bctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: &handle}); err != nil {
		t.Fatalf("enable the browser's auth handling: %v", err)
	}

	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	get := func(what string, a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(bctx, a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	// arrived waits until the browser has left the page it was on for one whose address holds
	// part: a page's elements are found on the page that is still shown while the next loads.
	arrived := func(what, part string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			if loc, err := chromedp.Run(bctx, chromedp.Location()); err == nil && strings.Contains(loc, part) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the browser never reached an address with %q", what, part)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	shot := func(what string) []byte {
		t.Helper()
		b, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return b
	}

	run("log in and read the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`main h1`)))
	// The chart's figures are read in the background: until the first reading ends, the page
	// says they are being computed; a person reloads.
	for deadline := time.Now().Add(20 * time.Second); ; {
		drawn, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector('svg[role="img"]') !== null`))
		if err == nil && drawn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the overview drew no chart within 20 s (%v)", err)
		}
		time.Sleep(300 * time.Millisecond)
		run("reload the overview", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`main h1`)))
	}
	heading := get("the overview's heading", chromedp.Text(chromedp.CSS(`main h1`)))
	overview := shot("the overview")

	run("filter the requests",
		chromedp.Click(chromedp.CSS(`nav a[href="/requests"]`)),
		chromedp.WaitVisible(chromedp.ID("status")),
		chromedp.SetValue(chromedp.ID("status"), "succeeded"),
		chromedp.SetValue(chromedp.ID("outcome"), "not_found"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Filter the requests"] button`)))
	arrived("filter the requests", "outcome=not_found")
	run("the filtered requests", chromedp.WaitVisible(chromedp.CSS(`main table`)))
	filtered := get("the filtered requests", chromedp.Text(chromedp.CSS(`main table`)))
	filterURL := get("the filter's address", chromedp.Location())

	run("open a request's page", chromedp.Click(chromedp.CSS(`main table tbody th a`)))
	arrived("open a request's page", "/requests/")
	run("the request's page", chromedp.WaitVisible(chromedp.CSS(`main h1`)))
	requestText := get("the request's page", chromedp.Text(chromedp.CSS(`main`)))
	requestPage := shot("the request's page")

	run("look a person up",
		chromedp.Click(chromedp.CSS(`nav a[href="/people"]`)),
		chromedp.WaitVisible(chromedp.ID("external_user_id")),
		chromedp.SendKeys(chromedp.ID("external_user_id"), "person-7"),
		chromedp.Submit(chromedp.ID("external_user_id")),
		chromedp.WaitVisible(chromedp.CSS(`main table`)))
	peopleText := get("the person's requests", chromedp.Text(chromedp.CSS(`main`)))
	peopleURL := get("the look-up's address", chromedp.Location())

	// On a phone's width every page fits: nothing makes the page itself scroll sideways (a wide
	// table scrolls in its own box).
	run("a phone's width", chromedp.EmulateViewport(390, 844))
	for _, path := range []string{"/", "/requests", "/requests/e2e-7", "/people", "/evidence"} {
		run("open "+path+" on a phone", chromedp.Navigate(base+path), chromedp.WaitVisible(chromedp.CSS(`main h1`)))
		fits, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth + 1`))
		if err != nil || !fits {
			width, _ := chromedp.Run(bctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
			t.Errorf("%s on a phone 390 px wide: the page is %d px wide (%v)", path, width, err)
		}
	}

	if challenges.Load() == 0 {
		t.Error("the browser was never asked for a password")
	}
	if heading == "" {
		t.Error("the overview has no heading")
	}
	if !strings.Contains(filterURL, "status=succeeded") || !strings.Contains(filtered, "not_found") || strings.Contains(filtered, "deleted") {
		t.Errorf("the requests filtered by succeeded/not_found (%s) show:\n%s", filterURL, filtered)
	}
	if !strings.Contains(requestText, "e2e-") || !strings.Contains(requestText, "not_found") ||
		!strings.Contains(requestText, "730d") || strings.Contains(requestText, "map[") {
		t.Errorf("the request's page shows:\n%s", requestText)
	}
	if !strings.Contains(peopleText, "e2e-7") || strings.Contains(peopleURL, "person-7") {
		t.Errorf("the person look-up at %s shows:\n%s", peopleURL, peopleText)
	}
	for name, shot := range map[string][]byte{"console-overview.png": overview, "console-request.png": requestPage} {
		img, err := png.Decode(bytes.NewReader(shot))
		if err != nil || img.Bounds().Dx() < 1000 || img.Bounds().Dy() < 400 {
			t.Errorf("%s: %v, bounds %v; want a PNG of the page", name, err, img.Bounds())
			continue
		}
		if err := os.WriteFile(filepath.Join(shots, name), shot, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// chromium finds Debian's chromium: under CI its absence fails the test, elsewhere it skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is missing: apt-get install chromium (the console's browser test needs it)")
	}
	t.Skip("chromium is missing: apt-get install chromium")
	return ""
}

// waitStatus waits until url answers status.
func waitStatus(t *testing.T, url string, status int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == status {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d within %s (%v)", url, status, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
