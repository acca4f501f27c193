package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Outbound is where a URL that a caller supplied (a callback) may be sent: over https, to
// a public address only, checked on the address actually dialled, so that a DNS name that
// resolves to a private address (or is made to, between two look-ups) is refused too. Named
// exceptions (host[:port] or a CIDR) admit what the policy would refuse, plain http included,
// for tests and self-hosted setups. URLs that the operator configures are trusted as given and
// never go through it.
type Outbound struct {
	hosts    map[string]bool // host or host:port, lower case
	prefixes []netip.Prefix
}

// ParseOutbound reads a list of exceptions, separated by commas or spaces: host, host:port,
// or a CIDR (10.1.0.0/16, fd00::/8). setting names the setting in errors.
func ParseOutbound(setting, list string) (Outbound, error) {
	o := Outbound{hosts: map[string]bool{}}
	for _, f := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' }) {
		if p, err := netip.ParsePrefix(f); err == nil {
			o.prefixes = append(o.prefixes, p.Masked())
			continue
		}
		if strings.ContainsAny(f, "/@?#") {
			return Outbound{}, fmt.Errorf("%s: %q is not a host, host:port or CIDR", setting, f)
		}
		o.hosts[strings.ToLower(f)] = true
	}
	return o, nil
}

// named tells whether the URL's host, or host:port, is a named exception.
func (o Outbound) named(u *url.URL) bool {
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return o.hosts[host] || o.hosts[net.JoinHostPort(host, port)]
}

// allowedIP tells whether ip may be dialled: a public address, or one in an excepted CIDR.
func (o Outbound) allowedIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range o.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return Public(ip)
}

// cgnat is 100.64.0.0/10 (RFC 6598), shared address space that Go's IsPrivate leaves out.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Public tells whether ip is an address of the internet: not loopback, private (RFC 1918, ULA),
// link-local, CGNAT, multicast or unspecified, in IPv4 or IPv6 (an IPv4-mapped IPv6 address is
// judged as its IPv4 address).
func Public(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && ip.IsGlobalUnicast() && !ip.IsPrivate() && !cgnat.Contains(ip) &&
		!ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.IsUnspecified()
}

// ErrNotPublic is a dial the policy refused; a delivery that meets it is refused for good.
var ErrNotPublic = errors.New("the address is not public (loopback, private, link-local, CGNAT, multicast or unspecified)")

// CheckURL says why a caller-supplied URL may never be sent to, at intake: not https (unless a
// named exception), or a literal address that is not public. A name is checked when dialled.
func (o Outbound) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("not an absolute URL")
	}
	if o.named(u) {
		return nil
	}
	if u.Scheme != "https" {
		return errors.New("must be https (the callback's credentials would travel in clear text)")
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && !o.allowedIP(ip) {
		return ErrNotPublic
	}
	return nil
}

// MaxAnswerHeaderBytes bounds the headers read from a receiver's answer.
const MaxAnswerHeaderBytes = 16 << 10

// Client returns an HTTP client that sends only where the policy allows: each dial is checked
// on the address it connects to, after resolution; a URL that is not https is refused unless
// its host is a named exception. It never follows redirects and uses no proxy (a proxy would
// dial for it, unchecked); its answers' headers are bounded.
func (o Outbound) Client() *http.Client {
	guarded := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: o.control}
	open := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.MaxResponseHeaderBytes = MaxAnswerHeaderBytes
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, _ := net.SplitHostPort(addr)
		if o.hosts[strings.ToLower(host)] || o.hosts[strings.ToLower(net.JoinHostPort(host, port))] {
			return open.DialContext(ctx, network, addr)
		}
		return guarded.DialContext(ctx, network, addr)
	}
	return &http.Client{
		Transport: schemeGuard{o: o, next: t},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// control refuses a connection to an address the policy does not allow, once it is resolved.
func (o Outbound) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !o.allowedIP(ap.Addr()) {
		return ErrNotPublic
	}
	return nil
}

// schemeGuard refuses plain http to a host that is not a named exception, whichever way the
// request was made.
type schemeGuard struct {
	o    Outbound
	next http.RoundTripper
}

func (g schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" && !g.o.named(r.URL) {
		return nil, errors.New("refused to send over plain http: the URL must be https")
	}
	return g.next.RoundTrip(r)
}
