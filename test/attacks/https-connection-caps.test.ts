/**
 * The verifier's HTTPS listener caps open connections in all and per source address: one host
 * holding idle sockets cannot use up the verifier's file descriptors and lock every agent out.
 * Connections over a cap are closed at accept, before any TLS work; another address still gets in.
 */
import type { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { freePort } from '../agent/harness.js';
import { idleProbe } from '../support/idle-probe.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';

let tv: TestVerifier;
let port: number;
const held: Socket[] = [];

beforeAll(async () => {
  port = await freePort();
  tv = await startTestVerifier({ listen: { address: '127.0.0.1', port, maxConnectionsPerAddress: 4, maxConnections: 6 } });
});
afterAll(async () => {
  for (const s of held) s.destroy();
  await tv?.stop();
});

/** Connect from `localAddress`; resolves 'open' if the socket is still open after 300 ms, 'closed' if the server closed it. */
function probe(localAddress: string, keep: boolean): Promise<'open' | 'closed'> {
  return idleProbe(port, localAddress, keep, held);
}

describe('HTTPS connection caps', () => {
  it('closes connections over the per-address cap at once; another address still gets in', async () => {
    for (let i = 0; i < 4; i++) expect(await probe('127.0.0.1', true)).toBe('open');
    expect(await probe('127.0.0.1', false)).toBe('closed');
    expect(await probe('127.0.0.2', true)).toBe('open');
  });

  it('closes connections over the total cap; a closed connection frees its slot', async () => {
    expect(await probe('127.0.0.3', true)).toBe('open');
    expect(await probe('127.0.0.4', false)).toBe('closed');
    held.pop()?.destroy();
    await new Promise((r) => setTimeout(r, 200));
    for (const s of held.splice(0)) s.destroy();
    await new Promise((r) => setTimeout(r, 200));
    const caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
    const r = await httpsJson(port, 'GET', '/healthz', { caPem });
    expect(r.status).toBe(200);
  });
});
