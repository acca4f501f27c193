package connector_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
)

// A refusal made with CloseAfter reaches its sender and closes the connection at once, though
// the sender announced a body it never sends: a flood of such senders cannot hold the door's
// connections until ReadTimeout. The door's handler may be wrapped (the doors count answers), as
// long as the wrapper unwraps.
func TestCloseAfterClosesWithoutWaitingForTheBody(t *testing.T) {
	t.Parallel()
	refuse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		connector.CloseAfter(w)
		connector.WriteRaw(w, http.StatusUnauthorized, []byte(`{"error":"no"}`+"\n"))
	})
	for _, c := range []struct {
		name    string
		handler http.Handler
	}{
		{"bare", refuse},
		{"wrapped", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { refuse.ServeHTTP(unwrapping{w}, r) })},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewUnstartedServer(c.handler)
			srv.Config.ReadTimeout = time.Minute
			srv.Start()
			t.Cleanup(srv.Close)

			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			// 100 KiB: less than the 256 KiB net/http would read to reuse the connection.
			head := "POST /v1/erasure-requests HTTP/1.1\r\nHost: door\r\nAuthorization: Bearer wrong\r\nContent-Length: 102400\r\n\r\n"
			if _, err := io.WriteString(conn, head); err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if resp.StatusCode != http.StatusUnauthorized || !resp.Close {
				t.Errorf("answer %s, Connection %q: want 401 closing the connection", resp.Status, resp.Header.Get("Connection"))
			}
			if _, err := io.Copy(io.Discard, br); err != nil {
				t.Fatalf("the connection was not closed after the answer: %v", err)
			}
			if took := time.Since(began); took > 2*time.Second {
				t.Errorf("the connection was closed %v after the head: the server waited for the body", took)
			}
		})
	}
}

// unwrapping wraps a ResponseWriter as the doors' status counter does.
type unwrapping struct{ http.ResponseWriter }

func (u unwrapping) Unwrap() http.ResponseWriter { return u.ResponseWriter }
