/**
 * A minimal HTTP/2 (RFC 9113) gRPC client for the Workload API load generator, written directly
 * on a Unix socket so that the load generator spends little CPU and allocates almost nothing per
 * call (node:http2's client costs ~225 µs of CPU per call here, and its garbage shows up as
 * server latency).
 *
 * It sends the same requests as `h2Client` in ./load.ts and applies the same checks:
 *   - x509(): FetchX509SVID; resolves on the first complete response message if it holds exactly
 *     `expectSvids` svids, then cancels the stream (RST_STREAM CANCEL).
 *   - jwt(): FetchJWTSVID with audience ['bench']; resolves at END_STREAM after exactly one
 *     response message holding exactly `expectSvids` svids.
 *
 * What it deliberately does not do: decode response headers or trailers (no HPACK decoder; the
 * server's dynamic table is irrelevant when nothing is decoded). A call that ends without a
 * complete response message therefore fails with "... ended without a response message (non-OK
 * gRPC status?)"; a FetchJWTSVID whose single good message is followed by non-OK trailers would
 * pass. Responses are checked by walking the top-level protobuf fields and counting field 1
 * (`svids`) rather than by a full decode.
 *
 * Per call: one pooled state object, one Promise (with its resolve/reject pair), no closures,
 * no timers, no Map entries (in-flight streams live in an array indexed by stream id). Outgoing
 * frames of one tick go into a per-connection buffer and out with a single socket write; the
 * RST_STREAM that cancels a finished FetchX509SVID stream waits for the next write (or the end
 * of the event-loop turn), so a closed loop sends it together with the next request. Incoming
 * bytes are read into one fixed buffer per connection (net's `onread`), not a new Buffer per read.
 */
import net from 'node:net';
import type { BenchClient } from './load.js';

export interface RawH2Options {
  /** Number of `svids` every response message must hold (default 3). */
  expectSvids?: number;
  /** Total connection-level receive window granted to the server, in bytes (default 2^30 + 65535; at least 65535). */
  connectionWindow?: number;
  /** Send a connection WINDOW_UPDATE once this many DATA bytes have been received (default 2^28; at most connectionWindow). */
  windowUpdateThreshold?: number;
  /** Largest gRPC response message accepted, in bytes (default 4 MiB). */
  maxMessageBytes?: number;
}

export interface RawH2Stats {
  streamsOpened: number;
  dataBytesReceived: number;
  windowUpdatesSent: number;
}

export interface RawH2Client extends BenchClient {
  stats(): RawH2Stats;
}

// Frame types, flags, settings and error codes (RFC 9113 §6, §7, §11).
const DATA = 0x0;
const HEADERS = 0x1;
const PRIORITY = 0x2;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PUSH_PROMISE = 0x5;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const CONTINUATION = 0x9;

const FLAG_END_STREAM = 0x1;
const FLAG_ACK = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;

const SETTINGS_ENABLE_PUSH = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
const SETTINGS_MAX_FRAME_SIZE = 0x5;

const NO_ERROR = 0x0;
const PROTOCOL_ERROR = 0x1;
const FLOW_CONTROL_ERROR = 0x3;
const FRAME_SIZE_ERROR = 0x6;
const CANCEL = 0x8;

/** The SETTINGS_MAX_FRAME_SIZE we accept: we advertise none, so the default applies. */
const MAX_FRAME_SIZE = 16384;
const MAX_WINDOW = 0x7fffffff;
const MAX_STREAM_ID = 0x7fffffff;
const DEFAULT_WINDOW = 65535;
const OUT_CHUNK = 16384;
const READ_BUFFER = 32768;
const POOL_MAX = 1024;
const INITIAL_SLOTS = 64;

const X509 = 0;
const JWT = 1;
type Method = typeof X509 | typeof JWT;
const METHOD_NAMES = ['FetchX509SVID', 'FetchJWTSVID'] as const;

// ---------------------------------------------------------------- request templates

function hpackInt(out: number[], value: number, prefixBits: number, firstByte: number): void {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(firstByte | value);
    return;
  }
  out.push(firstByte | max);
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
}

/** An HPACK string literal without Huffman coding (RFC 7541 §5.2). */
function hpackString(out: number[], s: string): void {
  const bytes = Buffer.from(s, 'utf8');
  hpackInt(out, bytes.length, 7, 0x00);
  for (const b of bytes) out.push(b);
}

/**
 * The request header block, with no dynamic-table use: exact static-table matches as indexed
 * fields (RFC 7541 §6.1), everything else as literals without indexing (§6.2.2) with an indexed
 * name where the static table has one.
 */
function requestHeaderBlock(path: string): Buffer {
  const out: number[] = [];
  hpackInt(out, 3, 7, 0x80); // :method POST (static 3)
  hpackInt(out, 6, 7, 0x80); // :scheme http (static 6)
  hpackInt(out, 4, 4, 0x00); // :path (static name 4)
  hpackString(out, path);
  hpackInt(out, 1, 4, 0x00); // :authority (static name 1)
  hpackString(out, 'localhost');
  hpackInt(out, 31, 4, 0x00); // content-type (static name 31)
  hpackString(out, 'application/grpc');
  out.push(0x00); // literal name
  hpackString(out, 'te');
  hpackString(out, 'trailers');
  out.push(0x00);
  hpackString(out, 'workload.spiffe.io');
  hpackString(out, 'true');
  return Buffer.from(out);
}

function writeFrameHeader(buf: Buffer, at: number, length: number, type: number, flags: number, streamId: number): void {
  buf[at] = (length >>> 16) & 0xff;
  buf[at + 1] = (length >>> 8) & 0xff;
  buf[at + 2] = length & 0xff;
  buf[at + 3] = type;
  buf[at + 4] = flags;
  buf.writeUInt32BE(streamId, at + 5);
}

interface Template {
  /** HEADERS (END_HEADERS) + DATA (END_STREAM) with stream id 0, patched per call. */
  bytes: Buffer;
  /** Offset of the DATA frame's stream id. */
  dataIdOffset: number;
  /** DATA payload length: what the call takes from the send windows. */
  dataLen: number;
}

function buildTemplate(method: string, message: Uint8Array): Template {
  const block = requestHeaderBlock(`/SpiffeWorkloadAPI/${method}`);
  if (block.length > MAX_FRAME_SIZE) throw new Error('request header block exceeds one frame');
  const dataLen = 5 + message.length;
  const bytes = Buffer.alloc(9 + block.length + 9 + dataLen);
  writeFrameHeader(bytes, 0, block.length, HEADERS, FLAG_END_HEADERS, 0);
  block.copy(bytes, 9);
  const d = 9 + block.length;
  writeFrameHeader(bytes, d, dataLen, DATA, FLAG_END_STREAM, 0);
  bytes[d + 9] = 0; // not compressed
  bytes.writeUInt32BE(message.length, d + 10);
  bytes.set(message, d + 14);
  return { bytes, dataIdOffset: d + 5, dataLen };
}

/** JWTSVIDRequest { audience: ['bench'] }: field 1, wire type 2, length 5, "bench". */
const JWT_REQUEST = Uint8Array.from([0x0a, 0x05, ...Buffer.from('bench')]);
const TEMPLATES: readonly Template[] = [buildTemplate(METHOD_NAMES[X509], new Uint8Array(0)), buildTemplate(METHOD_NAMES[JWT], JWT_REQUEST)];

const CLIENT_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

// ---------------------------------------------------------------- response check

/**
 * Counts the top-level occurrences of field 1 (`svids`, length-delimited) in a protobuf message,
 * walking tags and skipping values with bounds checks. Throws on malformed input.
 */
export function countSvidFields(buf: Uint8Array, start = 0, end = buf.length): number {
  let s = start;
  let n = 0;
  while (s < end) {
    let tag = 0;
    let mul = 1;
    let b: number;
    do {
      if (s >= end) throw new Error('truncated field tag');
      if (mul > 2 ** 28) throw new Error('field tag varint longer than 5 bytes');
      b = buf[s++]!;
      tag += (b & 0x7f) * mul;
      mul *= 128;
    } while (b >= 0x80);
    if (tag > 0xffffffff) throw new Error('field tag out of range');
    const wire = tag % 8;
    const field = Math.floor(tag / 8);
    if (field === 0) throw new Error('field number 0');
    switch (wire) {
      case 0: {
        let k = 0;
        do {
          if (s >= end) throw new Error(`truncated varint in field ${field}`);
          if (++k > 10) throw new Error(`varint longer than 10 bytes in field ${field}`);
          b = buf[s++]!;
        } while (b >= 0x80);
        break;
      }
      case 1:
        s += 8;
        break;
      case 2: {
        let len = 0;
        let m = 1;
        do {
          if (s >= end) throw new Error(`truncated length of field ${field}`);
          if (m > 2 ** 28) throw new Error(`length varint longer than 5 bytes in field ${field}`);
          b = buf[s++]!;
          len += (b & 0x7f) * m;
          m *= 128;
        } while (b >= 0x80);
        if (len > end - s) throw new Error(`field ${field} length ${len} exceeds the ${end - s} bytes left`);
        s += len;
        break;
      }
      case 5:
        s += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${wire} in field ${field}`);
    }
    if (s > end) throw new Error(`truncated value of field ${field}`);
    if (field === 1) {
      if (wire !== 2) throw new Error(`field 1 (svids) has wire type ${wire}, expected 2`);
      n++;
    }
  }
  return n;
}

// ---------------------------------------------------------------- calls

type Resolve = (value: void | PromiseLike<void>) => void;
type Reject = (reason: Error) => void;
const noop = (): void => undefined;

/** State of one in-flight stream; pooled per connection. */
class Call {
  id = 0;
  method: Method = X509;
  resolve: Resolve = noop;
  reject: Reject = noop;
  /** Bytes of the 5-byte gRPC message prefix seen so far. */
  prefixGot = 0;
  msgLen = 0;
  /** Reassembly buffer, only when a message spans DATA frames. */
  msg: Buffer | null = null;
  msgFill = 0;
  messages = 0;
}

// One executor shared by all calls: it runs synchronously inside `new Promise`, so a module
// variable hands it the call's state and no closure is created per call.
let executorTarget: Call | null = null;
function executor(resolve: Resolve, reject: Reject): void {
  const c = executorTarget!;
  c.resolve = resolve;
  c.reject = reject;
}

// Output that may wait until the end of the event-loop turn (stream cancels): one setImmediate
// for all connections.
const deferred: Connection[] = [];
let deferredScheduled = false;
function flushDeferred(): void {
  deferredScheduled = false;
  for (const c of deferred) c.flushDeferred();
  deferred.length = 0;
}

class Connection {
  private readonly sock: net.Socket;
  /**
   * In-flight calls by stream id: slot (id >>> 1) & (slots.length - 1). Ids are sequential, so
   * concurrent streams rarely share a slot; an older call displaced by a newer one moves to
   * `overflow`. The table doubles when more than half full.
   */
  private slots: (Call | null)[] = new Array<Call | null>(INITIAL_SLOTS).fill(null);
  private readonly overflow = new Map<number, Call>();
  private inflight = 0;
  private readonly pool: Call[] = [];
  private readonly expectSvids: number;
  private readonly threshold: number;
  private readonly maxMessage: number;
  private nextId = 1;
  private dead: Error | null = null;
  private goaway: Error | null = null;
  // The server's limits on what we send.
  private peerMaxStreams = Infinity;
  private peerInitialWindow = DEFAULT_WINDOW;
  private sendWindow = DEFAULT_WINDOW;
  // Our connection receive window.
  private recvWindow: number;
  private recvUnacked = 0;
  // Frame reassembly: `asm` is either `hdr` (a split frame header) or a buffer for one whole frame.
  private readonly hdr = Buffer.allocUnsafe(9);
  private asm: Buffer | null = null;
  private asmFill = 0;
  private asmNeed = 0;
  /** Stream whose header block continues in CONTINUATION frames (0: none). */
  private contStream = 0;
  private contEndStream = false;
  // Outgoing frames, flushed once per tick.
  private out: Buffer = Buffer.allocUnsafe(OUT_CHUNK);
  private outStart = 0;
  private outEnd = 0;
  private flushQueued = false;
  private deferQueued = false;
  private readonly flushBound = (): void => this.flush();
  private readyResolve: Resolve | null = null;
  private readyReject: Reject | null = null;
  readonly ready: Promise<void>;
  readonly counters: RawH2Stats = { streamsOpened: 0, dataBytesReceived: 0, windowUpdatesSent: 0 };

  constructor(socketPath: string, opts: RawH2Options) {
    this.expectSvids = opts.expectSvids ?? 3;
    const window = opts.connectionWindow ?? DEFAULT_WINDOW + 2 ** 30;
    this.threshold = opts.windowUpdateThreshold ?? 2 ** 28;
    this.maxMessage = opts.maxMessageBytes ?? 4 * 1024 * 1024;
    if (!Number.isInteger(this.expectSvids) || this.expectSvids < 0) throw new Error(`expectSvids must be a non-negative integer, got ${this.expectSvids}`);
    if (!Number.isInteger(window) || window < DEFAULT_WINDOW || window > MAX_WINDOW) throw new Error(`connectionWindow must be an integer in [65535, 2^31-1], got ${window}`);
    if (!Number.isInteger(this.threshold) || this.threshold < 1 || this.threshold > window) throw new Error(`windowUpdateThreshold must be an integer in [1, connectionWindow], got ${this.threshold}`);
    if (!Number.isInteger(this.maxMessage) || this.maxMessage < 0) throw new Error(`maxMessageBytes must be a non-negative integer, got ${this.maxMessage}`);
    this.recvWindow = window;
    this.ready = new Promise<void>((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });

    // Preface, SETTINGS (ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 2^31-1), connection WINDOW_UPDATE.
    const raise = window - DEFAULT_WINDOW;
    const at = this.reserve(CLIENT_PREFACE.length + 9 + 12 + (raise > 0 ? 13 : 0));
    const out = this.out;
    CLIENT_PREFACE.copy(out, at);
    let p = at + CLIENT_PREFACE.length;
    writeFrameHeader(out, p, 12, SETTINGS, 0, 0);
    out.writeUInt16BE(SETTINGS_ENABLE_PUSH, p + 9);
    out.writeUInt32BE(0, p + 11);
    out.writeUInt16BE(SETTINGS_INITIAL_WINDOW_SIZE, p + 15);
    out.writeUInt32BE(MAX_WINDOW, p + 17);
    p += 21;
    if (raise > 0) {
      writeFrameHeader(out, p, 4, WINDOW_UPDATE, 0, 0);
      out.writeUInt32BE(raise, p + 9);
    }

    this.sock = net.connect({ path: socketPath, onread: { buffer: Buffer.allocUnsafe(READ_BUFFER), callback: this.onRead } });
    this.sock.on('error', (e: Error) => this.fail(new Error(`connection error: ${e.message}`, { cause: e }), null));
    this.sock.on('close', () => this.fail(new Error('connection closed by the server'), null));
  }

  stats(): RawH2Stats {
    return { ...this.counters };
  }

  // ---------------------------------------------------------------- sending

  call(method: Method): Promise<void> {
    const t = TEMPLATES[method]!;
    const refused = this.refusal(t);
    if (refused !== null) return Promise.reject(refused);
    const id = this.nextId;
    this.nextId += 2;
    this.sendWindow -= t.dataLen;
    const at = this.reserve(t.bytes.length);
    const out = this.out;
    t.bytes.copy(out, at);
    out.writeUInt32BE(id, at + 5);
    out.writeUInt32BE(id, at + t.dataIdOffset);
    const c = this.pool.pop() ?? new Call();
    c.id = id;
    c.method = method;
    this.add(c);
    this.counters.streamsOpened++;
    executorTarget = c;
    const promise = new Promise<void>(executor);
    executorTarget = null;
    return promise;
  }

  private add(c: Call): void {
    if (2 * (this.inflight + 1) > this.slots.length) this.grow();
    const i = (c.id >>> 1) & (this.slots.length - 1);
    const old = this.slots[i]!;
    if (old !== null) this.overflow.set(old.id, old);
    this.slots[i] = c;
    this.inflight++;
  }

  private grow(): void {
    const all = this.inFlight();
    this.slots = new Array<Call | null>(this.slots.length * 2).fill(null);
    this.overflow.clear();
    this.inflight = 0;
    all.sort((a, b) => a.id - b.id);
    for (const c of all) this.add(c);
  }

  private lookup(id: number): Call | undefined {
    const c = this.slots[(id >>> 1) & (this.slots.length - 1)]!;
    if (c !== null && c.id === id) return c;
    return this.overflow.size === 0 ? undefined : this.overflow.get(id);
  }

  private remove(c: Call): void {
    const i = (c.id >>> 1) & (this.slots.length - 1);
    if (this.slots[i] === c) this.slots[i] = null;
    else this.overflow.delete(c.id);
    this.inflight--;
  }

  private inFlight(): Call[] {
    const all: Call[] = [];
    for (const c of this.slots) if (c !== null) all.push(c);
    for (const c of this.overflow.values()) all.push(c);
    return all;
  }

  private refusal(t: Template): Error | null {
    if (this.dead !== null) return new Error(`connection is gone: ${this.dead.message}`, { cause: this.dead });
    if (this.goaway !== null) return new Error(`connection is going away: ${this.goaway.message}`);
    if (this.nextId > MAX_STREAM_ID) return new Error('stream ids exhausted on this connection (2^31-1); open a new client');
    if (this.inflight >= this.peerMaxStreams) return new Error(`call would exceed the server's SETTINGS_MAX_CONCURRENT_STREAMS (${this.peerMaxStreams})`);
    if (t.dataLen > this.sendWindow) return new Error(`request (${t.dataLen} bytes) does not fit the connection send window (${this.sendWindow})`);
    if (t.dataLen > this.peerInitialWindow) return new Error(`request (${t.dataLen} bytes) does not fit the server's SETTINGS_INITIAL_WINDOW_SIZE (${this.peerInitialWindow})`);
    return null;
  }

  /**
   * Room for n bytes in the output buffer; returns the offset. The bytes go out at the end of
   * this tick, or with `lazy` at the next write or the end of this event-loop turn.
   */
  private reserve(n: number, lazy = false): number {
    if (this.outEnd + n > this.out.length) {
      this.flush();
      this.out = Buffer.allocUnsafe(Math.max(OUT_CHUNK, n));
      this.outStart = 0;
      this.outEnd = 0;
    }
    const at = this.outEnd;
    this.outEnd += n;
    if (lazy) {
      if (!this.deferQueued) {
        this.deferQueued = true;
        deferred.push(this);
        if (!deferredScheduled) {
          deferredScheduled = true;
          setImmediate(flushDeferred);
        }
      }
    } else if (!this.flushQueued) {
      this.flushQueued = true;
      process.nextTick(this.flushBound);
    }
    return at;
  }

  flushDeferred(): void {
    this.deferQueued = false;
    this.flush();
  }

  /** Writes what was reserved since the last flush; written bytes are never touched again. */
  private flush(): void {
    this.flushQueued = false;
    if (this.outEnd === this.outStart) return;
    const chunk = this.out.subarray(this.outStart, this.outEnd);
    this.outStart = this.outEnd;
    if (!this.sock.destroyed) this.sock.write(chunk);
  }

  private writeRst(id: number, code: number): void {
    const at = this.reserve(13, code === CANCEL);
    writeFrameHeader(this.out, at, 4, RST_STREAM, 0, id);
    this.out.writeUInt32BE(code, at + 9);
  }

  private writeGoaway(code: number): void {
    const at = this.reserve(17);
    writeFrameHeader(this.out, at, 8, GOAWAY, 0, 0);
    this.out.writeUInt32BE(0, at + 9); // the server opens no streams
    this.out.writeUInt32BE(code, at + 13);
  }

  // ---------------------------------------------------------------- receiving

  /** net's `onread` callback: `chunk` is this connection's read buffer, valid until we return. */
  private readonly onRead = (n: number, chunk: Uint8Array): boolean => {
    this.parse(chunk as Buffer, n);
    return true;
  };

  /** Parses n bytes; anything kept beyond this call is copied out of `chunk`. */
  private parse(chunk: Buffer, n: number): void {
    if (this.dead !== null) return;
    let off = 0;
    // Finish a frame split across chunks: copy into its own buffer (linear, never re-concatenated).
    while (this.asm !== null) {
      if (off >= n) return;
      const a = this.asm;
      const take = Math.min(this.asmNeed - this.asmFill, n - off);
      chunk.copy(a, this.asmFill, off, off + take);
      this.asmFill += take;
      off += take;
      if (this.asmFill < this.asmNeed) return;
      if (a === this.hdr) {
        const len = (a[0]! << 16) | (a[1]! << 8) | a[2]!;
        if (len > MAX_FRAME_SIZE) return this.connError(FRAME_SIZE_ERROR, `frame of ${len} bytes exceeds SETTINGS_MAX_FRAME_SIZE ${MAX_FRAME_SIZE}`);
        if (len === 0) {
          this.asm = null;
          this.frame(a, 0, 0);
        } else {
          const f = Buffer.allocUnsafe(9 + len);
          a.copy(f, 0, 0, 9);
          this.asm = f;
          this.asmFill = 9;
          this.asmNeed = 9 + len;
        }
      } else {
        this.asm = null;
        this.frame(a, 0, this.asmNeed - 9);
      }
      if (this.dead !== null) return;
    }
    // Whole frames straight from the chunk.
    while (n - off >= 9) {
      const len = (chunk[off]! << 16) | (chunk[off + 1]! << 8) | chunk[off + 2]!;
      if (len > MAX_FRAME_SIZE) return this.connError(FRAME_SIZE_ERROR, `frame of ${len} bytes exceeds SETTINGS_MAX_FRAME_SIZE ${MAX_FRAME_SIZE}`);
      if (n - off - 9 < len) {
        const f = Buffer.allocUnsafe(9 + len);
        chunk.copy(f, 0, off, n);
        this.asm = f;
        this.asmFill = n - off;
        this.asmNeed = 9 + len;
        return;
      }
      this.frame(chunk, off, len);
      if (this.dead !== null) return;
      off += 9 + len;
    }
    if (off < n) {
      chunk.copy(this.hdr, 0, off, n);
      this.asm = this.hdr;
      this.asmFill = n - off;
      this.asmNeed = 9;
    }
  }

  /** Stream ids we have opened (odd, below nextId); a frame on any other non-zero id is a protocol error. */
  private opened(sid: number): boolean {
    return (sid & 1) === 1 && sid < this.nextId;
  }

  private frame(buf: Buffer, off: number, len: number): void {
    const type = buf[off + 3]!;
    const flags = buf[off + 4]!;
    const sid = buf.readUInt32BE(off + 5) & 0x7fffffff;
    const p = off + 9;
    if (this.contStream !== 0 && (type !== CONTINUATION || sid !== this.contStream)) {
      return this.connError(PROTOCOL_ERROR, `expected CONTINUATION on stream ${this.contStream}, got frame type ${type} on stream ${sid}`);
    }
    switch (type) {
      case DATA:
        return this.onDataFrame(buf, p, len, flags, sid);
      case HEADERS: {
        if (sid === 0 || !this.opened(sid)) return this.connError(PROTOCOL_ERROR, `HEADERS on stream ${sid}, which the client did not open`);
        let need = 0;
        if ((flags & FLAG_PADDED) !== 0) {
          if (len < 1) return this.connError(FRAME_SIZE_ERROR, 'padded HEADERS frame without a pad length');
          need = 1 + buf[p]!;
        }
        if ((flags & FLAG_PRIORITY) !== 0) need += 5;
        if (need > len) return this.connError(PROTOCOL_ERROR, `HEADERS padding/priority (${need} bytes) exceed the ${len}-byte payload`);
        const endStream = (flags & FLAG_END_STREAM) !== 0;
        if ((flags & FLAG_END_HEADERS) === 0) {
          this.contStream = sid;
          this.contEndStream = endStream;
        } else if (endStream) this.streamEnded(sid);
        return;
      }
      case CONTINUATION: {
        if (this.contStream === 0) return this.connError(PROTOCOL_ERROR, `unexpected CONTINUATION on stream ${sid}`);
        if ((flags & FLAG_END_HEADERS) !== 0) {
          const endStream = this.contEndStream;
          this.contStream = 0;
          this.contEndStream = false;
          if (endStream) this.streamEnded(sid);
        }
        return;
      }
      case RST_STREAM: {
        if (len !== 4) return this.connError(FRAME_SIZE_ERROR, `RST_STREAM of ${len} bytes`);
        if (sid === 0 || !this.opened(sid)) return this.connError(PROTOCOL_ERROR, `RST_STREAM on stream ${sid}, which the client did not open`);
        const call = this.lookup(sid);
        if (call !== undefined) {
          const code = buf.readUInt32BE(p);
          this.settle(call, new Error(`${METHOD_NAMES[call.method]}: stream reset by the server (RST_STREAM error code ${code})`), false);
        }
        return;
      }
      case SETTINGS:
        return this.onSettings(buf, p, len, flags, sid);
      case PING: {
        if (sid !== 0) return this.connError(PROTOCOL_ERROR, `PING on stream ${sid}`);
        if (len !== 8) return this.connError(FRAME_SIZE_ERROR, `PING of ${len} bytes`);
        if ((flags & FLAG_ACK) === 0) {
          const at = this.reserve(17);
          writeFrameHeader(this.out, at, 8, PING, FLAG_ACK, 0);
          buf.copy(this.out, at + 9, p, p + 8);
        }
        return;
      }
      case GOAWAY: {
        if (sid !== 0) return this.connError(PROTOCOL_ERROR, `GOAWAY on stream ${sid}`);
        if (len < 8) return this.connError(FRAME_SIZE_ERROR, `GOAWAY of ${len} bytes`);
        const last = buf.readUInt32BE(p) & 0x7fffffff;
        const code = buf.readUInt32BE(p + 4);
        const debug = len > 8 ? `: ${buf.toString('latin1', p + 8, p + Math.min(len, 8 + 200))}` : '';
        this.goaway = new Error(`server sent GOAWAY (error code ${code}, last stream ${last})${debug}`);
        for (const call of this.inFlight()) if (call.id > last) this.settle(call, new Error(`${METHOD_NAMES[call.method]}: not processed: ${this.goaway.message}`), false);
        return;
      }
      case WINDOW_UPDATE: {
        if (len !== 4) return this.connError(FRAME_SIZE_ERROR, `WINDOW_UPDATE of ${len} bytes`);
        const inc = buf.readUInt32BE(p) & 0x7fffffff;
        if (sid === 0) {
          if (inc === 0) return this.connError(PROTOCOL_ERROR, 'connection WINDOW_UPDATE with increment 0');
          this.sendWindow += inc;
          if (this.sendWindow > MAX_WINDOW) return this.connError(FLOW_CONTROL_ERROR, 'server grew the connection send window beyond 2^31-1');
          return;
        }
        if (!this.opened(sid)) return this.connError(PROTOCOL_ERROR, `WINDOW_UPDATE on stream ${sid}, which the client did not open`);
        if (inc === 0) {
          const call = this.lookup(sid);
          if (call !== undefined) this.settle(call, new Error(`${METHOD_NAMES[call.method]}: stream WINDOW_UPDATE with increment 0`), true, PROTOCOL_ERROR);
        }
        // Stream send windows need no tracking: a request is sent whole with the HEADERS, after
        // checking it fits the initial window.
        return;
      }
      case PUSH_PROMISE:
        return this.connError(PROTOCOL_ERROR, 'PUSH_PROMISE although the client disabled push');
      case PRIORITY:
        if (sid === 0) return this.connError(PROTOCOL_ERROR, 'PRIORITY on stream 0');
        return;
      default:
        return; // unknown frame types are ignored (RFC 9113 §4.1)
    }
  }

  private onSettings(buf: Buffer, p: number, len: number, flags: number, sid: number): void {
    if (sid !== 0) return this.connError(PROTOCOL_ERROR, `SETTINGS on stream ${sid}`);
    if ((flags & FLAG_ACK) !== 0) {
      if (len !== 0) return this.connError(FRAME_SIZE_ERROR, `SETTINGS ACK with a ${len}-byte payload`);
      return;
    }
    if (len % 6 !== 0) return this.connError(FRAME_SIZE_ERROR, `SETTINGS of ${len} bytes (not a multiple of 6)`);
    for (let i = p; i < p + len; i += 6) {
      const id = buf.readUInt16BE(i);
      const v = buf.readUInt32BE(i + 2);
      switch (id) {
        case SETTINGS_ENABLE_PUSH:
          if (v !== 0) return this.connError(PROTOCOL_ERROR, `server sent SETTINGS_ENABLE_PUSH ${v}`);
          break;
        case SETTINGS_MAX_CONCURRENT_STREAMS:
          this.peerMaxStreams = v;
          break;
        case SETTINGS_INITIAL_WINDOW_SIZE:
          if (v > MAX_WINDOW) return this.connError(FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${v} exceeds 2^31-1`);
          this.peerInitialWindow = v;
          break;
        case SETTINGS_MAX_FRAME_SIZE:
          if (v < 16384 || v > 16777215) return this.connError(PROTOCOL_ERROR, `SETTINGS_MAX_FRAME_SIZE ${v} out of range`);
          break; // every frame we send is far smaller than the minimum
        default:
          break; // HEADER_TABLE_SIZE: we never use the dynamic table; others do not concern us
      }
    }
    const at = this.reserve(9);
    writeFrameHeader(this.out, at, 0, SETTINGS, FLAG_ACK, 0);
    if (this.readyResolve !== null) {
      const r = this.readyResolve;
      this.readyResolve = null;
      this.readyReject = null;
      r();
    }
  }

  private onDataFrame(buf: Buffer, p: number, len: number, flags: number, sid: number): void {
    if (sid === 0 || !this.opened(sid)) return this.connError(PROTOCOL_ERROR, `DATA on stream ${sid}, which the client did not open`);
    // Connection flow control counts the whole payload, padding included, whoever it is for.
    if (len > this.recvWindow) return this.connError(FLOW_CONTROL_ERROR, `DATA of ${len} bytes exceeds the connection receive window (${this.recvWindow})`);
    this.recvWindow -= len;
    this.recvUnacked += len;
    this.counters.dataBytesReceived += len;
    if (this.recvUnacked >= this.threshold) {
      const at = this.reserve(13);
      writeFrameHeader(this.out, at, 4, WINDOW_UPDATE, 0, 0);
      this.out.writeUInt32BE(this.recvUnacked, at + 9);
      this.recvWindow += this.recvUnacked;
      this.recvUnacked = 0;
      this.counters.windowUpdatesSent++;
    }
    let s = p;
    let e = p + len;
    if ((flags & FLAG_PADDED) !== 0) {
      if (len < 1) return this.connError(FRAME_SIZE_ERROR, 'padded DATA frame without a pad length');
      const pad = buf[p]!;
      if (pad >= len) return this.connError(PROTOCOL_ERROR, `DATA padding (${pad} bytes) not smaller than the ${len}-byte payload`);
      s += 1;
      e -= pad;
    }
    const call = this.lookup(sid);
    if (call === undefined) return; // cancelled or finished: ignored
    const endStream = (flags & FLAG_END_STREAM) !== 0;
    if (s < e && !this.feed(call, buf, s, e, endStream)) return;
    if (endStream) this.ended(call);
  }

  /** Appends response bytes to the call's message; returns false once the call is settled. */
  private feed(call: Call, buf: Buffer, start: number, e: number, endStream: boolean): boolean {
    let s = start;
    while (s < e) {
      if (call.prefixGot < 5) {
        const b = buf[s++]!;
        if (call.prefixGot === 0) {
          if (call.messages !== 0) return this.settle(call, new Error(`${METHOD_NAMES[call.method]}: more than one response message`), !endStream);
          if (b !== 0) return this.settle(call, new Error(`${METHOD_NAMES[call.method]}: compressed response message (flag ${b}) not supported`), !endStream);
        } else call.msgLen = call.msgLen * 256 + b;
        if (++call.prefixGot < 5) continue;
        if (call.msgLen > this.maxMessage) {
          return this.settle(call, new Error(`${METHOD_NAMES[call.method]}: response message of ${call.msgLen} bytes exceeds ${this.maxMessage}`), !endStream);
        }
        if (e - s >= call.msgLen) {
          // The whole message is in this frame: check it in place.
          const end = s + call.msgLen;
          if (!this.message(call, buf, s, end, endStream)) return false;
          s = end;
          continue;
        }
        call.msg = Buffer.allocUnsafe(call.msgLen);
        call.msgFill = 0;
        continue;
      }
      const msg = call.msg!;
      const take = Math.min(call.msgLen - call.msgFill, e - s);
      buf.copy(msg, call.msgFill, s, s + take);
      call.msgFill += take;
      s += take;
      if (call.msgFill === call.msgLen) {
        call.msg = null;
        if (!this.message(call, msg, 0, msg.length, endStream)) return false;
      }
    }
    return true;
  }

  /** One complete response message; returns false once the call is settled. */
  private message(call: Call, buf: Buffer, s: number, e: number, endStream: boolean): boolean {
    let n: number;
    try {
      n = countSvidFields(buf, s, e);
    } catch (err) {
      return this.settle(call, new Error(`${METHOD_NAMES[call.method]}: malformed response message: ${(err as Error).message}`), !endStream);
    }
    if (n !== this.expectSvids) return this.settle(call, new Error(`${METHOD_NAMES[call.method]}: expected ${this.expectSvids} SVIDs, got ${n}`), !endStream);
    if (call.method === X509) return this.settle(call, null, !endStream); // then cancel the stream
    call.messages++;
    call.prefixGot = 0;
    call.msgLen = 0;
    return true;
  }

  private streamEnded(sid: number): void {
    const call = this.lookup(sid);
    if (call !== undefined) this.ended(call);
  }

  /** END_STREAM from the server on a call still in flight. */
  private ended(call: Call): void {
    const name = METHOD_NAMES[call.method];
    if (call.prefixGot !== 0) this.settle(call, new Error(`${name}: stream ended in the middle of a response message`), false);
    else if (call.messages === 1) this.settle(call, null, false);
    else this.settle(call, new Error(`${name} ended without a response message (non-OK gRPC status?)`), false);
  }

  /** Finishes a call (optionally resetting its stream) and returns the state to the pool. Always returns false. */
  private settle(call: Call, err: Error | null, reset: boolean, code = CANCEL): false {
    this.remove(call);
    if (reset && this.dead === null) this.writeRst(call.id, code);
    const resolve = call.resolve;
    const reject = call.reject;
    call.resolve = noop;
    call.reject = noop;
    call.msg = null;
    call.prefixGot = 0;
    call.msgLen = 0;
    call.msgFill = 0;
    call.messages = 0;
    if (this.pool.length < POOL_MAX) this.pool.push(call);
    if (err === null) resolve();
    else reject(err);
    return false;
  }

  // ---------------------------------------------------------------- failure and close

  /** A connection error: GOAWAY with the code, then everything outstanding fails. */
  private connError(code: number, message: string): void {
    this.fail(new Error(`HTTP/2 connection error (code ${code}): ${message}`), code);
  }

  private fail(err: Error, goawayCode: number | null): void {
    if (this.dead !== null) return;
    this.dead = err;
    this.asm = null;
    if (goawayCode !== null && !this.sock.destroyed) {
      this.writeGoaway(goawayCode);
      this.flush();
      this.sock.end();
      this.sock.unref();
    } else this.sock.destroy();
    const outstanding = this.inFlight();
    this.slots.fill(null);
    this.overflow.clear();
    this.inflight = 0;
    for (const call of outstanding) {
      const reject = call.reject;
      call.resolve = noop;
      call.reject = noop;
      call.msg = null;
      reject(new Error(`${METHOD_NAMES[call.method]}: ${err.message}`, { cause: err }));
    }
    if (this.readyReject !== null) {
      const r = this.readyReject;
      this.readyResolve = null;
      this.readyReject = null;
      r(err);
    }
  }

  close(): void {
    this.fail(new Error('client closed the connection'), NO_ERROR);
  }
}

/**
 * Connects to a Workload API socket and resolves once the server's first SETTINGS frame has
 * arrived. See the module comment for what the calls check.
 */
export async function rawH2Client(socket: string, opts: RawH2Options = {}): Promise<RawH2Client> {
  const conn = new Connection(socket, opts);
  await conn.ready;
  return {
    x509: () => conn.call(X509),
    jwt: () => conn.call(JWT),
    close: () => conn.close(),
    stats: () => conn.stats(),
  };
}
