// quiche 0.18 as an hq-interop endpoint (client or server), the interop runner's contract.
//
//   node peer.mjs NODE_MODULES          # run the endpoint the environment describes
//   node peer.mjs NODE_MODULES --check  # load the binding and print its QUIC version
//
// NODE_MODULES holds @matrixai/quic 2.0.9 (its prebuilt napi binding of quiche
// 0.18.0). We drive quiche's own Connection API through that binding, as
// quiche's apps do, not @matrixai/quic's QUICServer/QUICClient: those always
// send a Retry and add their own stream layer, which would test the wrapper
// rather than quiche. Environment (programs/contract.py): ROLE, TESTCASE,
// ALPN, HOST, PORT, CERTS, SSLKEYLOGFILE, REQUESTS, DOWNLOADS, WWW. QLOGDIR is
// ignored: the binding has no qlog. Exit 0 success, 1 failure, 127 unsupported.
//
// Test cases: retry → the server sends a Retry (else it never does);
// transfer → small initial flow-control windows on the client; multiconnect →
// one connection per URL; resumption, zerortt → a second connection resumes
// the first's session (zerortt: requests in 0-RTT); HOST (and the URLs) may be
// ::1 (the ipv6 case). The binding exposes no cipher-suite choice, no key
// update and only QUIC v1, so chacha20, keyupdate and v2 are 127 for the
// client (a quiche server still answers a ChaCha20-only client and its key
// updates); h3 is not in the binding, so only hq-interop.

import { createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import {
  appendFileSync, mkdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_UNSUPPORTED = 127;
const ALPN = 'hq-interop';
const SERVER_CASES = [
  'handshake', 'transfer', 'retry', 'chacha20', 'multiconnect', 'resumption', 'zerortt',
];
const CLIENT_CASES = ['handshake', 'transfer', 'retry', 'multiconnect', 'resumption', 'zerortt'];
const CID_LEN = 20; // our connection IDs; short headers are parsed with this length
const IDLE_TIMEOUT_MS = 30_000; // past the blackhole case's 2 s outages and handshakeloss's PTOs
const SMALL_WINDOW = 256 << 10; // transfer: the runner wants small client windows
const SMALL_STREAM_WINDOW = 128 << 10;
const MAX_STREAMS = 100; // multiplexing: the runner wants initial_max_streams_bidi <= 1000
// quiche 0.18 keeps at most this many paths (PathMap::new) and never frees the
// path a rebound client left while it holds the reused CID (Path::unused), so
// the default of 2 lets a server follow one NAT rebinding only.
const ACTIVE_CID_LIMIT = 16;
const MAX_REQUEST_LINE = 2048;
const WRITE_SLICE = 256 << 10; // one streamSend call; bounds what each call hands the binding
const READ_CHUNK = 64 << 10;
const CLOSE_WAIT_MS = 1000; // after our CONNECTION_CLOSE, at most this for quiche's draining
const TOKEN_MAC_LEN = 16;

const log = (message) => console.error(`quiche endpoint: ${message}`);

// ipv6: HOST and the URLs name ::1, and a UDP socket has one family.
const socketType = (host) => (host.includes(':') ? 'udp6' : 'udp4');
const loopback = (host) => (host.includes(':') ? '::1' : '127.0.0.1');

class ContractError extends Error {}

// The binding's setKeylog(path) truncates the file it opens, so each
// connection logs its keys to a file of its own in the working directory,
// and they are added to SSLKEYLOGFILE when the connections are done.
class KeyLog {
  constructor(target) {
    this.target = target;
    this.parts = [];
  }

  attach(conn) {
    if (this.target === null) return;
    const part = path.resolve(`keylog-${process.pid}-${this.parts.length}.txt`);
    conn.setKeylog(part);
    this.parts.push(part);
  }

  collect() {
    for (const part of this.parts.splice(0)) {
      try {
        appendFileSync(this.target, readFileSync(part));
        rmSync(part);
      } catch (e) {
        log(`key log ${part}: ${e.message}`);
      }
    }
  }
}

function contractFromEnv(env) {
  const required = (name) => {
    if (!env[name]) throw new ContractError(`${name} is not set`);
    return env[name];
  };
  const role = required('ROLE');
  if (role !== 'client' && role !== 'server') {
    throw new ContractError(`ROLE must be client or server, got ${JSON.stringify(role)}`);
  }
  const port = Number(env.PORT ?? '443');
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ContractError(`PORT must be 1..65535, got ${JSON.stringify(env.PORT)}`);
  }
  const certs = required('CERTS');
  return {
    role,
    testcase: required('TESTCASE'),
    alpn: required('ALPN'),
    host: env.HOST || '127.0.0.1',
    port,
    certificate: path.join(certs, 'cert.pem'),
    privateKey: path.join(certs, 'priv.key'),
    caCertificate: path.join(certs, 'ca.pem'),
    keylog: env.SSLKEYLOGFILE || null,
    requests: (env.REQUESTS ?? '').split(/\s+/).filter(Boolean),
    downloads: env.DOWNLOADS || null,
    www: env.WWW || null,
  };
}

// ------------------------------------------------------------------ quiche glue

function makeConfig(quiche, contract, isClient) {
  const config = new quiche.Config();
  if (isClient) {
    config.loadVerifyLocationsFromFile(contract.caCertificate);
    config.verifyPeer(true);
  } else {
    config.loadCertChainFromPemFile(contract.certificate);
    config.loadPrivKeyFromPemFile(contract.privateKey);
    config.verifyPeer(false);
  }
  config.setApplicationProtos([ALPN]);
  config.setMaxIdleTimeout(IDLE_TIMEOUT_MS);
  config.setMaxRecvUdpPayloadSize(quiche.MAX_UDP_PACKET_SIZE);
  config.setMaxSendUdpPayloadSize(quiche.MAX_DATAGRAM_SIZE);
  const small = isClient && contract.testcase === 'transfer';
  config.setInitialMaxData(small ? SMALL_WINDOW : 16 << 20);
  config.setInitialMaxStreamDataBidiLocal(small ? SMALL_STREAM_WINDOW : 4 << 20);
  config.setInitialMaxStreamDataBidiRemote(4 << 20);
  config.setInitialMaxStreamDataUni(1 << 20);
  config.setInitialMaxStreamsBidi(MAX_STREAMS);
  config.setInitialMaxStreamsUni(MAX_STREAMS);
  config.setDisableActiveMigration(true);
  config.setActiveConnectionIdLimit(ACTIVE_CID_LIMIT);
  // resumption needs no more: BoringSSL issues session tickets, valid for the
  // server's life since every connection shares this Config's SSL_CTX.
  if (contract.testcase === 'zerortt') config.enableEarlyData();
  if (contract.keylog) config.logKeys();
  return config;
}

// One quiche connection on a UDP socket: flushes what quiche wants sent and
// keeps its loss/idle timer armed. `onEvent` runs after every recv or timeout.
class Endpoint {
  constructor(conn, socket, label) {
    this.conn = conn;
    this.socket = socket;
    this.label = label;
    this.timer = null;
    this.onEvent = () => {};
  }

  recv(msg, from, to) {
    try {
      this.conn.recv(msg, { from, to });
    } catch (e) {
      if (e.message !== 'Done') log(`${this.label}: recv: ${e.message}`);
    }
    this.onEvent();
    this.flush();
  }

  flush() {
    for (;;) {
      const out = Buffer.allocUnsafe(this.conn.maxSendUdpPayloadSize());
      let sent;
      try {
        sent = this.conn.send(out);
      } catch (e) {
        log(`${this.label}: send: ${e.message}`);
        break;
      }
      if (sent === null) break;
      const [length, info] = sent;
      this.socket.send(out, 0, length, info.to.port, info.to.host);
    }
    this.arm();
  }

  arm() {
    clearTimeout(this.timer);
    const ms = this.conn.timeout();
    if (ms === null) return;
    this.timer = setTimeout(() => {
      this.conn.onTimeout();
      this.onEvent();
      this.flush();
    }, ms);
  }

  stop() {
    clearTimeout(this.timer);
  }

  describeClose() {
    const error = this.conn.peerError() ?? this.conn.localError();
    const stats = this.conn.stats();
    const counts = `sent ${stats.sent}, recv ${stats.recv}, lost ${stats.lost}`;
    if (this.conn.isTimedOut()) return `idle timeout (${counts})`;
    if (error === null) return `closed (${counts})`;
    const who = this.conn.peerError() ? 'peer' : 'local';
    const reason = Buffer.from(error.reason).toString('utf8');
    const kind = error.isApp ? 'application' : 'transport';
    return `${who} closed with ${kind} error ${error.errorCode} "${reason}" (${counts})`;
  }
}

// A server's connection: the IDs it is found by and its hq-interop streams.
class Served extends Endpoint {
  constructor(conn, socket, keys) {
    super(conn, socket, `connection ${keys[0].slice(0, 8)}`);
    this.keys = keys;
    this.requests = new Map(); // stream → Sink of the request line so far
    this.responses = new Map(); // stream → { body, offset } still to be written
    this.forgotten = false;
  }
}

// What arrived on one stream; bytes past `limit` are counted, not kept.
class Sink {
  constructor(limit = Infinity) {
    this.chunks = [];
    this.size = 0;
    this.limit = limit;
  }

  add(bytes) {
    if (this.size < this.limit) this.chunks.push(Buffer.from(bytes));
    this.size += bytes.length;
  }

  bytes() {
    return Buffer.concat(this.chunks);
  }
}

// Reads what is readable on `streamId` into `sink`; true at the stream's FIN.
// Throws what quiche says about a reset stream (StreamReset(code)).
function drainStream(conn, streamId, sink) {
  const buffer = Buffer.allocUnsafe(READ_CHUNK);
  for (;;) {
    const read = conn.streamRecv(streamId, buffer);
    if (read === null) return false;
    const [length, fin] = read;
    sink.add(buffer.subarray(0, length));
    if (fin) return true;
  }
}

// ------------------------------------------------------------------ server

class Server {
  constructor(quiche, contract) {
    this.quiche = quiche;
    this.contract = contract;
    this.config = makeConfig(quiche, contract, false);
    this.retry = contract.testcase === 'retry';
    this.tokenKey = randomBytes(32);
    this.root = realpathSync(contract.www);
    this.connections = new Map(); // connection ID (hex) → Served
    this.keylog = new KeyLog(contract.keylog);
    this.socket = dgram.createSocket(socketType(contract.host));
  }

  start() {
    this.socket.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo));
    this.socket.bind(this.contract.port, this.contract.host);
    process.on('SIGTERM', () => {
      this.keylog.collect();
      process.exit(EXIT_OK);
    });
  }

  onDatagram(msg, rinfo) {
    let header;
    try {
      header = this.quiche.Header.fromSlice(msg, CID_LEN);
    } catch {
      return; // not a QUIC packet we can parse
    }
    const from = { host: rinfo.address, port: rinfo.port };
    const to = { host: this.contract.host, port: this.contract.port };
    const endpoint = this.connections.get(hex(header.dcid)) ?? this.accept(header, from, to);
    if (endpoint === null) return;
    endpoint.recv(msg, from, to);
    if (endpoint.conn.isClosed()) this.forget(endpoint);
  }

  // A new connection for a client Initial, or null when answered statelessly
  // (version negotiation, Retry) or dropped.
  accept(header, from, to) {
    const quiche = this.quiche;
    if (header.ty !== quiche.Type.Initial) return null;
    if (!quiche.versionIsSupported(header.version)) {
      const out = this.scratch();
      this.sendStateless(out, quiche.negotiateVersion(header.scid, header.dcid, out), from);
      return null;
    }
    let scid = randomBytes(CID_LEN);
    let odcid = null;
    if (this.retry) {
      const token = header.token ?? Buffer.alloc(0);
      if (token.length === 0) {
        const mint = this.mintToken(header.dcid, from);
        const out = this.scratch();
        const length = quiche.retry(header.scid, header.dcid, scid, mint, header.version, out);
        this.sendStateless(out, length, from);
        return null;
      }
      odcid = this.validateToken(Buffer.from(token), from);
      if (odcid === null) {
        log(`dropping an Initial with an invalid token from ${from.host}:${from.port}`);
        return null;
      }
      scid = Buffer.from(header.dcid); // the SCID our Retry gave the client
    }
    const conn = quiche.Connection.accept(scid, odcid, to, from, this.config);
    this.keylog.attach(conn);
    // Retransmitted client Initials still carry the client's DCID.
    const endpoint = new Served(conn, this.socket, [hex(scid), hex(header.dcid)]);
    endpoint.onEvent = () => this.serve(endpoint);
    for (const key of endpoint.keys) this.connections.set(key, endpoint);
    log(`${endpoint.label}: accepted from ${from.host}:${from.port}${odcid ? ' after Retry' : ''}`);
    return endpoint;
  }

  scratch() {
    return Buffer.allocUnsafe(this.quiche.MAX_DATAGRAM_SIZE);
  }

  sendStateless(out, length, to) {
    this.socket.send(out, 0, length, to.port, to.host);
  }

  // Token: HMAC(client address, original DCID) || original DCID, so only the
  // address it was given to can use it, and the ODCID comes back with it.
  tokenMac(odcid, from) {
    const mac = createHmac('sha256', this.tokenKey);
    mac.update(`${from.host}:${from.port}/`).update(odcid);
    return mac.digest().subarray(0, TOKEN_MAC_LEN);
  }

  mintToken(odcid, from) {
    return Buffer.concat([this.tokenMac(odcid, from), Buffer.from(odcid)]);
  }

  validateToken(token, from) {
    if (token.length <= TOKEN_MAC_LEN || token.length > TOKEN_MAC_LEN + CID_LEN) return null;
    const odcid = token.subarray(TOKEN_MAC_LEN);
    return this.tokenMac(odcid, from).equals(token.subarray(0, TOKEN_MAC_LEN)) ? odcid : null;
  }

  forget(endpoint) {
    if (endpoint.forgotten) return;
    endpoint.forgotten = true;
    endpoint.stop();
    for (const key of endpoint.keys) this.connections.delete(key);
    log(`${endpoint.label}: ${endpoint.describeClose()}`);
  }

  serve(endpoint) {
    const conn = endpoint.conn;
    if (conn.isClosed()) return this.forget(endpoint);
    for (const streamId of conn.readable()) this.readRequest(endpoint, streamId);
    for (const [streamId, response] of endpoint.responses) {
      if (this.writeResponse(conn, streamId, response)) endpoint.responses.delete(streamId);
    }
  }

  readRequest(endpoint, streamId) {
    const conn = endpoint.conn;
    const sink = endpoint.requests.get(streamId) ?? new Sink(MAX_REQUEST_LINE + 1);
    let fin;
    try {
      fin = drainStream(conn, streamId, sink);
    } catch (e) {
      endpoint.requests.delete(streamId);
      log(`${endpoint.label}: stream ${streamId}: ${e.message}`);
      return;
    }
    if (endpoint.responses.has(streamId)) return; // answered: the rest is ignored
    const text = sink.bytes().toString('latin1');
    if (!text.includes('\n') && !fin && text.length <= MAX_REQUEST_LINE) {
      endpoint.requests.set(streamId, sink);
      return;
    }
    endpoint.requests.delete(streamId);
    const file = this.requestedFile(text.split('\n', 1)[0].trim());
    if (file === null) {
      const shown = JSON.stringify(text.slice(0, 80));
      log(`${endpoint.label}: stream ${streamId}: no such file for ${shown}`);
      conn.streamShutdown(streamId, this.quiche.Shutdown.Write, 1);
      return;
    }
    endpoint.responses.set(streamId, { body: readFileSync(file), offset: 0 });
  }

  // The file under WWW that an hq-interop request line ("GET /name") names, or null.
  requestedFile(line) {
    const [method, target, ...rest] = line.split(' ');
    if (method !== 'GET' || !target || rest.length > 0) return null;
    try {
      const candidate = path.resolve(this.root, `.${decodeURIComponent(target)}`);
      if (!candidate.startsWith(this.root + path.sep)) return null;
      return statSync(candidate).isFile() ? candidate : null;
    } catch {
      return null;
    }
  }

  // Writes what flow control allows; true once the body and its FIN are queued.
  writeResponse(conn, streamId, response) {
    const { body } = response;
    for (;;) {
      const end = Math.min(body.length, response.offset + WRITE_SLICE);
      let written;
      try {
        const slice = body.subarray(response.offset, end);
        written = conn.streamSend(streamId, slice, end === body.length);
      } catch (e) {
        log(`stream ${streamId}: send: ${e.message}`);
        return true; // stopped by the peer: nothing more to send
      }
      if (written === null) return false; // no capacity now; quiche says when it has
      response.offset += written;
      if (response.offset === body.length && end === body.length) return true;
      if (response.offset < end) return false;
    }
  }
}

// ------------------------------------------------------------------ client

// Downloads `urls` over one connection; resolves to an error message or null.
// `tickets.session`: the TLS session to resume, replaced by this connection's.
function download(quiche, contract, urls, tickets, keylog) {
  const target = new URL(urls[0]);
  const host = target.hostname.replace(/^\[(.*)\]$/, '$1'); // "[::1]" in a URL
  const remote = { host, port: Number(target.port || 443) };
  const socket = dgram.createSocket(socketType(host));
  return new Promise((resolve) => {
    socket.bind(0, loopback(host), () => {
      const local = { host: loopback(host), port: socket.address().port };
      const config = makeConfig(quiche, contract, true);
      // "localhost" is in the test certificate (runner.make_certificates).
      const scid = randomBytes(CID_LEN);
      const conn = quiche.Connection.connect('localhost', scid, local, remote, config);
      keylog.attach(conn);
      if (tickets.session !== null) conn.setSession(tickets.session);
      const endpoint = new Endpoint(conn, socket, 'client');
      const fetcher = new Fetcher(conn, contract, urls);
      let finished = false;
      let closing = false;
      const finish = (error) => {
        if (finished) return;
        finished = true;
        tickets.session = conn.session() ?? tickets.session;
        log(`connection ${hex(conn.sourceId()).slice(0, 8)}: ${endpoint.describeClose()}`);
        endpoint.stop();
        socket.close();
        resolve(error);
      };
      endpoint.onEvent = () => {
        if (conn.isClosed()) {
          const lost = `${endpoint.describeClose()} before all files arrived`;
          finish(fetcher.done() ? null : (fetcher.error ?? lost));
          return;
        }
        if (closing) return;
        const error = fetcher.step();
        if (error !== null || fetcher.done()) {
          closing = true;
          conn.close(true, error === null ? 0 : 1, Buffer.from(error ?? ''));
          if (error === null) setTimeout(() => finish(null), CLOSE_WAIT_MS);
        }
      };
      socket.on('message', (msg, rinfo) =>
        endpoint.recv(msg, { host: rinfo.address, port: rinfo.port }, local),
      );
      endpoint.flush(); // the ClientHello: only now is a resumed connection in early data
      if (conn.isInEarlyData()) {
        endpoint.onEvent(); // zerortt: the requests go out in 0-RTT
        endpoint.flush();
      }
    });
  });
}

// The hq-interop requests of one connection: "GET /path\r\n" on a new
// bidirectional stream each, opened as the server's stream limit allows.
class Fetcher {
  constructor(conn, contract, urls) {
    this.conn = conn;
    this.contract = contract;
    this.waiting = [...urls];
    this.open = new Map(); // stream → { url, sink }
    this.nextStream = 0;
    this.remaining = urls.length;
    this.error = null;
  }

  done() {
    return this.remaining === 0;
  }

  // Opens and reads what it can; returns an error message, or null.
  step() {
    const established = this.conn.isEstablished();
    if (!(established || this.conn.isInEarlyData()) || this.error !== null) return this.error;
    if (established) this.issueConnectionIds();
    while (this.waiting.length > 0 && this.conn.peerStreamsLeftBidi() > 0) {
      const url = this.waiting[0];
      const request = Buffer.from(`GET ${new URL(url).pathname}\r\n`);
      if (this.conn.streamSend(this.nextStream, request, true) === null) break;
      this.open.set(this.nextStream, { url, sink: new Sink() });
      this.waiting.shift();
      this.nextStream += 4; // client-initiated bidirectional streams: 0, 4, 8, ...
    }
    // Every open stream, not only conn.readable(): quiche 0.18 does not mark a
    // stream readable when its FIN comes on a retransmission of data the
    // application already read (RecvBuf::write returns early on fully
    // duplicate data after recording fin_off, so ready() stays false), and
    // streamRecv then says Done. streamFinished() does see that FIN.
    for (const streamId of [...this.open.keys()]) this.read(streamId);
    return this.error;
  }

  // Spare connection IDs for the server, as quiche's own client app gives, so
  // a server that follows a NAT rebinding can give the new path a CID of its
  // own instead of reusing the old path's (rebind-port and rebind-addr against
  // this server stalled more often without them).
  issueConnectionIds() {
    while (this.conn.sourceCidsLeft() > 0) {
      const resetToken = BigInt(`0x${randomBytes(16).toString('hex')}`);
      this.conn.newSourceCid(randomBytes(CID_LEN), resetToken, false);
    }
  }

  read(streamId) {
    const request = this.open.get(streamId);
    try {
      const fin = drainStream(this.conn, streamId, request.sink);
      if (!fin && !this.conn.streamFinished(streamId)) return;
    } catch (e) {
      this.error = `${request.url}: ${e.message}`;
      return;
    }
    const name = path.basename(new URL(request.url).pathname);
    writeFileSync(path.join(this.contract.downloads, name), request.sink.bytes());
    this.open.delete(streamId);
    this.remaining -= 1;
  }
}

async function runClient(quiche, contract) {
  mkdirSync(contract.downloads, { recursive: true });
  const urls = contract.requests;
  // multiconnect (handshakeloss): one connection per URL, in turn; resumption
  // and zerortt: the first URL, then the rest on a resumed connection.
  const resumes = ['resumption', 'zerortt'].includes(contract.testcase) && urls.length > 1;
  let batches = [urls];
  if (contract.testcase === 'multiconnect') batches = urls.map((u) => [u]);
  else if (resumes) batches = [urls.slice(0, 1), urls.slice(1)];
  const tickets = { session: null };
  const keylog = new KeyLog(contract.keylog);
  try {
    for (const batch of batches) {
      const error = await download(quiche, contract, batch, tickets, keylog);
      if (error !== null) {
        log(error);
        return EXIT_FAILED;
      }
    }
    return EXIT_OK;
  } finally {
    keylog.collect();
  }
}

// ------------------------------------------------------------------ main

function hex(bytes) {
  return Buffer.from(bytes).toString('hex');
}

async function loadQuiche(modules) {
  const binding = path.join(modules, '@matrixai', 'quic', 'dist', 'native', 'quiche.js');
  return (await import(pathToFileURL(binding).href)).default;
}

function unsupportedReason(contract) {
  if (contract.alpn !== ALPN) return `ALPN ${contract.alpn}: the binding has no HTTP/3`;
  const cases = contract.role === 'server' ? SERVER_CASES : CLIENT_CASES;
  return cases.includes(contract.testcase) ? null : 'not implemented by the quiche endpoint';
}

async function main(argv) {
  const [modules, option] = argv;
  if (!modules) {
    log('usage: node peer.mjs NODE_MODULES [--check]');
    return EXIT_FAILED;
  }
  const quiche = await loadQuiche(modules);
  if (option === '--check') {
    console.log(`quiche binding loaded: QUIC version ${quiche.PROTOCOL_VERSION.toString(16)}`);
    return EXIT_OK;
  }
  const contract = contractFromEnv(process.env);
  const why = unsupportedReason(contract);
  if (why !== null) {
    log(`test case ${JSON.stringify(contract.testcase)} unsupported: ${why}`);
    return EXIT_UNSUPPORTED;
  }
  if (contract.role === 'server') {
    if (!contract.www) throw new ContractError('WWW is not set');
    new Server(quiche, contract).start();
    return null; // serves until the runner stops it
  }
  if (contract.requests.length === 0) throw new ContractError('REQUESTS: a client needs a URL');
  if (!contract.downloads) throw new ContractError('DOWNLOADS is not set');
  return runClient(quiche, contract);
}

main(process.argv.slice(2)).then(
  (status) => {
    if (status !== null) process.exit(status);
  },
  (error) => {
    log(error instanceof ContractError ? error.message : (error.stack ?? String(error)));
    process.exit(EXIT_FAILED);
  },
);
