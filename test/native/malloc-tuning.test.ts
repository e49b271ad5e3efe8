/**
 * `mallocMmapThreshold` (issue 15, the fleet's RSS): a valgrind massif profile of a bare node:tls
 * server showed 64 KiB per connection allocated by Node's TLS layer for its read buffer
 * (NodeBIO::PeekWritable from TLSWrap::OnStreamAlloc) and kept for the connection's life. The verifier
 * sets glibc's mmap threshold to 64 KiB so that such a buffer, when the heap has no free chunk for
 * it, gets a mapping of its own (whose untouched pages are never resident) instead of growing the
 * heap. Checked here: the config key, what is logged in every case, and, on this
 * glibc machine, that the verifier's held TLS connections' buffers really are served by mappings.
 */
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { loadSys } from '../../src/native/sys.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { DEFAULT_MMAP_THRESHOLD, applyMallocMmapThreshold } from '../../src/native/malloc-tuning.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';

const base = { trustDomain: 'example.org', adminSocket: '/tmp/x.sock', dataDir: '/tmp/x' };

describe('mallocMmapThreshold: the config key', () => {
  it('defaults to 64 KiB; 0 leaves the C library alone', () => {
    expect(verifierConfigFrom(base, '/tmp').mallocMmapThreshold).toBe(DEFAULT_MMAP_THRESHOLD);
    expect(DEFAULT_MMAP_THRESHOLD).toBe(65_536);
    expect(verifierConfigFrom({ ...base, mallocMmapThreshold: 0 }, '/tmp').mallocMmapThreshold).toBe(0);
  });

  it('refuses values that would make small allocations system calls, or that glibc refuses', () => {
    expect(() => verifierConfigFrom({ ...base, mallocMmapThreshold: 4096 }, '/tmp')).toThrow(/mallocMmapThreshold must be 0 \(the C library decides\) or at least 16384/);
    expect(() => verifierConfigFrom({ ...base, mallocMmapThreshold: 64 * 1024 * 1024 }, '/tmp')).toThrow(/mallocMmapThreshold/);
    expect(() => verifierConfigFrom({ ...base, mallocMmapThreshold: 65536.5 }, '/tmp')).toThrow(/mallocMmapThreshold/);
    expect(() => verifierConfigFrom({ ...base, mallocMmapThreshold: '64k' }, '/tmp')).toThrow(/mallocMmapThreshold/);
  });
});

describe('mallocMmapThreshold: applying it', () => {
  const never = () => {
    throw new Error('the addon must not be asked');
  };

  it('0: nothing is asked of the addon', () => {
    const o = applyMallocMmapThreshold(0, {}, never);
    expect(o).toMatchObject({ applied: false, level: 'info' });
  });

  it('MALLOC_MMAP_THRESHOLD_ in the environment wins and is named', () => {
    const o = applyMallocMmapThreshold(65536, { MALLOC_MMAP_THRESHOLD_: '131072' }, never);
    expect(o.applied).toBe(false);
    expect(o.message).toContain('MALLOC_MMAP_THRESHOLD_=131072');
  });

  it('a missing addon is a warning that says what it costs, not a failure', () => {
    const o = applyMallocMmapThreshold(65536, {}, () => {
      throw new SigilError('native.unavailable', 'native addon build/Release/sigil_sys.node not found');
    });
    expect(o).toMatchObject({ applied: false, level: 'warn' });
    expect(o.message).toMatch(/not applied: native addon .* not found; large buffers then come from glibc's heap as before/);
  });

  it('another C library, or a value glibc refuses, is said so', () => {
    expect(applyMallocMmapThreshold(65536, {}, () => ({ setMallocMmapThreshold: () => 'not_glibc' as const }))).toMatchObject({ applied: false, level: 'info', message: expect.stringContaining('not glibc') });
    expect(applyMallocMmapThreshold(65536, {}, () => ({ setMallocMmapThreshold: () => 'refused' as const }))).toMatchObject({ applied: false, level: 'warn', message: expect.stringContaining('refused') });
  });

  it('the addon checks its argument', () => {
    const sys = loadSys();
    expect(() => sys.setMallocMmapThreshold(-1)).toThrow(SigilError);
    expect(() => sys.setMallocMmapThreshold(1.5)).toThrow(/integer/);
    expect(() => sys.setMallocMmapThreshold(2 ** 31)).toThrow(/integer/);
  });
});

describe('mallocMmapThreshold: the held connections of a real verifier (glibc)', () => {
  let tv: TestVerifier | undefined;
  const socks: TLSSocket[] = [];
  afterAll(async () => {
    for (const s of socks) s.destroy();
    await tv?.stop();
  });

  it("the TLS read buffers of its connections get mappings of their own instead of growing the heap", async () => {
    const sys = loadSys();
    const before = sys.mallocStats();
    if (before === undefined) throw new Error('this test needs glibc 2.33 or later (mallinfo2)');
    tv = await startTestVerifier();
    const port = tv.v.port;
    const atStart = sys.mallocStats()!.mmappedChunks;
    const N = 100;
    for (let i = 0; i < N; i++) {
      socks.push(
        await new Promise<TLSSocket>((resolve, reject) => {
          const s = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => resolve(s));
          s.once('error', reject);
        }),
      );
    }
    // Give the verifier's side its first read of each connection (the client's Finished).
    await new Promise((r) => setTimeout(r, 200));
    const after = sys.mallocStats()!.mmappedChunks;
    // Both ends are in this process, each holding one buffer per connection (2N). glibc serves a
    // request from a free heap chunk that fits before it maps anything (the threshold decides only
    // when the heap would have to grow), so not all of them are mappings: 73 of 200 in a run here.
    // With glibc's own threshold (128 KiB and up) none of them is, so a quarter of N tells them apart.
    expect(after - atStart).toBeGreaterThanOrEqual(N / 4);
  });
});
