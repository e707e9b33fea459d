// Command quicgo-peer runs quic-go (Debian's 0.29) as an interop endpoint.
//
// It follows the suite's endpoint contract (interop/programs/contract.py): ROLE,
// TESTCASE, ALPN, HOST, PORT, CERTS, SSLKEYLOGFILE, QLOGDIR and, per role,
// WWW (server) or REQUESTS and DOWNLOADS (client). It exits 0 when done, 1 on
// failure and 127 for a test case it does not implement. hq-interop (HTTP/0.9)
// is written here on quic-go streams; h3 is quic-go's own http3 package.
// Resumption and zerortt: the client fetches the first URL over one connection,
// waits for the server's session ticket, then fetches the rest over a second
// connection that resumes the session (zerortt: its requests in 0-RTT). The
// server always issues tickets and accepts 0-RTT (an early listener).
//
// Built by interop/peers/quicgo.py in GOPATH mode (GO111MODULE=off) against the
// source tree Debian installs under /usr/share/gocode, offline.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
	_ "unsafe" // for go:linkname

	"github.com/lucas-clemente/quic-go"
	"github.com/lucas-clemente/quic-go/http3"
	"github.com/lucas-clemente/quic-go/logging"
	"github.com/lucas-clemente/quic-go/qlog"
)

const (
	exitOK          = 0
	exitFailed      = 1
	exitUnsupported = 127

	alpnHQ = "hq-interop"
	alpnH3 = "h3"
	// The certificate the suite makes names localhost; URLs name 127.0.0.1.
	serverName = "localhost"

	// The transfer case wants clients to start with small flow-control windows.
	smallConnectionWindow = 256 << 10
	smallStreamWindow     = 128 << 10
	// Packets per key phase in the keyupdate case (quic-go's default is 100000,
	// more than a 3 MB download sends or receives).
	keyUpdatePackets = 100
	// Requests in flight at once: bounds goroutines and open download files.
	maxParallel = 100
	// An hq-interop request is one line, "GET /path\r\n".
	maxRequestLine = 4096
	// Application error code for a refused hq-interop request (any value will do).
	errorRequestRefused = 0x10
	// How long the resuming client waits for the first connection's session ticket.
	ticketWait = 10 * time.Second
)

// quic-go reads its key update interval from an internal package variable, which
// a program outside the module may not import; its own interop client sets it.
//
//go:linkname keyUpdateInterval github.com/lucas-clemente/quic-go/internal/handshake.KeyUpdateInterval
var keyUpdateInterval uint64

var (
	serverCases = map[string]bool{
		"handshake": true, "transfer": true, "retry": true, "http3": true,
		"chacha20": true, "multiconnect": true, "resumption": true, "zerortt": true,
	}
	clientCases = map[string]bool{
		"handshake": true, "transfer": true, "retry": true, "http3": true,
		"chacha20": true, "keyupdate": true, "multiconnect": true, "resumption": true,
		"zerortt": true,
	}
)

func main() {
	os.Exit(run())
}

func run() int {
	role, testcase, alpn := os.Getenv("ROLE"), os.Getenv("TESTCASE"), os.Getenv("ALPN")
	cases := map[string]map[string]bool{"server": serverCases, "client": clientCases}[role]
	switch {
	case cases == nil:
		return fail(fmt.Errorf("ROLE must be client or server, got %q", role))
	case alpn != alpnHQ && alpn != alpnH3:
		return fail(fmt.Errorf("ALPN must be %s or %s, got %q", alpnHQ, alpnH3, alpn))
	case !cases[testcase]:
		fmt.Fprintf(os.Stderr, "test case %q unsupported by the quic-go %s\n", testcase, role)
		return exitUnsupported
	}
	keylog, err := openKeylog()
	if err != nil {
		return fail(err)
	}
	tlsConf := &tls.Config{KeyLogWriter: keylog, NextProtos: []string{alpn}}
	if testcase == "chacha20" {
		// quic-go's TLS (qtls) honours CipherSuites for TLS 1.3, unlike crypto/tls.
		tlsConf.CipherSuites = []uint16{tls.TLS_CHACHA20_POLY1305_SHA256}
	}
	tracer, err := qlogTracer()
	if err != nil {
		return fail(err)
	}
	quicConf := &quic.Config{Tracer: tracer}
	if role == "server" {
		err = serve(testcase, alpn, tlsConf, quicConf)
	} else {
		err = download(testcase, alpn, tlsConf, quicConf)
	}
	if err != nil {
		return fail(err)
	}
	return exitOK
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "quic-go endpoint: %v\n", err)
	return exitFailed
}

func openKeylog() (io.Writer, error) {
	name := os.Getenv("SSLKEYLOGFILE")
	if name == "" {
		return nil, nil
	}
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

// qlogTracer writes one qlog file per connection into QLOGDIR, if set.
func qlogTracer() (logging.Tracer, error) {
	dir := os.Getenv("QLOGDIR")
	if dir == "" {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { // the runner leaves it to the endpoint
		return nil, fmt.Errorf("QLOGDIR: %w", err)
	}
	return qlog.NewTracer(func(p logging.Perspective, connID []byte) io.WriteCloser {
		name := filepath.Join(dir, fmt.Sprintf("%x_%s.qlog", connID, p))
		f, err := os.Create(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "qlog: %v\n", err)
			return nopCloser{io.Discard}
		}
		return f
	}), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func listenAddress() string {
	return net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
}

// ---------------------------------------------------------------- server

func serve(testcase, alpn string, tlsConf *tls.Config, quicConf *quic.Config) error {
	www := os.Getenv("WWW")
	if www == "" {
		return errors.New("WWW is not set")
	}
	certs := os.Getenv("CERTS")
	cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "cert.pem"), filepath.Join(certs, "priv.key"))
	if err != nil {
		return fmt.Errorf("CERTS: %w", err)
	}
	tlsConf.Certificates = []tls.Certificate{cert}
	retry := testcase == "retry"
	quicConf.RequireAddressValidation = func(net.Addr) bool { return retry }
	// Both listeners are early ones, which is what enables 0-RTT in quic-go 0.29
	// (no Config.Allow0RTT yet); session tickets are always on.
	if alpn == alpnH3 {
		server := http3.Server{
			Addr:       listenAddress(),
			TLSConfig:  tlsConf,
			QuicConfig: quicConf,
			Handler:    http.FileServer(http.Dir(www)),
		}
		return server.ListenAndServe()
	}
	listener, err := quic.ListenAddrEarly(listenAddress(), tlsConf, quicConf)
	if err != nil {
		return err
	}
	for {
		conn, err := listener.Accept(context.Background())
		if err != nil {
			return err
		}
		go serveConnection(conn, www)
	}
}

func serveConnection(conn quic.Connection, www string) {
	for {
		stream, err := conn.AcceptStream(context.Background())
		if err != nil {
			return // the connection is closed
		}
		go serveStream(stream, www)
	}
}

// serveStream answers one hq-interop request with the file's bytes, then FIN.
func serveStream(stream quic.Stream, www string) {
	file, err := requestedFile(stream, www)
	if err != nil {
		fmt.Fprintf(os.Stderr, "stream %d: %v\n", stream.StreamID(), err)
		stream.CancelRead(errorRequestRefused)
		stream.CancelWrite(errorRequestRefused)
		return
	}
	defer file.Close()
	if _, err := io.Copy(stream, file); err != nil {
		fmt.Fprintf(os.Stderr, "stream %d: %v\n", stream.StreamID(), err)
		stream.CancelWrite(errorRequestRefused)
		return
	}
	stream.Close()
}

func requestedFile(stream quic.Stream, www string) (*os.File, error) {
	line, err := bufio.NewReader(io.LimitReader(stream, maxRequestLine)).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return nil, fmt.Errorf("reading the request line: %w", err)
	}
	request := strings.TrimRight(line, "\r\n")
	target := strings.TrimPrefix(request, "GET ")
	if target == request || !strings.HasPrefix(target, "/") {
		return nil, fmt.Errorf("not an hq-interop request: %q", line)
	}
	// path.Clean of a rooted path cannot climb above the root: no escaping WWW.
	return os.Open(filepath.Join(www, filepath.FromSlash(path.Clean(target))))
}

// ---------------------------------------------------------------- client

func download(testcase, alpn string, tlsConf *tls.Config, quicConf *quic.Config) error {
	urls := strings.Fields(os.Getenv("REQUESTS"))
	downloads := os.Getenv("DOWNLOADS")
	if len(urls) == 0 || downloads == "" {
		return errors.New("a client needs REQUESTS and DOWNLOADS")
	}
	roots, err := caPool(filepath.Join(os.Getenv("CERTS"), "ca.pem"))
	if err != nil {
		return err
	}
	tlsConf.RootCAs, tlsConf.ServerName = roots, serverName
	switch testcase {
	case "transfer":
		quicConf.InitialConnectionReceiveWindow = smallConnectionWindow
		quicConf.InitialStreamReceiveWindow = smallStreamWindow
	case "keyupdate":
		keyUpdateInterval = keyUpdatePackets
	}
	newFetcher := func(early bool) fetcher { return newHQFetcher(tlsConf, quicConf, early) }
	if alpn == alpnH3 {
		newFetcher = func(early bool) fetcher { return newH3Fetcher(tlsConf, quicConf, early) }
	}
	switch testcase {
	case "multiconnect":
		for _, u := range urls { // a connection of its own for every file
			if err := fetchOver(newFetcher(false), []string{u}, downloads); err != nil {
				return err
			}
		}
		return nil
	case "resumption", "zerortt":
		return fetchResuming(tlsConf, newFetcher, testcase == "zerortt", urls, downloads)
	default:
		return fetchOver(newFetcher(false), urls, downloads)
	}
}

// fetchResuming gets the first URL over one connection and the rest over a
// second that resumes the first's session, sending its requests in 0-RTT if
// early. It fails when the second connection did not resume (or, if early,
// the server did not accept its 0-RTT data).
func fetchResuming(
	tlsConf *tls.Config, newFetcher func(early bool) fetcher, early bool, urls []string, downloads string,
) error {
	if len(urls) < 2 {
		return errors.New("resumption needs at least 2 URLs")
	}
	tickets := newTicketCache()
	tlsConf.ClientSessionCache = tickets
	first := newFetcher(false)
	err := fetchAll(first, urls[:1], downloads)
	if err == nil {
		// The ticket may come after the response: keep the connection open for it.
		err = tickets.wait(ticketWait)
	}
	first.close()
	if err != nil {
		return err
	}
	second := newFetcher(early)
	defer second.close()
	if err := fetchAll(second, urls[1:], downloads); err != nil {
		return err
	}
	state := second.connection().ConnectionState().TLS
	fmt.Fprintf(os.Stderr, "second connection: resumed %t, 0-RTT used %t\n", state.DidResume, state.Used0RTT)
	switch {
	case !state.DidResume:
		return errors.New("the second connection did not resume the first's session")
	case early && !state.Used0RTT:
		return errors.New("the server did not accept the second connection's 0-RTT data")
	}
	return nil
}

// ticketCache is an LRU session cache that tells when a session ticket was stored.
type ticketCache struct {
	tls.ClientSessionCache
	stored chan struct{}
}

func newTicketCache() *ticketCache {
	return &ticketCache{tls.NewLRUClientSessionCache(1), make(chan struct{}, 1)}
}

func (c *ticketCache) Put(key string, state *tls.ClientSessionState) {
	c.ClientSessionCache.Put(key, state)
	if state != nil { // nil removes the key's ticket
		select {
		case c.stored <- struct{}{}:
		default: // one signal is enough
		}
	}
}

func (c *ticketCache) wait(limit time.Duration) error {
	select {
	case <-c.stored:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("no session ticket from the server within %s", limit)
	}
}

func caPool(name string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("CERTS: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CERTS: no certificate in %s", name)
	}
	return pool, nil
}

// A fetcher gets URLs over one connection (made on first use) until closed.
// An early one sends its requests in 0-RTT when it has a ticket that allows it.
type fetcher interface {
	get(ctx context.Context, target *url.URL) (io.ReadCloser, error)
	// connection is the one made by the first get (nil before it).
	connection() quic.Connection
	close()
}

// fetchOver fetches every URL with f, then closes its connection.
func fetchOver(f fetcher, urls []string, downloads string) error {
	defer f.close()
	return fetchAll(f, urls, downloads)
}

// fetchAll downloads every URL into DOWNLOADS/<last path segment>, at most
// maxParallel at once; the first failure stops the rest and closes the
// fetcher's connection.
func fetchAll(f fetcher, urls []string, downloads string) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var first error
	var failed sync.Once
	work := make(chan string)
	var workers sync.WaitGroup
	for i := 0; i < maxParallel && i < len(urls); i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for u := range work {
				if err := fetchOne(ctx, f, u, downloads); err != nil {
					// Closing the connection also ends the other workers' reads.
					failed.Do(func() { first = err; cancel(); f.close() })
				}
			}
		}()
	}
feed:
	for _, u := range urls {
		select {
		case work <- u:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	workers.Wait()
	return first
}

func fetchOne(ctx context.Context, f fetcher, rawURL, downloads string) error {
	target, err := url.Parse(rawURL)
	if err != nil || target.Scheme != "https" {
		return fmt.Errorf("REQUESTS: not an https URL: %q", rawURL)
	}
	name := path.Base(target.Path)
	if name == "/" || name == "." || name == ".." {
		return fmt.Errorf("REQUESTS: URL %q names no file", rawURL)
	}
	body, err := f.get(ctx, target)
	if err != nil {
		return fmt.Errorf("%s: %w", rawURL, err)
	}
	defer body.Close()
	out, err := os.Create(filepath.Join(downloads, name))
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, body); err != nil {
		out.Close()
		return fmt.Errorf("%s: %w", rawURL, err)
	}
	return out.Close()
}

// hqFetcher speaks hq-interop: a request is "GET <path>\r\n" and a FIN on a new
// bidirectional stream; the response is the stream's data.
type hqFetcher struct {
	tlsConf  *tls.Config
	quicConf *quic.Config
	early    bool
	once     sync.Once
	conn     quic.Connection
	err      error
}

func newHQFetcher(tlsConf *tls.Config, quicConf *quic.Config, early bool) *hqFetcher {
	return &hqFetcher{tlsConf: tlsConf, quicConf: quicConf, early: early}
}

func (h *hqFetcher) get(ctx context.Context, target *url.URL) (io.ReadCloser, error) {
	h.once.Do(func() { h.conn, h.err = dial(ctx, target.Host, h.tlsConf, h.quicConf, h.early) })
	if h.err != nil {
		return nil, h.err
	}
	stream, err := h.conn.OpenStreamSync(ctx) // waits while the server's stream limit is reached
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(stream, "GET %s\r\n", target.EscapedPath()); err != nil {
		return nil, err
	}
	if err := stream.Close(); err != nil { // FIN on our side: the request is complete
		return nil, err
	}
	return io.NopCloser(stream), nil
}

func (h *hqFetcher) connection() quic.Connection { return h.conn }

func (h *hqFetcher) close() {
	if h.conn != nil {
		h.conn.CloseWithError(0, "")
	}
}

// h3Fetcher is quic-go's HTTP/3 round tripper, which keeps one connection per
// host; only requests with its GET_0RTT method go out before the handshake
// completes.
type h3Fetcher struct {
	rt     *http3.RoundTripper
	method string
	conn   quic.EarlyConnection // the one connection, for its TLS state
}

func newH3Fetcher(tlsConf *tls.Config, quicConf *quic.Config, early bool) *h3Fetcher {
	h := &h3Fetcher{method: http.MethodGet}
	if early {
		h.method = http3.MethodGet0RTT
	}
	// The round tripper calls Dial once, before any request; by default it would
	// dial early even where no 0-RTT is wanted.
	dialAndNote := func(
		ctx context.Context, addr string, tlsConf *tls.Config, quicConf *quic.Config,
	) (quic.EarlyConnection, error) {
		conn, err := dial(ctx, addr, tlsConf, quicConf, early)
		h.conn = conn
		return conn, err
	}
	h.rt = &http3.RoundTripper{TLSClientConfig: tlsConf, QuicConfig: quicConf, Dial: dialAndNote}
	return h
}

func (h *h3Fetcher) get(ctx context.Context, target *url.URL) (io.ReadCloser, error) {
	request, err := http.NewRequestWithContext(ctx, h.method, target.String(), nil)
	if err != nil {
		return nil, err
	}
	response, err := h.rt.RoundTrip(request)
	if err != nil {
		return nil, err
	}
	if response.StatusCode != http.StatusOK {
		response.Body.Close()
		return nil, fmt.Errorf("status %s", response.Status)
	}
	return response.Body, nil
}

func (h *h3Fetcher) connection() quic.Connection { return h.conn }

func (h *h3Fetcher) close() { h.rt.Close() }

// dial connects to addr. If early, it returns as soon as there are 0-RTT keys
// (quic-go waits for the handshake when there are none), so the first requests
// go in 0-RTT; else once the handshake is complete, with no early data offered.
func dial(
	ctx context.Context, addr string, tlsConf *tls.Config, quicConf *quic.Config, early bool,
) (quic.EarlyConnection, error) {
	if early {
		return quic.DialAddrEarlyContext(ctx, addr, tlsConf, quicConf)
	}
	conn, err := quic.DialAddrContext(ctx, addr, tlsConf, quicConf)
	if err != nil {
		return nil, err
	}
	return handshaken{conn}, nil
}

// handshaken is a connection whose handshake is complete, as the early kind
// that quic-go's http3 round tripper takes.
type handshaken struct{ quic.Connection }

var completed = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (handshaken) HandshakeComplete() context.Context { return completed }

func (c handshaken) NextConnection() quic.Connection { return c.Connection }
