// Command quicgo-peer runs quic-go (Debian's 0.29) as an interop endpoint.
//
// It follows the suite's endpoint contract (interop/programs/contract.py): ROLE,
// TESTCASE, ALPN, HOST, PORT, CERTS, SSLKEYLOGFILE, QLOGDIR and, per role,
// WWW (server) or REQUESTS and DOWNLOADS (client). It exits 0 when done, 1 on
// failure and 127 for a test case it does not implement. hq-interop (HTTP/0.9)
// is written here on quic-go streams; h3 is quic-go's own http3 package.
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
)

// quic-go reads its key update interval from an internal package variable, which
// a program outside the module may not import; its own interop client sets it.
//
//go:linkname keyUpdateInterval github.com/lucas-clemente/quic-go/internal/handshake.KeyUpdateInterval
var keyUpdateInterval uint64

var (
	serverCases = map[string]bool{
		"handshake": true, "transfer": true, "retry": true, "http3": true,
		"chacha20": true, "multiconnect": true,
	}
	clientCases = map[string]bool{
		"handshake": true, "transfer": true, "retry": true, "http3": true,
		"chacha20": true, "keyupdate": true, "multiconnect": true,
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
	if alpn == alpnH3 {
		server := http3.Server{
			Addr:       listenAddress(),
			TLSConfig:  tlsConf,
			QuicConfig: quicConf,
			Handler:    http.FileServer(http.Dir(www)),
		}
		return server.ListenAndServe()
	}
	listener, err := quic.ListenAddr(listenAddress(), tlsConf, quicConf)
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
	newFetcher := func() fetcher { return newHQFetcher(tlsConf, quicConf) }
	if alpn == alpnH3 {
		newFetcher = func() fetcher { return newH3Fetcher(tlsConf, quicConf) }
	}
	if testcase != "multiconnect" {
		return fetchAll(newFetcher(), urls, downloads)
	}
	for _, u := range urls { // a connection of its own for every file
		if err := fetchAll(newFetcher(), []string{u}, downloads); err != nil {
			return err
		}
	}
	return nil
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
type fetcher interface {
	get(ctx context.Context, target *url.URL) (io.ReadCloser, error)
	close()
}

// fetchAll downloads every URL into DOWNLOADS/<last path segment>, at most
// maxParallel at once; the first failure stops the rest. It closes the
// fetcher's connection when done.
func fetchAll(f fetcher, urls []string, downloads string) error {
	defer f.close()
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
	once     sync.Once
	conn     quic.Connection
	err      error
}

func newHQFetcher(tlsConf *tls.Config, quicConf *quic.Config) *hqFetcher {
	return &hqFetcher{tlsConf: tlsConf, quicConf: quicConf}
}

func (h *hqFetcher) get(ctx context.Context, target *url.URL) (io.ReadCloser, error) {
	h.once.Do(func() { h.conn, h.err = quic.DialAddrContext(ctx, target.Host, h.tlsConf, h.quicConf) })
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

func (h *hqFetcher) close() {
	if h.conn != nil {
		h.conn.CloseWithError(0, "")
	}
}

// h3Fetcher is quic-go's HTTP/3 round tripper, which keeps one connection per host.
type h3Fetcher struct{ rt *http3.RoundTripper }

func newH3Fetcher(tlsConf *tls.Config, quicConf *quic.Config) *h3Fetcher {
	return &h3Fetcher{&http3.RoundTripper{TLSClientConfig: tlsConf, QuicConfig: quicConf}}
}

func (h *h3Fetcher) get(ctx context.Context, target *url.URL) (io.ReadCloser, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, target.String(), nil)
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

func (h *h3Fetcher) close() { h.rt.Close() }
