package fakekit

import (
	"net/http"
	"strings"
	"sync"
	"time"
)

// Faults is what a fake's faults type must do: say what is wrong with it, naming the field.
type Faults interface{ Validate() error }

// AdminOptions says what a fake's admin endpoints drive.
type AdminOptions struct {
	// Wire serves every call outside /_fake/: the vendor's routes.
	Wire http.Handler
	// Stats is what GET /_fake/stats shows; Reset is what POST /_fake/reset does (faults stay).
	Stats func() any
	Reset func()
	// Now is the fake's clock, for outage_for.
	Now func() time.Time
	// ErrorKey names the text of a refused admin call in its JSON body; "" means "message".
	ErrorKey string
	// ResetNoContent answers a reset 204 instead of 200 {"message":"reset"}.
	ResetNoContent bool
}

// Admin holds a fake's faults and serves its control endpoints under /_fake/. They have no
// authentication on purpose: the fakes run on loopback or a test network, and whoever drives a
// test must be able to flip faults with curl.
//
//	GET  /_fake/stats   Stats as JSON
//	GET  /_fake/faults  Faults as JSON
//	PUT  /_fake/faults  replace all faults; "outage_for":"30s" sets outage_until = now+30s
//	POST /_fake/reset   forget what the fake saw; faults stay
//
// Routes are ServeMux patterns; ServeMux's own 404s and 405s (with Allow) are answered in JSON
// like the rest. Every call outside /_fake/ goes to the vendor's wire.
type Admin[F Faults] struct {
	opts AdminOptions
	mux  http.ServeMux

	mu     sync.Mutex
	faults F
}

// NewAdmin returns a fake's admin endpoints, with faults in force.
func NewAdmin[F Faults](faults F, opts AdminOptions) *Admin[F] {
	a := &Admin[F]{opts: opts, faults: faults}
	if a.opts.ErrorKey == "" {
		a.opts.ErrorKey = "message"
	}
	a.HandleFunc("GET /_fake/stats", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, opts.Stats())
	})
	a.HandleFunc("GET /_fake/faults", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, a.Faults())
	})
	a.HandleFunc("PUT /_fake/faults", func(w http.ResponseWriter, r *http.Request) {
		var f F
		err := DecodeFaults(r.Body, opts.Now(), &f)
		if err == nil {
			err = f.Validate()
		}
		if err != nil {
			a.Refuse(w, http.StatusBadRequest, "faults: "+err.Error())
			return
		}
		a.SetFaults(f)
		WriteJSON(w, http.StatusOK, f)
	})
	a.HandleFunc("POST /_fake/reset", func(w http.ResponseWriter, _ *http.Request) {
		opts.Reset()
		if opts.ResetNoContent {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"message": "reset"})
	})
	return a
}

// HandleFunc adds an admin endpoint of the fake's own ("GET /_fake/arrivals").
func (a *Admin[F]) HandleFunc(pattern string, h http.HandlerFunc) { a.mux.HandleFunc(pattern, h) }

// Refuse answers an admin call with an error: {"message": text}, or the fake's ErrorKey.
func (a *Admin[F]) Refuse(w http.ResponseWriter, status int, text string) {
	WriteJSON(w, status, map[string]string{a.opts.ErrorKey: text})
}

// Faults returns the faults in force.
func (a *Admin[F]) Faults() F {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.faults
}

// SetFaults replaces all faults.
func (a *Admin[F]) SetFaults(f F) {
	a.mu.Lock()
	a.faults = f
	a.mu.Unlock()
}

// ServeHTTP serves the admin endpoints, and the vendor's wire outside /_fake/.
func (a *Admin[F]) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/_fake/") {
		a.opts.Wire.ServeHTTP(w, r)
		return
	}
	if h, pattern := a.mux.Handler(r); pattern == "" {
		// ServeMux's own 404 or 405: keep its status and Allow header, say it in JSON. The
		// Allow header names the methods routed, as the fakes always did, not the HEAD that
		// ServeMux adds beside each GET.
		rec := &refusal{header: w.Header()}
		h.ServeHTTP(rec, r)
		if allow := w.Header().Get("Allow"); allow != "" {
			w.Header().Set("Allow", strings.ReplaceAll(allow, ", HEAD", ""))
		}
		a.Refuse(w, rec.code, http.StatusText(rec.code))
		return
	}
	a.mux.ServeHTTP(w, r)
}

// refusal takes ServeMux's own answer: its headers go to the real answer, its text is dropped.
type refusal struct {
	header http.Header
	code   int
}

func (r *refusal) Header() http.Header         { return r.header }
func (r *refusal) Write(b []byte) (int, error) { return len(b), nil }
func (r *refusal) WriteHeader(code int)        { r.code = code }
