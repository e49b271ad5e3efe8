/**
 * The node SVID expires by itself also on a connection opened while it was valid. TLS checks the
 * client certificate once, at the handshake; an agent's keep-alive connection (a long-poll every
 * 20 s) outlives it. Attack: keep the connection of an expired (stolen or decommissioned) node SVID
 * and go on syncing, minting workload SVIDs and renewing the node SVID itself on it.
 */
import { X509Certificate } from 'node:crypto';
import { Agent as HttpsAgent, request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, startTestVerifier } from '../support/verifier.js';

type Started = Awaited<ReturnType<typeof startTestVerifier>>;
interface Answer {
  status: number;
  body: { error?: { code: string; message: string }; entries?: { spiffeId: string }[]; svid?: string[] } | undefined;
  connection: string | undefined;
  localPort: number | undefined;
}

describe('a node SVID that expires while its connection is open', () => {
  let t: Started;
  beforeAll(async () => {
    t = await startTestVerifier({ svid: { agentTtl: '3s' } });
  });
  afterAll(async () => {
    await t.stop();
  });

  it('is refused on that connection (agent.svid_expired, and the connection is closed): no sync, no workload SVID, no renewal', async () => {
    const caPem = String(await adminCall(t.adminSocket, 'GET', '/v1/admin/bundle?format=pem'));
    const tok = await adminCall<{ token: string; agentId: string }>(t.adminSocket, 'POST', '/v1/admin/tokens', {});
    const key = generateKey('ec-p256');
    const hello = await httpsJson(t.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
    const done = await httpsJson(t.v.port, 'POST', `/v1/attest/${(hello.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
    const svid = (done.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
    const notAfter = Date.parse(new X509Certificate(svid[0]!).validTo);
    const entry = await adminCall<{ id: string }>(t.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/web', parentId: tok.agentId, selectors: ['unix:uid:1'] });

    const tls = { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
    const keep = new HttpsAgent({ keepAlive: true, maxSockets: 1 });
    const call = (method: string, path: string, body?: unknown): Promise<Answer> =>
      new Promise((resolve, reject) => {
        const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
        const req = request(
          { host: '127.0.0.1', port: t.v.port, method, path, ca: caPem, ...tls, agent: keep, headers: payload ? { 'content-type': 'application/json' } : {}, checkServerIdentity: () => undefined },
          (res) => {
            const chunks: Buffer[] = [];
            const localPort = res.socket.localPort;
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined, connection: res.headers.connection, localPort }));
          },
        );
        req.on('error', reject);
        req.end(payload);
      });
    try {
      const before = await call('GET', '/v1/entries/authorized');
      expect(before.status).toBe(200);
      expect(before.body?.entries?.map((e) => e.spiffeId)).toEqual(['spiffe://example.org/web']);
      // Keep the connection in use while the certificate is valid (as a long-poll would), stopping
      // well before notAfter: a call that lands just after it is answered 401 and closes the
      // connection, and the check below needs that connection. Then wait (under the server's 10-s
      // keep-alive) until it has expired.
      while (Date.now() + 800 < notAfter) {
        const r = await call('GET', '/v1/entries/authorized');
        expect(r.status).toBe(200);
        expect(r.localPort).toBe(before.localPort);
        await new Promise((res) => setTimeout(res, 400));
      }
      await new Promise((res) => setTimeout(res, Math.max(0, notAfter + 50 - Date.now())));
      const sync = await call('GET', '/v1/entries/authorized');
      expect(sync.localPort).toBe(before.localPort); // the same connection, opened while the SVID was valid
      expect(sync.status).toBe(401);
      expect(sync.body?.error?.code).toBe('agent.svid_expired');
      expect(sync.body?.error?.message).toMatch(/expired at/);
      expect(sync.connection).toBe('close');
      // Each of these opens a new connection, whose handshake refuses the expired certificate.
      const x509 = await call('POST', '/v1/svid/x509', { csrs: [{ entryId: entry.id, csr: createCsr(generateKey('ec-p256')).toString('base64') }] });
      expect(x509.status).toBe(401);
      const renew = await call('POST', '/v1/agent/renew', { csr: createCsr(generateKey('ec-p256')).toString('base64') });
      expect(renew.status).toBe(401);
      expect(renew.body?.svid).toBeUndefined();
    } finally {
      keep.destroy();
    }
  }, 20_000);
});
