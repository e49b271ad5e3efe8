/** Drives the DESIGN §3 protocol over real HTTPS with agent plugin halves, as the agent does. */
import type { KeyObject } from 'node:crypto';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorAgent } from '../../src/plugins/types.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, type HttpsResult } from './verifier.js';

export interface AttestOutcome {
  begin: HttpsResult;
  finish?: HttpsResult;
  key: { privateKey: KeyObject; publicKey: KeyObject };
  /** mTLS material when attestation succeeded. */
  tls?: { cert: string; key: string };
  responses?: Record<string, unknown>;
}

export async function attestOverHttps(
  port: number,
  caPem: string,
  attesters: Record<string, NodeAttestorAgent>,
  opts: {
    key?: { privateKey: KeyObject; publicKey: KeyObject };
    /** Replace or edit the responses before sending (to replay or tamper). */
    editResponses?: (r: Record<string, unknown>) => Record<string, unknown>;
    /** Pretend the evidence was made for this key instead of the CSR key. */
    bindToSpki?: Buffer;
  } = {},
): Promise<AttestOutcome> {
  const key = opts.key ?? generateKey('ec-p256');
  const hello: Record<string, unknown> = {};
  for (const [n, a] of Object.entries(attesters)) hello[n] = await a.hello();
  const csr = createCsr(key);
  const begin = await httpsJson(port, 'POST', '/v1/attest', { caPem, body: { attestors: hello, csr: csr.toString('base64') } });
  if (begin.status !== 200) return { begin, key };
  const b = begin.body as { session: string; nonce: string; challenges: Record<string, unknown> };
  const nonce = Buffer.from(b.nonce, 'base64');
  const csrSpki = opts.bindToSpki ?? spkiDer(key.publicKey);
  const binding = sessionBinding(nonce, csrSpki);
  let responses: Record<string, unknown> = {};
  for (const [n, a] of Object.entries(attesters)) responses[n] = await a.respond(b.challenges[n], { nonce, binding, csrSpki });
  if (opts.editResponses) responses = opts.editResponses(responses);
  const finish = await httpsJson(port, 'POST', `/v1/attest/${b.session}`, { caPem, body: { responses } });
  const out: AttestOutcome = { begin, finish, key, responses };
  if (finish.status === 200) {
    const svid = (finish.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
    out.tls = { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
  }
  return out;
}

export function errorCode(r: HttpsResult | undefined): string | undefined {
  return (r?.body as { error?: { code?: string } } | undefined)?.error?.code;
}
