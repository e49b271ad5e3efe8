/**
 * readSingleMessage (src/agent/workload-api/grpc.ts): the one request message of a call, however
 * the bytes are cut into chunks — the 5-byte prefix read where it arrived when whole, gathered
 * when split — and refused when there are two, when it is truncated or over the bound.
 */
import { EventEmitter } from 'node:events';
import type { ServerHttp2Stream } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { ByteBudget, readSingleMessage } from '../../src/agent/workload-api/grpc.js';

function framed(body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.writeUInt32BE(body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Feed `chunks` to readSingleMessage through a stand-in stream, then end it. */
async function read(chunks: Buffer[], maxBytes = 1024): Promise<Buffer> {
  const stream = new EventEmitter();
  const budget = new ByteBudget(1 << 20);
  const p = readSingleMessage(stream as unknown as ServerHttp2Stream, maxBytes, 10_000, budget);
  for (const c of chunks) stream.emit('data', c);
  stream.emit('end');
  try {
    return await p;
  } finally {
    expect(budget.used).toBe(0);
    expect(stream.listenerCount('data')).toBe(0);
  }
}

/** Every way to cut `bytes` in two, and one byte per chunk. */
function cuts(bytes: Buffer): Buffer[][] {
  const out: Buffer[][] = [[bytes]];
  for (let i = 1; i < bytes.length; i++) out.push([bytes.subarray(0, i), bytes.subarray(i)]);
  out.push([...bytes].map((b) => Buffer.from([b])));
  return out;
}

describe('readSingleMessage', () => {
  it('reads one message however it is cut, the empty one too', async () => {
    for (const body of [Buffer.from('hello, workload'), Buffer.alloc(0)]) {
      for (const chunks of cuts(framed(body))) expect((await read(chunks)).equals(body)).toBe(true);
    }
  });

  it('a prefix that starts inside a chunk after another message is a second message', async () => {
    const two = Buffer.concat([framed(Buffer.from('a')), framed(Buffer.from('b'))]);
    for (const chunks of cuts(two)) await expect(read(chunks)).rejects.toMatchObject({ code: 13, message: expect.stringContaining('more than one') as string });
  });

  it('a truncated message or prefix is refused', async () => {
    const one = framed(Buffer.from('abc'));
    for (let n = 1; n < one.length; n++) {
      // Part of the prefix is no message yet; a whole prefix with part of the body is a truncated one.
      const message = n < 5 ? 'request has no message' : 'request message is truncated';
      await expect(read([one.subarray(0, n)])).rejects.toMatchObject({ code: 13, message });
    }
    // A whole message followed by part of a second prefix.
    await expect(read([one, Buffer.from([0, 0])])).rejects.toMatchObject({ code: 13 });
    await expect(read([])).rejects.toMatchObject({ code: 13, message: 'request has no message' });
  });

  it('a compressed flag or an oversized length is refused from the prefix alone', async () => {
    const c = framed(Buffer.from('x'));
    c[0] = 1;
    await expect(read([c])).rejects.toMatchObject({ code: 13, message: expect.stringContaining('compressed') as string });
    const big = Buffer.alloc(5);
    big.writeUInt32BE(2048, 1);
    for (const chunks of cuts(big)) await expect(read(chunks)).rejects.toMatchObject({ code: 8 });
  });
});
