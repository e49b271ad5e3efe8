/**
 * Interoperability with a client Sigil did not write: Python grpcio (gRPC C-core) with message
 * types declared from the SPIFFE standard (test/support/python/fetch_svid.py), and the result
 * checked by OpenSSL.
 */
import { execFile, spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createUnixAttestor } from '../../src/workload/unix.js';
import { FakeSource, TD, makePki, startTestServer } from './support.js';

const run = promisify(execFile);
const PY = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('../support/python/fetch_svid.py', import.meta.url));
const hasPyGrpc = spawnSync(PY, ['-c', 'import grpc, google.protobuf'], { stdio: 'ignore' }).status === 0;
if (!hasPyGrpc && process.env.CI === 'true') throw new Error('CI must run the Python grpcio interop tests: install python3-grpcio python3-protobuf (scripts/setup.sh does)');
const hasOpenssl = spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
if (process.env.CI === 'true' && (!hasPyGrpc || !hasOpenssl)) {
  throw new Error('CI needs Debian python3-grpcio, python3-protobuf (for /usr/bin/python3) and openssl');
}
if (!hasPyGrpc) console.warn('[skip] /usr/bin/python3 lacks grpc/google.protobuf (apt-get install python3-grpcio python3-protobuf)');

describe.skipIf(!hasPyGrpc || !hasOpenssl)('Python grpcio (C-core) client', () => {
  const source = new FakeSource(makePki());
  const out = mkdtempSync(join(tmpdir(), 'sigil-py-'));
  let t: Awaited<ReturnType<typeof startTestServer>>;
  beforeAll(async () => {
    source.addEntry({ id: 'py', spiffeId: `spiffe://${TD}/python-client`, selectors: [`unix:uid:${process.getuid!()}`], hint: 'py' });
    source.federated.set('other.org', [makePki('other.org').rootDer]);
    t = await startTestServer(source, new Map([['unix', createUnixAttestor({})]]));
  });
  afterAll(async () => {
    await t.cleanup();
    rmSync(out, { recursive: true, force: true });
  });

  it('fetches an X.509-SVID whose chain OpenSSL verifies against the bundle', async () => {
    const r = JSON.parse((await run(PY, [SCRIPT, '--socket', t.socket, '--out', out])).stdout) as {
      ok: boolean;
      svids: { spiffe_id: string; hint: string; chain_len: number; bundle_len: number }[];
      federated: string[];
    };
    expect(r.ok).toBe(true);
    expect(r.svids).toEqual([{ spiffe_id: `spiffe://${TD}/python-client`, hint: 'py', chain_len: 2, bundle_len: 1, key_len: expect.any(Number) }]);
    expect(r.federated).toEqual(['spiffe://other.org']);
    const v = await run('openssl', ['verify', '-CAfile', join(out, 'bundle.pem'), '-untrusted', join(out, 'chain.pem'), join(out, 'svid.pem')]);
    expect(v.stdout.trim()).toBe(`${join(out, 'svid.pem')}: OK`);
    // The key Python received is the SVID's key.
    const leaf = new X509Certificate(readFileSync(join(out, 'svid.pem')));
    const pub = createPublicKey(createPrivateKey(readFileSync(join(out, 'key.pem'))));
    expect(pub.export({ format: 'der', type: 'spki' }).equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
    expect(statSync(join(out, 'key.pem')).mode & 0o777).toBe(0o600);
    // OpenSSL sees the SPIFFE ID as the URI SAN.
    const text = (await run('openssl', ['x509', '-in', join(out, 'svid.pem'), '-noout', '-ext', 'subjectAltName'])).stdout;
    expect(text).toContain(`URI:spiffe://${TD}/python-client`);
  });

  it('fetches a JWT-SVID and bundles, and gets InvalidArgument without the security header', async () => {
    const j = JSON.parse((await run(PY, [SCRIPT, '--socket', t.socket, '--method', 'jwt', '--audience', 'db', '--audience', 'queue'])).stdout) as {
      svids: { spiffe_id: string; svid: string }[];
    };
    expect(j.svids).toHaveLength(1);
    const v = await source.validateJwtSvid(j.svids[0]!.svid, 'queue');
    expect(v.spiffeId).toBe(`spiffe://${TD}/python-client`);
    const b = JSON.parse((await run(PY, [SCRIPT, '--socket', t.socket, '--method', 'bundles'])).stdout) as { bundles: Record<string, number> };
    expect(b.bundles).toEqual({ 'spiffe://example.org': 1, 'spiffe://other.org': 1 });
    const noHeader = JSON.parse((await run(PY, [SCRIPT, '--socket', t.socket, '--no-header'])).stdout) as { ok: boolean; code: string; details: string };
    expect(noHeader).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', details: 'security header missing from request' });
  });
});
