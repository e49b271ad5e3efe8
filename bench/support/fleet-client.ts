/**
 * A lean HTTP/1.1-over-mTLS client for the fleet benchmark: one TLS connection per simulated agent
 * (its node SVID as client certificate, kept alive), one request at a time, the response parsed just
 * enough (status, ETag, Content-Length body). Thousands of these in one load generator cost far less
 * CPU than node:https agents, so the verifier's CPU is what the benchmark measures.
 */
import { connect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';

export interface FleetResponse {
  status: number;
  etag: string | undefined;
  /** `sigil-bundle-etag` (entries answers): the ETag the verifier's bundle has now. */
  bundleEtag: string | undefined;
  body: Buffer;
}

export interface FleetConnOptions {
  host: string;
  port: number;
  /** PEM of the CAs the verifier's certificate must chain to. */
  ca: string;
  cert: string;
  key: string;
  /** The URI SAN the verifier's certificate must carry. */
  serverId: string;
  /** Source address (each simulated agent its own loopback address, as agents are separate hosts). */
  localAddress?: string;
}

export class FleetConn {
  private sock: TLSSocket | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (r: FleetResponse) => void; reject: (e: Error) => void } | undefined;
  private head: { status: number; etag: string | undefined; bundleEtag: string | undefined; length: number; headerEnd: number } | undefined;

  /** Made once: a new connection (after the verifier closed an idle one) does not parse the PEM again. */
  private readonly context: SecureContext;

  constructor(private readonly o: FleetConnOptions) {
    this.context = createSecureContext({ ca: o.ca, cert: o.cert, key: o.key });
  }

  private open(): Promise<TLSSocket> {
    if (this.closed) return Promise.reject(new Error('closed'));
    if (this.sock && !this.sock.destroyed) return Promise.resolve(this.sock);
    this.connects++;
    return new Promise((resolve, reject) => {
      const s = connect({
        host: this.o.host,
        port: this.o.port,
        ...(this.o.localAddress ? { localAddress: this.o.localAddress } : {}),
        secureContext: this.context,
        checkServerIdentity: (_h, cert) => (cert.subjectaltname === `URI:${this.o.serverId}` ? undefined : new Error(`verifier SAN ${String(cert.subjectaltname)}`)),
      });
      s.setNoDelay(true);
      s.once('secureConnect', () => {
        this.sock = s;
        resolve(s);
      });
      s.on('data', (d: Buffer) => this.onData(d));
      const fail = (e: Error): void => {
        if (this.sock === s) this.sock = undefined;
        this.buf = Buffer.alloc(0);
        this.more = [];
        this.moreBytes = 0;
        this.head = undefined;
        const p = this.pending;
        this.pending = undefined;
        p?.reject(e);
        reject(e);
      };
      s.once('error', fail);
      s.once('close', () => fail(new Error('connection closed')));
    });
  }

  /** Chunks received after `buf`, joined only once a whole answer is there (large bodies come in many chunks). */
  private more: Buffer[] = [];
  private moreBytes = 0;

  private onData(d: Buffer): void {
    this.answered = true;
    if (this.head && this.buf.length + this.moreBytes + d.length < this.head.headerEnd + this.head.length) {
      this.more.push(d);
      this.moreBytes += d.length;
      return;
    }
    this.buf = this.buf.length === 0 && this.more.length === 0 ? d : Buffer.concat([this.buf, ...this.more, d]);
    this.more = [];
    this.moreBytes = 0;
    for (;;) {
      if (!this.head) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const text = this.buf.subarray(0, end).toString('latin1');
        const lines = text.split('\r\n');
        const status = Number((lines[0] ?? '').split(' ')[1]);
        let length = 0;
        let etag: string | undefined;
        let bundleEtag: string | undefined;
        for (const l of lines.slice(1)) {
          const i = l.indexOf(':');
          const k = l.slice(0, i).toLowerCase();
          const v = l.slice(i + 1).trim();
          if (k === 'content-length') length = Number(v);
          else if (k === 'etag') etag = v;
          else if (k === 'sigil-bundle-etag') bundleEtag = v;
          else if (k === 'transfer-encoding') throw new Error('chunked answers are not expected');
        }
        this.head = { status, etag, bundleEtag, length, headerEnd: end + 4 };
      }
      const h = this.head;
      if (this.buf.length < h.headerEnd + h.length) return;
      const body = this.buf.subarray(h.headerEnd, h.headerEnd + h.length);
      this.buf = this.buf.subarray(h.headerEnd + h.length);
      this.head = undefined;
      const p = this.pending;
      this.pending = undefined;
      p?.resolve({ status: h.status, etag: h.etag, bundleEtag: h.bundleEtag, body: Buffer.from(body) });
      if (this.buf.length === 0) return;
    }
  }

  /**
   * GET `path` with extra headers; one request at a time per connection. As HTTP clients do for an
   * idempotent request, one that fails because a kept-alive connection was closed by the server
   * before any answer came (its idle timeout) is sent again once on a new connection.
   */
  async get(path: string, headers: Record<string, string> = {}): Promise<FleetResponse> {
    const reused = this.sock !== undefined && !this.sock.destroyed;
    try {
      return await this.send(path, headers);
    } catch (e) {
      // Not after close(): the benchmark ends its held long-polls that way, and a request sent again
      // would open a new connection (a handshake, and a long-poll held past the end of the run).
      if (!reused || this.answered || this.closed) throw e;
      this.reconnects++;
      return this.send(path, headers);
    }
  }

  /** Requests sent again on a new connection after the server closed a kept-alive one. */
  reconnects = 0;
  private closed = false;
  /** TLS connections opened (handshakes). */
  connects = 0;
  /** Whether any byte of an answer to the request in flight has come. */
  private answered = false;

  private async send(path: string, headers: Record<string, string>): Promise<FleetResponse> {
    const s = await this.open();
    if (this.pending) throw new Error('one request at a time');
    let req = `GET ${path} HTTP/1.1\r\nhost: verifier\r\naccept: application/json\r\n`;
    for (const [k, v] of Object.entries(headers)) req += `${k}: ${v}\r\n`;
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.answered = false;
      s.write(req + '\r\n');
    });
  }

  close(): void {
    this.closed = true;
    this.sock?.destroy();
    this.sock = undefined;
  }
}
