/**
 * Issue 11 item 5: a deeply nested JSON body costs JSON.parse time that grows with its nesting
 * (a megabyte of `[` about half a second), so a few connections sending such bodies used to
 * push `/healthz` past 9 s. Now the hello has its own, much lower body limit, every JSON body's
 * nesting is checked by a byte scan before it is parsed, and the verifier stays responsive
 * while it is flooded with such bodies.
 */
import { request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { BODY_LIMIT, MAX_JSON_DEPTH, jsonTooDeep } from '../../src/verifier/http-common.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier();
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

/** `{"<outer>":{"x":[[[…]]]},…}` of about `bytes` bytes, nested `bytes/2` deep. */
function deepBody(outer: 'attestors' | 'responses', bytes: number, extra = ''): Buffer {
  const head = `{"${outer}":{"x":`;
  const tail = `}${extra}}`;
  const depth = Math.floor((bytes - head.length - tail.length) / 2);
  return Buffer.from(head + '['.repeat(depth) + ']'.repeat(depth) + tail);
}

describe('jsonTooDeep', () => {
  const deep = (n: number) => Buffer.from('['.repeat(n) + ']'.repeat(n));
  it('counts arrays and objects, not brackets inside strings', () => {
    expect(jsonTooDeep(deep(MAX_JSON_DEPTH), MAX_JSON_DEPTH)).toBe(false);
    expect(jsonTooDeep(deep(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)).toBe(true);
    expect(jsonTooDeep(Buffer.from('{"a":{"b":[{"c":1}]}}'), 3)).toBe(true);
    expect(jsonTooDeep(Buffer.from('{"a":{"b":[{"c":1}]}}'), 4)).toBe(false);
    expect(jsonTooDeep(Buffer.from(`{"s":"${'[{'.repeat(100)}"}`), 1)).toBe(false);
    // An escaped quote does not end the string; an escaped backslash does not escape the quote.
    expect(jsonTooDeep(Buffer.from(`{"s":"\\"${'['.repeat(10)}"}`), 1)).toBe(false);
    expect(jsonTooDeep(Buffer.from(`{"s":"\\\\",${'['.repeat(10)}`), 1)).toBe(true);
    // Closing brackets never make room for more: depth is what is open at each point.
    expect(jsonTooDeep(Buffer.from(']]]]' + '['.repeat(3)), 2)).toBe(true);
  });
});

describe('body limits and nesting over HTTPS', () => {
  it('refuses a hello over the hello limit (128 KiB) with 413 though later messages may be 1 MiB', async () => {
    const csr = createCsr(generateKey('ec-p256')).toString('base64');
    const big = { attestors: { join_token: { token: 'a'.repeat(32), pad: 'x'.repeat(200 * 1024) } }, csr };
    const r = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: big });
    expect(r.status).toBe(413);
    expect((r.body as { error: { code: string; message: string } }).error).toEqual({ code: 'http.body_too_large', message: 'request body over 131072 bytes' });
    // The same size is within the limit of the second message (refused there for another reason).
    const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${'0'.repeat(32)}`, { caPem, body: { responses: { x: 'x'.repeat(200 * 1024) } } });
    expect((r2.body as { error: { code: string } }).error.code).toBe('attest.session_unknown');
  });

  it('refuses JSON nested deeper than 32 before parsing it, on every route', async () => {
    // The second message needs an open session (an unknown one is refused before its body is read).
    const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
    const begin = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: t.token } }, csr: createCsr(generateKey('ec-p256')).toString('base64') } });
    expect(begin.status).toBe(200);
    const session = (begin.body as { session: string }).session;
    for (const [path, body] of [
      ['/v1/attest', deepBody('attestors', 8 * 1024)],
      [`/v1/attest/${session}`, deepBody('responses', BODY_LIMIT - 1024)],
    ] as const) {
      const r = await httpsJson(tv.v.port, 'POST', path, { caPem, rawBody: body });
      expect(r.status).toBe(400);
      expect((r.body as { error: { code: string } }).error.code).toBe('http.json_too_deep');
    }
    // Sigil's own messages nest far less than that; a shallow body still goes through.
    const ok = await httpsJson(tv.v.port, 'POST', `/v1/attest/${'0'.repeat(32)}`, { caPem, body: { responses: { x: [[[[[1]]]]] } } });
    expect((ok.body as { error: { code: string } }).error.code).toBe('attest.session_unknown');
  });

  it('the agent-mTLS routes refuse a caller without a client certificate before reading its body', async () => {
    for (const path of ['/v1/svid/x509', '/v1/svid/jwt', '/v1/agent/renew']) {
      // Not JSON at all: had it been parsed, the answer would be http.bad_json.
      const r = await httpsJson(tv.v.port, 'POST', path, { caPem, rawBody: '{"csrs": [' + 'x'.repeat(64 * 1024) });
      expect(r.status).toBe(401);
      expect((r.body as { error: { code: string } }).error.code).toBe('agent.no_client_cert');
    }
  });

  it('/healthz stays responsive while 24 connections send 1 MiB deeply nested bodies', async () => {
    const bodies = [
      { path: `/v1/attest/${'0'.repeat(32)}`, body: deepBody('responses', BODY_LIMIT - 1024) },
      { path: '/v1/attest', body: deepBody('attestors', BODY_LIMIT - 1024, ',"csr":"AAAA"') },
    ];
    let stop = false;
    let sent = 0;
    const send = (path: string, body: Buffer) =>
      new Promise<void>((resolve) => {
        const req = request(
          { host: '127.0.0.1', port: tv.v.port, method: 'POST', path, ca: caPem, agent: false, checkServerIdentity: () => undefined, headers: { 'content-type': 'application/json', 'content-length': String(body.length) } },
          (res) => {
            res.resume();
            res.on('end', () => resolve());
            res.on('error', () => resolve());
          },
        );
        req.on('error', () => resolve()); // the server may close a connection whose body it refused early
        req.end(body);
      });
    const loops = Array.from({ length: 24 }, async (_, i) => {
      const { path, body } = bodies[i % 2] as { path: string; body: Buffer };
      while (!stop) {
        await send(path, body);
        sent++;
      }
    });
    const latencies: number[] = [];
    const until = Date.now() + 3000;
    await new Promise((r) => setTimeout(r, 300)); // let the flood build up
    while (Date.now() < until) {
      const t0 = performance.now();
      const r = await httpsJson(tv.v.port, 'GET', '/healthz', { caPem });
      latencies.push(performance.now() - t0);
      expect(r.status).toBe(200);
      await new Promise((res) => setTimeout(res, 50));
    }
    stop = true;
    await Promise.all(loops);
    latencies.sort((a, b) => a - b);
    const median = latencies[Math.floor(latencies.length / 2)] as number;
    const max = latencies[latencies.length - 1] as number;
    console.log(`healthz under a deep-JSON flood: ${latencies.length} probes, median ${median.toFixed(0)} ms, max ${max.toFixed(0)} ms; ${sent} flood requests`);
    expect(sent).toBeGreaterThan(24);
    expect(median).toBeLessThan(500);
    expect(max).toBeLessThan(2500);
  }, 60_000);
});
