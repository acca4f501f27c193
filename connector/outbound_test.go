package connector

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

func TestPublicRefusesEveryAddressThatIsNotTheInternets(t *testing.T) {
	t.Parallel()
	for addr, public := range map[string]bool{
		"93.184.215.14": true, "2606:4700::6810:84e5": true, "8.8.8.8": true,
		"127.0.0.1": false, "127.9.9.9": false, "::1": false, // loopback
		"10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false, "fd00::1": false, // private, ULA
		"169.254.169.254": false, "fe80::1": false, // link-local (cloud metadata)
		"100.64.0.1": false, "100.127.255.254": false, // CGNAT
		"224.0.0.1": false, "ff02::1": false, // multicast
		"0.0.0.0": false, "::": false, // unspecified
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "::ffff:93.184.215.14": true, // IPv4-mapped
	} {
		if got := Public(netip.MustParseAddr(addr)); got != public {
			t.Errorf("Public(%s) = %v, want %v", addr, got, public)
		}
	}
}

func TestCheckURLRefusesPlainHTTPAndPrivateLiterals(t *testing.T) {
	t.Parallel()
	none, _ := ParseOutbound("KETCH_CALLBACK_ALLOW", "")
	allow, err := ParseOutbound("KETCH_CALLBACK_ALLOW", "127.0.0.1:8081, cb.internal 10.9.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    Outbound
		url  string
		want string // "" for allowed
	}{
		{none, "https://cb.example.com/x", ""},
		{none, "http://cb.example.com/x", "must be https"},
		{none, "https://127.0.0.1/x", "not public"},
		{none, "https://[::1]:8443/x", "not public"},
		{none, "https://169.254.169.254/latest", "not public"},
		{none, "https://10.9.1.1/x", "not public"},
		{allow, "http://127.0.0.1:8081/cb", ""},
		{allow, "http://127.0.0.1:8082/cb", "must be https"},
		{allow, "http://cb.internal/cb", ""},
		{allow, "https://10.9.1.1/x", ""},
		{allow, "https://10.8.1.1/x", "not public"},
	} {
		err := c.o.CheckURL(c.url)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckURL(%s) = %v, want %q", c.url, err, c.want)
		}
	}
	if _, err := ParseOutbound("KETCH_CALLBACK_ALLOW", "http://x/y"); err == nil || !strings.Contains(err.Error(), "KETCH_CALLBACK_ALLOW") {
		t.Errorf("a URL in the list: %v", err)
	}
}

// The check is on the address dialled: a name that resolves to loopback is refused as the
// literal is, and nothing reaches the server.
func TestTheClientNeverDialsAnAddressThatIsNotPublic(t *testing.T) {
	t.Parallel()
	var reached atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached.Add(1) }))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	byName := "https://localhost:" + u.Port() + "/cb"

	none, _ := ParseOutbound("X", "")
	for _, target := range []string{srv.URL + "/cb", byName} {
		resp, err := none.Client().Post(target, "application/json", nil)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%s: dialled", target)
		}
		if !errors.Is(err, ErrNotPublic) {
			t.Errorf("%s: %v, want ErrNotPublic", target, err)
		}
		if d := FromError(t.Context(), err); d.Result != Rejected {
			t.Errorf("%s: classified %s, want rejected", target, d.Result)
		}
	}
	plain, _ := ParseOutbound("X", "")
	if _, err := plain.Client().Get("http://example.com/"); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("plain http: %v", err)
	}
	if reached.Load() != 0 {
		t.Fatalf("the server was reached %d times", reached.Load())
	}

	// Named exceptions are dialled: by host:port, and by CIDR.
	for _, list := range []string{u.Host, "127.0.0.0/8"} {
		o, _ := ParseOutbound("X", list)
		c := o.Client()
		c.Transport.(schemeGuard).next.(*http.Transport).TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
		resp, err := c.Post(srv.URL+"/cb", "application/json", nil)
		if err != nil {
			t.Fatalf("allowed by %s: %v", list, err)
		}
		resp.Body.Close()
	}
	if reached.Load() != 2 {
		t.Fatalf("the allowed server was reached %d times, want 2", reached.Load())
	}
}
