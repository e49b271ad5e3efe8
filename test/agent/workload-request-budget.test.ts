/**
 * The request bytes a Workload API server holds for messages still arriving
 * (src/agent/workload-api/limits.ts ByteBudget, grpc.ts readSingleMessage), against a real
 * server and raw HTTP/2 clients on its Unix socket: a connection, or a uid over many
 * connections, that opens streams and sends a length prefix (and part of a body) without ever
 * finishing must not make another caller's FetchJWTSVID fail; a message over maxRequestBytes is
 * refused naming the limit; the server's total still holds; a stalled message lets go early.
 *
 * Peer uids come from a peerCred stand-in: a connection opened with `connectAs(uid)` gets that
 * uid, any other one (the victim's) the kernel's. The victim's calls are attested by a fake
 * attestor that reports its uid.
 */
import { EventEmitter, once } from 'node:events';
import http2, { type ClientHttp2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { readSingleMessage } from '../../src/agent/workload-api/grpc.js';
import { ByteBudget, requestLimits } from '../../src/agent/workload-api/limits.js';
import type { WorkloadApiOptions } from '../../src/agent/workload-api/server.js';
import { loadSys } from '../../src/native/sys.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { frame, rawGrpc, type RawResult } from '../workload-api/h2.js';
import { FakeSource, TD, makePki, startTestServer } from '../workload-api/support.js';

const HDR = { 'workload.spiffe.io': 'true' };
const ME = process.getuid!();
const KiB = 1024;

const sys = loadSys();
/** The uid the next accepted connection gets (undefined: the kernel's). */
let nextUid: number | undefined;
const fakeAttestor: WorkloadAttestor = { attest: (c) => Promise.resolve([`fake:uid:${c.uid}`]) };
const source = new FakeSource(makePki());
source.addEntry({ id: 'victim', spiffeId: `spiffe://${TD}/victim`, selectors: [`fake:uid:${ME}`] });

type TestServer = Awaited<ReturnType<typeof startTestServer>>;
const servers: TestServer[] = [];
const sessions: ClientHttp2Session[] = [];
afterEach(async () => {
  for (const s of sessions.splice(0)) s.destroy();
  for (const t of servers.splice(0)) await t.cleanup();
});

async function start(extra: Partial<WorkloadApiOptions> = {}): Promise<TestServer> {
  const t = await startTestServer(source, new Map([['fake', fakeAttestor]]), {
    peerCred: (fd) => {
      const c = sys.peerCred(fd);
      return nextUid === undefined ? c : { ...c, uid: nextUid };
    },
    ...extra,
  });
  servers.push(t);
  return t;
}

/** A connection of `uid`, once the server has accepted it (its SETTINGS arrived). */
async function connectAs(t: TestServer, uid: number): Promise<ClientHttp2Session> {
  nextUid = uid;
  try {
    const s = http2.connect('http://localhost', { createConnection: () => net.connect(t.socket) });
    s.on('error', () => undefined);
    sessions.push(s);
    await once(s, 'remoteSettings');
    return s;
  } finally {
    nextUid = undefined;
  }
}

interface Held {
  /** Set once the server ended the call. */
  status: string | undefined;
  message: string | undefined;
}

/**
 * A FetchJWTSVID stream that sends a prefix declaring `declared` bytes and `bodyBytes` of the
 * body, and then neither the rest nor the end of the stream.
 */
function hold(s: ClientHttp2Session, declared: number, bodyBytes = 0): Held {
  const h: Held = { status: undefined, message: undefined };
  const r = s.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchJWTSVID', 'content-type': 'application/grpc', te: 'trailers', ...HDR });
  const take = (hd: IncomingHttpHeaders): void => {
    if (hd['grpc-status'] !== undefined) h.status = String(hd['grpc-status']);
    if (hd['grpc-message'] !== undefined) h.message = decodeURIComponent(String(hd['grpc-message']));
  };
  r.on('response', take);
  r.on('trailers', take);
  r.on('error', () => undefined);
  r.resume();
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(declared, 1);
  r.write(Buffer.concat([prefix, Buffer.alloc(bodyBytes)]));
  return h;
}

/** Two PING round trips: the server has read what was sent before, and its answers to it are in. */
async function settled(...ss: ClientHttp2Session[]): Promise<void> {
  for (let i = 0; i < 2; i++) await Promise.all(ss.map((s) => new Promise<void>((resolve) => s.ping(() => resolve()))));
}

function pbString(field: number, s: string): Buffer {
  const b = Buffer.from(s);
  const len: number[] = [];
  let n = b.length;
  do {
    len.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>>= 7;
  } while (n > 0);
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), b]);
}

/** The victim's FetchJWTSVID, on a connection of its own. */
function fetchJwt(t: TestServer, msg: Buffer = pbString(1, 'aud')): Promise<RawResult> {
  return rawGrpc({ socket: t.socket, path: '/SpiffeWorkloadAPI/FetchJWTSVID', headers: HDR, body: frame(msg), timeoutMs: 3000 });
}

function validateJwt(t: TestServer, token: string, audience = 'aud'): Promise<RawResult> {
  return rawGrpc({
    socket: t.socket,
    path: '/SpiffeWorkloadAPI/ValidateJWTSVID',
    headers: HDR,
    body: frame(Buffer.concat([pbString(1, audience), pbString(2, token)])),
    timeoutMs: 3000,
  });
}

const refusedNaming = (held: Held[], limit: RegExp): Held[] => held.filter((h) => h.status === '8' && limit.test(h.message ?? ''));
const stillOpen = (held: Held[]): Held[] => held.filter((h) => h.status === undefined);

describe('Workload API request bytes', () => {
  it('16 streams whose prefixes declare 4 MiB, held open, do not block another caller (default limits)', async () => {
    const t = await start();
    const attacker = await connectAs(t, 1001);
    const held = Array.from({ length: 16 }, () => hold(attacker, 4 * 1024 * KiB));
    await settled(attacker);
    const jwt = await fetchJwt(t);
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
    const bad = await validateJwt(t, 'not.a.jwt');
    expect(bad.grpcStatus, bad.grpcMessage).toBe('3'); // read and answered: INVALID_ARGUMENT
    // Each of them is over maxRequestBytes, refused from its prefix.
    expect(refusedNaming(held, /maxRequestBytes 131072/)).toHaveLength(16);
  });

  it('a prefix takes nothing: 64 streams declaring maxRequestBytes without a body leave the total to others', async () => {
    // 64 × 64 KiB declared is four times the total.
    const t = await start({ maxRequestBytes: 64 * KiB, maxBufferedRequestBytes: 1024 * KiB });
    const attacker = await connectAs(t, 1001);
    const held = Array.from({ length: 64 }, () => hold(attacker, 64 * KiB));
    await settled(attacker);
    const jwt = await fetchJwt(t);
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
    expect(stillOpen(held)).toHaveLength(64);
  });

  it('one connection sending bodies it never finishes is held to its share; another caller is served', async () => {
    const limits = { maxRequestBytes: 16 * KiB, maxBufferedRequestBytesPerConnection: 64 * KiB, maxBufferedRequestBytesPerUid: 128 * KiB, maxBufferedRequestBytes: 256 * KiB };
    const t = await start(limits);
    const attacker = await connectAs(t, 1001);
    // 64 streams, each one byte short of its 16 KiB message: 1 MiB wanted, 64 KiB held.
    const held = Array.from({ length: 64 }, () => hold(attacker, 16 * KiB, 16 * KiB - 1));
    await until(() => refusedNaming(held, /maxBufferedRequestBytesPerConnection 65536/).length === 60);
    await settled(attacker);
    expect(stillOpen(held)).toHaveLength(4);
    const jwt = await fetchJwt(t);
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
  });

  it('many connections of one uid are held to the uid\'s share; another uid is served', async () => {
    const limits = { maxRequestBytes: 16 * KiB, maxBufferedRequestBytesPerConnection: 64 * KiB, maxBufferedRequestBytesPerUid: 128 * KiB, maxBufferedRequestBytes: 256 * KiB };
    const t = await start(limits);
    const conns: ClientHttp2Session[] = [];
    for (let i = 0; i < 8; i++) conns.push(await connectAs(t, 1001));
    // Each connection takes its share in turn until the uid's is used up: 8 × 64 KiB wanted.
    const held: Held[] = [];
    for (const c of conns) held.push(...Array.from({ length: 4 }, () => hold(c, 16 * KiB, 16 * KiB - 1)));
    await until(() => refusedNaming(held, /uid 1001 .*maxBufferedRequestBytesPerUid 131072/).length === 24);
    await settled(...conns);
    expect(stillOpen(held)).toHaveLength(8);
    const jwt = await fetchJwt(t);
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
  });

  it('the total still holds across uids, names its limit, and is given back when the holders go', async () => {
    const limits = { maxRequestBytes: 16 * KiB, maxBufferedRequestBytesPerConnection: 128 * KiB, maxBufferedRequestBytesPerUid: 128 * KiB, maxBufferedRequestBytes: 256 * KiB };
    const t = await start(limits);
    const a = await connectAs(t, 1001);
    const b = await connectAs(t, 1002);
    const c = await connectAs(t, 1003);
    const full = [...Array.from({ length: 8 }, () => hold(a, 16 * KiB, 16 * KiB - 1)), ...Array.from({ length: 8 }, () => hold(b, 16 * KiB, 16 * KiB - 1))];
    // Once all of it is in, the server holds its total (256 KiB) and refuses the next byte.
    let refused = await fetchJwt(t);
    await until(async () => (refused = await fetchJwt(t)).grpcStatus === '8');
    expect(refused.grpcMessage).toMatch(/^request bytes being received by the agent would exceed its limit \(maxBufferedRequestBytes 262144\)/);
    expect(stillOpen(full)).toHaveLength(16);
    const third = hold(c, 16 * KiB, 100);
    await until(() => third.status !== undefined);
    expect(refusedNaming([third], /maxBufferedRequestBytes 262144/)).toHaveLength(1);
    a.destroy();
    let jwt = await fetchJwt(t);
    for (let i = 0; i < 20 && jwt.grpcStatus === '8'; i++) jwt = await fetchJwt(t); // until the server has seen a close
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
  });

  it('a message over maxRequestBytes is refused naming the limit; the largest legitimate requests fit', async () => {
    const t = await start();
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(128 * KiB + 1, 1);
    const over = await rawGrpc({ socket: t.socket, path: '/SpiffeWorkloadAPI/ValidateJWTSVID', headers: HDR, body: prefix, timeoutMs: 3000 });
    expect(over.grpcStatus).toBe('8');
    expect(over.grpcMessage).toBe('request message of 131073 bytes is larger than the limit (maxRequestBytes 131072)');
    // ValidateJWTSVID with a token of MAX_VALIDATE_TOKEN_BYTES and an audience of 256 three-byte characters.
    const token = await validateJwt(t, 'x'.repeat(16 * KiB), '€'.repeat(256));
    expect(token.grpcStatus).toBe('3'); // read, and refused as a token
    expect(token.grpcMessage).not.toMatch(/longer than/);
    // One byte longer is refused by its length, before any check, naming the JWT-SVID limit.
    const long = await validateJwt(t, 'x'.repeat(16 * KiB + 1), '€'.repeat(256));
    expect([long.grpcStatus, long.grpcMessage]).toEqual(['3', 'svid is longer than 16384 bytes, the largest JWT-SVID accepted']);
    // FetchJWTSVID with 64 such audiences and a spiffe_id.
    const auds = Array.from({ length: 64 }, (_, i) => pbString(1, `${i}`.padEnd(256, '€')));
    const jwt = await fetchJwt(t, Buffer.concat([...auds, pbString(2, `spiffe://${TD}/victim`)]));
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
  });

  it('a message that stalls is dropped after requestStallTimeoutMs and its bytes are given back; one that trickles in is read', async () => {
    const limits = { maxRequestBytes: 16 * KiB, maxBufferedRequestBytesPerUid: 64 * KiB, maxBufferedRequestBytes: 64 * KiB };
    const t = await start({ ...limits, requestStallTimeoutMs: 300, requestTimeoutMs: 10_000 });
    const attacker = await connectAs(t, 1001);
    const held = Array.from({ length: 4 }, () => hold(attacker, 16 * KiB, 16 * KiB - 1)); // the whole total
    await settled(attacker);
    const t0 = performance.now();
    expect(stillOpen(held)).toHaveLength(4);
    expect((await fetchJwt(t)).grpcStatus).toBe('8');
    await until(() => stillOpen(held).length === 0);
    expect(performance.now() - t0).toBeLessThan(1500); // well before requestTimeoutMs
    expect(held.map((h) => [h.status, h.message])).toEqual(Array(4).fill(['4', 'request message stalled: no byte of it for 300 ms (requestStallTimeoutMs)']));
    const jwt = await fetchJwt(t);
    expect(jwt.grpcStatus, jwt.grpcMessage).toBe('0');
    // A sender that keeps going is not dropped, however long its message takes in all.
    const slow = await connectAs(t, ME);
    const req = slow.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchJWTSVID', 'content-type': 'application/grpc', te: 'trailers', ...HDR });
    req.on('error', () => undefined);
    const answer = new Promise<string | undefined>((resolve) => {
      req.on('response', (h) => h['grpc-status'] !== undefined && resolve(String(h['grpc-status'])));
      req.on('trailers', (h) => resolve(String(h['grpc-status'])));
      req.on('close', () => resolve(undefined));
      req.resume();
    });
    const msg = frame(pbString(1, 'aud'));
    const t1 = performance.now();
    for (let i = 0; i < msg.length - 1; i++) {
      req.write(msg.subarray(i, i + 1));
      await new Promise((r) => setTimeout(r, 100));
    }
    req.end(msg.subarray(msg.length - 1));
    expect(await answer).toBe('0');
    expect(performance.now() - t1).toBeGreaterThan(3 * 300);
  });
});

describe('request limits', () => {
  it('defaults: 128 KiB a message, 1 MiB a connection, 8 MiB a uid, 64 MiB in all, 2 s stall; shares follow the options they derive from', () => {
    expect(requestLimits({})).toEqual({ message: 128 * KiB, perConnection: 1024 * KiB, perUid: 8192 * KiB, total: 65536 * KiB, stallMs: 2000 });
    expect(requestLimits({ maxRequestBytes: 16 * KiB, maxBufferedRequestBytes: 256 * KiB })).toEqual({ message: 16 * KiB, perConnection: 32 * KiB, perUid: 32 * KiB, total: 256 * KiB, stallMs: 2000 });
  });

  it('refuses limits that leave no room for a message, a share larger than the level above, or no stall time', () => {
    const bad = (o: Parameters<typeof requestLimits>[0], names: string): void => {
      expect(() => requestLimits(o)).toThrow(expect.objectContaining({ code: 'workload_api.bad_request_limits', message: expect.stringContaining(names) as string }));
    };
    bad({ maxRequestBytes: 0 }, 'maxRequestBytes');
    bad({ maxRequestBytes: 1.5 }, 'maxRequestBytes');
    bad({ maxBufferedRequestBytes: 64 * KiB }, 'maxBufferedRequestBytes must be an integer ≥ maxRequestBytes (131072)');
    bad({ maxBufferedRequestBytesPerConnection: 64 * KiB }, 'maxBufferedRequestBytesPerConnection');
    bad({ maxBufferedRequestBytesPerUid: 128 * 1024 * KiB }, 'maxBufferedRequestBytesPerUid (134217728) must not exceed maxBufferedRequestBytes');
    bad({ maxBufferedRequestBytesPerConnection: 16 * 1024 * KiB }, 'must not exceed maxBufferedRequestBytesPerUid');
    bad({ requestStallTimeoutMs: 0 }, 'requestStallTimeoutMs');
  });

  it('a message takes what has arrived (its buffer doubling from 16 KiB), against its connection, its uid and the total, and gives it all back', async () => {
    const budget = new ByteBudget({ total: 1024 * KiB, perUid: 512 * KiB, perConnection: 256 * KiB });
    const session = {};
    const release = budget.addConnection(session, 1001);
    const other = budget.addConnection({}, 1001);
    const stream = Object.assign(new EventEmitter(), { session });
    const share = budget.shareOf(stream)!;
    const read = readSingleMessage(stream as unknown as ServerHttp2Stream, 200 * KiB, 10_000, budget);
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(200 * KiB, 1);
    stream.emit('data', prefix);
    expect([budget.used, share.used, share.uid.used]).toEqual([0, 0, 0]); // declared, not arrived
    stream.emit('data', Buffer.alloc(1));
    expect([budget.used, share.used, share.uid.used]).toEqual([16 * KiB, 16 * KiB, 16 * KiB]);
    stream.emit('data', Buffer.alloc(20 * KiB));
    expect(budget.used).toBe(32 * KiB);
    stream.emit('data', Buffer.alloc(100 * KiB));
    expect(budget.used).toBe(120 * KiB + 1); // twice 32 KiB is too little: what is needed
    stream.emit('end');
    await expect(read).rejects.toMatchObject({ code: 13, message: 'request message is truncated' });
    expect([budget.used, share.used, share.uid.used]).toEqual([0, 0, 0]);
    release();
    release();
    expect(budget.shareOf(stream)).toBeUndefined();
    other();
  });
});

/** Wait for `cond`, checked every 20 ms, for at most `ms`. */
async function until(cond: () => boolean | Promise<boolean>, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
