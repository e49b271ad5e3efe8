/**
 * `tdx` as one factor of a multi-factor session on a running verifier (requireAttestors: [tdx,
 * join_token]): the quote is bound to the session's CSR key, selectors of both factors are unioned.
 * (The issue's pairing, tdx + tpm with swtpm, is in test/e2e/tpm-agent.test.ts.)
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { collateralKeyOfQuote, writeCollateralDir } from '../../src/tdx/collateral.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { makeCollateral, makeTdxQuote, makeTdxTestPki } from './synthetic.js';

const DAY = 86_400_000;
const now = Date.now();
const pki = makeTdxTestPki({ notBefore: new Date(now - DAY), notAfter: new Date(now + 365 * DAY) });
let tv: TestVerifier;
let caPem: string;

beforeAll(async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'sigil-tdx-mf-')), 'collateral');
  const dates = { issueDate: new Date(now - DAY), nextUpdate: new Date(now + 29 * DAY) };
  await writeCollateralDir(
    dir,
    collateralKeyOfQuote(makeTdxQuote(pki)),
    makeCollateral(pki, { tcbInfo: dates, qeIdentity: dates, crlThisUpdate: dates.issueDate, crlNextUpdate: dates.nextUpdate }),
  );
  tv = await startTestVerifier({
    nodeAttestors: { join_token: {}, tdx: { collateralDir: dir, rootSha256: pki.rootSha256 } },
    requireAttestors: ['tdx', 'join_token'],
  });
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
}, 60_000);
afterAll(async () => tv?.stop());

async function attest(quoteFor: (binding: Buffer) => Buffer) {
  const t = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { tdx: {}, join_token: { token: t.token } }, csr: createCsr(key).toString('base64') } });
  expect(r1.status).toBe(200);
  const b1 = r1.body as { session: string; nonce: string };
  const binding = sessionBinding(Buffer.from(b1.nonce, 'base64'), spkiDer(key.publicKey));
  return httpsJson(tv.v.port, 'POST', `/v1/attest/${b1.session}`, { caPem, body: { responses: { tdx: { quote: quoteFor(binding).toString('base64') }, join_token: {} } } });
}

describe('tdx in a multi-factor session', () => {
  it('issues a node SVID named after the tdx factor when both factors pass', async () => {
    const r = await attest((binding) => makeTdxQuote(pki, { reportData: Buffer.concat([binding, Buffer.alloc(32)]) }));
    expect(r.status).toBe(200);
    const b = r.body as { agentId: string; result: { submods: Record<string, { selectors: string[] }> } };
    expect(b.agentId).toBe(`spiffe://example.org/sigil/agent/tdx/${'11'.repeat(16)}`);
    expect(b.result.submods.tdx!.selectors).toContain('tdx:tcb_status:UpToDate');
  });

  it('refuses a quote bound to another key (a replayed quote) and fails the whole session', async () => {
    const other = sessionBinding(Buffer.alloc(32, 7), spkiDer(generateKey('ec-p256').publicKey));
    const r = await attest(() => makeTdxQuote(pki, { reportData: Buffer.concat([other, Buffer.alloc(32)]) }));
    expect(r.status).toBe(403);
    expect((r.body as { error: { code: string } }).error.code).toBe('tdx.report_data_mismatch');
  });
});
