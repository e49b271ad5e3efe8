/**
 * What a node attestor's `finish` says about the evidence. DESIGN §3 shapes the attestation result
 * after the RATS EAR draft, with the status "affirming", "warning" or "contraindicated"; a plugin
 * (a third-party module, JavaScript, so its result is not type-checked) that judged its evidence
 * bad and answered `status: "contraindicated"` rather than throwing got its node an SVID anyway:
 * the verifier copied the status into `submods` and reported the whole result as "affirming". The
 * verifier checks a result's selectors and agent ID suffix; it now checks its status too, so a
 * contraindicated factor fails the session and a status it does not know is a plugin bug (500).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const PLUGIN = `export default {
  nodeAttestorVerifier: {
    name: 'judge',
    configSchema: { type: 'object', additionalProperties: false, properties: {} },
    create() {
      return {
        async begin() { return { challenge: {}, state: {} }; },
        async finish(response) {
          const r = { selectors: ['judge:seen'], claims: {}, agentIdSuffix: 'node-' + String(response.status) };
          return response.status === undefined ? r : { ...r, status: response.status };
        },
      };
    },
  },
};
`;

let dir = '';
let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-judge-'));
  writeFileSync(join(dir, 'judge.mjs'), PLUGIN);
  tv = await startTestVerifier({ plugins: { judge: join(dir, 'judge.mjs') }, nodeAttestors: { judge: {} } });
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
});
afterAll(async () => {
  await tv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** One session whose only factor answers with `status`; returns the HTTP status and code or result status. */
async function attest(status: string | undefined): Promise<{ http: number; code?: string; result?: string; svid: boolean }> {
  const csr = createCsr(generateKey('ec-p256')).toString('base64');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { judge: {} }, csr } });
  expect(r1.status).toBe(200);
  const { session } = r1.body as { session: string };
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${session}`, { caPem, body: { responses: { judge: status === undefined ? {} : { status } } } });
  const b = r2.body as { error?: { code: string }; result?: { status: string }; svid?: string[] };
  return { http: r2.status, ...(b.error ? { code: b.error.code } : {}), ...(b.result ? { result: b.result.status } : {}), svid: Array.isArray(b.svid) };
}

describe('the status a node attestor gives its evidence', () => {
  it('"contraindicated" fails the session: no SVID (attest.contraindicated, 403)', async () => {
    expect(await attest('contraindicated')).toEqual({ http: 403, code: 'attest.contraindicated', svid: false });
  });

  it('a status the verifier does not know is a plugin bug: no SVID (attest.bad_status, 500)', async () => {
    expect(await attest('rejected')).toEqual({ http: 500, code: 'attest.bad_status', svid: false });
  });

  it('"warning" and no status still pass', async () => {
    expect(await attest('warning')).toEqual({ http: 200, result: 'warning', svid: true });
    expect(await attest(undefined)).toEqual({ http: 200, result: 'affirming', svid: true });
  });
});
