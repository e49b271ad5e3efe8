/**
 * `POST /v1/attest/:session` is unauthenticated and takes bodies up to 1 MiB (BODY_LIMIT). The
 * depth pre-scan (issue 11 item 5) stops deep nesting, but a shallow megabyte still costs
 * JSON.parse time: `[{},{},…]` about 150 ms of CPU, `[[[…32…]]],…` about 170 ms on this machine
 * (measured below) — roughly 40 % of the deep hello the issue measured, and the route reads and
 * parses the whole body before it looks at the session. A session ID that is not open cannot lead
 * anywhere, so it should be refused before the body is read, as the agent-mTLS routes refuse a
 * caller without a certificate (api.md).
 *
 * Fixed here: every JSON body holds at most MAX_JSON_TOKENS arrays, objects and list items
 * (http.json_too_complex, checked in the same byte scan as the depth), and the route refuses a
 * session that is not open before it reads the body (an onRequest hook looks the session up); the
 * first test sends the headers of a 1 MiB body and a few bytes of it and waits for that refusal.
 */
import { request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { BODY_LIMIT, MAX_JSON_DEPTH, MAX_JSON_TOKENS, jsonShape, jsonTooDeep } from '../../src/verifier/http-common.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  tv = await startTestVerifier();
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => tv?.stop());

/** Open a real attestation session with a fresh join token; returns its ID. */
async function openSession(): Promise<string> {
  const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  const csr = createCsr(generateKey('ec-p256'));
  const begin = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: t.token } }, csr: csr.toString('base64') } });
  expect(begin.status).toBe(200);
  return (begin.body as { session: string }).session;
}

/** Headers announcing `length` bytes, then only `first`; resolves with the status if the server answers within `waitMs`. */
function partialPost(path: string, length: number, first: string, waitMs: number): Promise<number | 'no answer'> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: tv.v.port,
        method: 'POST',
        path,
        ca: caPem,
        headers: { 'content-type': 'application/json', 'content-length': String(length) },
        checkServerIdentity: () => undefined,
      },
      (res) => {
        res.resume();
        clearTimeout(timer);
        resolve(res.statusCode ?? 0);
        req.destroy();
      },
    );
    const timer = setTimeout(() => {
      resolve('no answer');
      req.destroy();
    }, waitMs);
    req.on('error', (e) => {
      if (!req.destroyed) reject(e);
    });
    req.write(first);
  });
}

describe('second attestation message for a session that is not open', () => {
  it('is refused before its body is read', async () => {
    const status = await partialPost(`/v1/attest/${'ab'.repeat(16)}`, BODY_LIMIT, '{"responses":{"x":[', 3_000);
    expect(status).toBe(401);
  });

  const M = BODY_LIMIT;
  const shallow = {
    emptyObjects: `{"responses":{"x":[${Array(Math.floor(M / 3) - 20).fill('{}').join(',')}]}}`,
    depth30: `{"responses":{"x":[${Array(Math.floor(M / 62) - 2).fill('['.repeat(29) + ']'.repeat(29)).join(',')}]}}`,
    numbers: `{"responses":{"x":[${Array(Math.floor(M / 2) - 20).fill('1').join(',')}]}}`,
  };

  it.each(Object.keys(shallow))('a shallow megabyte (%s) passes the depth scan but is refused before JSON.parse', async (name) => {
    const body = shallow[name as keyof typeof shallow];
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(M);
    expect(jsonTooDeep(Buffer.from(body), MAX_JSON_DEPTH)).toBe(false);
    const t0 = process.cpuUsage();
    JSON.parse(body);
    const u = process.cpuUsage(t0);
    console.log(`${name}: ${body.length} bytes, ${((u.user + u.system) / 1000).toFixed(0)} ms CPU for JSON.parse`);
    // Unknown session: refused before the body is read.
    const unknown = await httpsJson(tv.v.port, 'POST', `/v1/attest/${'ab'.repeat(16)}`, { caPem, rawBody: body });
    expect([unknown.status, (unknown.body as { error: { code: string } }).error.code]).toEqual([401, 'attest.session_unknown']);
    // An open session (whoever holds a token can open one): refused by the scan, before JSON.parse.
    const session = await openSession();
    const r = await httpsJson(tv.v.port, 'POST', `/v1/attest/${session}`, { caPem, rawBody: body });
    expect([r.status, (r.body as { error: { code: string } }).error.code]).toEqual([400, 'http.json_too_complex']);
  });

  it("Sigil's own largest bodies stay under the limit", () => {
    // 500 CSRs (agent-api maxItems) and 1,000 federation entries: far below MAX_JSON_TOKENS.
    const csrs = JSON.stringify({ csrs: Array.from({ length: 500 }, (_, i) => ({ entryId: `e${i}`, csr: 'AAAA' })) });
    expect(jsonShape(Buffer.from(csrs), MAX_JSON_DEPTH, MAX_JSON_TOKENS)).toBeUndefined();
    expect(jsonShape(Buffer.from(`[${'1,'.repeat(MAX_JSON_TOKENS)}1]`), MAX_JSON_DEPTH, MAX_JSON_TOKENS)).toBe('wide');
    expect(jsonShape(Buffer.from(`["${',['.repeat(MAX_JSON_TOKENS)}"]`), MAX_JSON_DEPTH, MAX_JSON_TOKENS)).toBeUndefined();
  });
});
