package main

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// The metrics server keeps no connection that idles or never sends its request: without
// timeouts, each such connection would hold a goroutine and its buffers for ever.
func TestTheMetricsServerClosesIdleAndSilentConnections(t *testing.T) {
	defer func(idle, read time.Duration) { metricsIdleTimeout, metricsReadTimeout = idle, read }(metricsIdleTimeout, metricsReadTimeout)
	metricsIdleTimeout, metricsReadTimeout = 300*time.Millisecond, 300*time.Millisecond
	srv := newMetricsServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }))
	srv.ReadHeaderTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	// A scrape, then the connection idles.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	closedWithin(t, conn, br, 3*time.Second, "an idle keep-alive connection")

	// A connection that never sends a request.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closedWithin(t, silent, bufio.NewReader(silent), 3*time.Second, "a connection that sends nothing")
}

func closedWithin(t *testing.T, conn net.Conn, br *bufio.Reader, within time.Duration, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	if _, err := br.ReadByte(); err == nil {
		t.Fatalf("%s: the server sent more", what)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: still open after %s", what, within)
	}
}
