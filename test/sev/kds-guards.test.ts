/**
 * How the `sev_snp` verifier spends and caches AMD KDS requests, at plugin level (agent ↔ verifier
 * rounds through JSON, a local HTTP server standing in for KDS):
 * - a fetched ASK+ARK chain is cached as soon as it checks out on its own, so a made-up VCEK cannot
 *   make every session fetch the genuine chain again and use up the shared request budget; a chain
 *   that does not check out (unpinned ARK, expired) is not cached;
 * - a fetched VCEK of another chip or TCB is never cached under the requested chip's key;
 * - a v2 report (no CPUID) whose agent VCEK names a product line the report did not pass the
 *   pre-checks as never causes a chain request;
 * - `kds.baseUrl` must be https:// unless its host is loopback.
 *
 * These tests count VCEK/chain requests, so the verifiers here run with `crl: { mode: 'off' }` (with
 * KDS enabled the default is `require`, which adds a CRL request per product line): AMD's CRL is
 * covered by test/sev/crl-plugin.test.ts and test/attacks/sev-crl-revocation.test.ts.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorVerifier, SessionInput, VerifierPluginDeps } from '../../src/plugins/types.js';
import { CERT_GUIDS, buildCertTable } from '../../src/sev/certtable.js';
import { chainFileName, kdsChainUrl, kdsVcekUrl, vcekFileName } from '../../src/sev/collateral.js';
import { createSevAgent, createSevVerifier } from '../../src/sev/plugin.js';
import { type SnpTestChain, makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { MemoryState } from '../tpm/memory-state.js';
import { FakeTsm } from './fake-tsm.js';
import { codeOfAsync } from './helpers.js';

const NOW = new Date('2026-03-01T12:00:00Z');
const logger = pino({ level: 'silent' });
let tmp = '';
const vdeps = (): VerifierPluginDeps => ({ trustDomain: 'example.org', logger, now: () => NOW, state: new MemoryState(), configDir: tmp });
const wire = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

const milan = makeSnpTestChain('milan');
const turin = makeSnpTestChain('turin');

/** The local KDS: answers by path+query; everything else is a 404. Every request path is recorded. */
let server: Server;
let base = '';
const requests: string[] = [];
const routes = new Map<string, Buffer | string>();
const pathOf = (url: string): string => new URL(url).pathname + new URL(url).search;
const chainPath = (product: 'milan' | 'turin'): string => pathOf(kdsChainUrl('http://x', product, 'vcek'));
const vcekPath = (c: SnpTestChain): string => pathOf(kdsVcekUrl('http://x', c.product, c.chipId, c.reportedTcb));

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-sev-kds-guards-'));
  server = createServer((req, res) => {
    requests.push(req.url ?? '');
    const body = routes.get(req.url ?? '');
    if (body === undefined) res.statusCode = 404;
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});
afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(tmp, { recursive: true, force: true });
});
beforeEach(() => {
  requests.length = 0;
  routes.clear();
  // The genuine (pinned) chains and the VCEKs of the two genuine nodes.
  routes.set(chainPath('milan'), milan.chainPem);
  routes.set(chainPath('turin'), turin.chainPem);
  routes.set(vcekPath(milan), milan.endorsement);
  routes.set(vcekPath(turin), turin.endorsement);
});

/** One session: a guest whose reports are signed with `signer` (and shaped by `report`), sending `aux` as its certificate table. */
async function round(verifier: NodeAttestorVerifier, signer: SnpTestChain, aux: Buffer | null, report: Partial<Parameters<typeof makeSnpReport>[0]> = {}) {
  const fs = new FakeTsm({
    produce: (inblob, privlevel) => ({ report: makeSnpReport({ chain: signer, reportData: inblob, vmpl: privlevel ?? 0, ...report }), ...(aux ? { aux } : {}) }),
  });
  const agent = createSevAgent({ configfsRoot: fs.root, transport: 'configfs' }, { trustDomain: 'example.org', logger, dataDir: tmp, configDir: tmp, now: () => NOW }, { fs });
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  const s: SessionInput = { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: NOW };
  const { challenge, state } = await verifier.begin(wire(await agent.hello()), s);
  const response = wire(await agent.respond(wire(challenge), { nonce, binding: s.binding, csrSpki }));
  return verifier.finish(response, wire(state), s);
}

/** A host certificate table holding only a VCEK. */
const vcekOnly = (c: SnpTestChain): Buffer => buildCertTable([{ guid: CERT_GUIDS.vcek, data: c.endorsement }], 8192);

describe('a fetched chain is cached once it checks out on its own, whatever VCEK came with it', () => {
  it('a made-up VCEK costs one chain request in all, so a genuine node still gets its VCEK from KDS', async () => {
    // Same names as AMD's chain, other keys: the agent's VCEK does not verify through the real chain.
    const rogue = makeSnpTestChain('milan', { keyTag: 'kds-guards-rogue' });
    const verifier = createSevVerifier({ arkSha256: milan.arkPins, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base, maxRequestsPerMinute: 3 } }, vdeps());
    const codes: string[] = [];
    for (let i = 0; i < 5; i++) codes.push(await codeOfAsync(() => round(verifier, rogue, vcekOnly(rogue))));
    expect(codes).toEqual(Array(5).fill('sev.cert_signature_invalid'));
    expect(requests).toEqual([chainPath('milan')]);
    // A genuine node whose VCEK the verifier has to fetch: one more request, within the budget.
    expect(await codeOfAsync(() => round(verifier, milan, null))).toBe('no error');
    expect(requests).toEqual([chainPath('milan'), vcekPath(milan)]);
  });

  it('with a collateral directory the chain is written there, the made-up VCEK is not', async () => {
    const dir = join(tmp, 'rogue-dir');
    const rogue = makeSnpTestChain('milan', { keyTag: 'kds-guards-rogue' });
    const verifier = createSevVerifier({ arkSha256: milan.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    expect(await codeOfAsync(() => round(verifier, rogue, vcekOnly(rogue)))).toBe('sev.cert_signature_invalid');
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(true);
    expect(existsSync(vcekFileName(dir, 'milan', rogue.chipId, rogue.reportedTcb))).toBe(false);
    // A second verifier on the same directory needs no request for the chain.
    requests.length = 0;
    const other = createSevVerifier({ arkSha256: milan.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    expect(await codeOfAsync(() => round(other, milan, vcekOnly(milan)))).toBe('no error');
    expect(requests).toEqual([]);
  });

  it('a chain whose ARK is not the pinned root is not cached (asked again next time)', async () => {
    const dir = join(tmp, 'unpinned-chain');
    const impostor = makeSnpTestChain('milan', { keyTag: 'kds-guards-impostor' });
    routes.set(chainPath('milan'), impostor.chainPem);
    const verifier = createSevVerifier({ arkSha256: milan.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    for (let i = 0; i < 2; i++) expect(await codeOfAsync(() => round(verifier, impostor, vcekOnly(impostor)))).toBe('sev.ark_untrusted');
    expect(requests).toEqual([chainPath('milan'), chainPath('milan')]);
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(false);
  });

  it('a chain that is not valid at the session time is not cached', async () => {
    const dir = join(tmp, 'expired-chain');
    const expired = makeSnpTestChain('milan', { keyTag: 'kds-guards-expired', notBefore: new Date('2019-01-01T00:00:00Z'), notAfter: new Date('2025-01-01T00:00:00Z') });
    routes.set(chainPath('milan'), expired.chainPem);
    const verifier = createSevVerifier({ arkSha256: expired.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    for (let i = 0; i < 2; i++) expect(await codeOfAsync(() => round(verifier, expired, vcekOnly(expired)))).toBe('sev.cert_expired');
    expect(requests).toEqual([chainPath('milan'), chainPath('milan')]);
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(false);
  });
});

describe('a fetched VCEK of another chip or TCB is not cached under the requested key', () => {
  const cases: [string, (victim: SnpTestChain) => SnpTestChain, string][] = [
    ['another chip\'s genuine VCEK', () => makeSnpTestChain('milan'), 'sev.chip_id_mismatch'],
    ['this chip\'s VCEK for another TCB', (victim) => makeSnpTestChain('milan', { chipId: victim.chipId, tcb: { snp: victim.tcb.snp + 1 } }), 'sev.tcb_mismatch'],
  ];
  for (const [name, wrongFor, code] of cases) {
    it(`${name} → ${code}, nothing cached; once KDS answers right, the chip attests`, async () => {
      const dir = join(tmp, `wrong-vcek-${code}`);
      const victim = makeSnpTestChain('milan');
      routes.set(vcekPath(victim), wrongFor(victim).endorsement);
      const verifier = createSevVerifier({ arkSha256: milan.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
      expect(await codeOfAsync(() => round(verifier, victim, null))).toBe(code);
      expect(existsSync(vcekFileName(dir, 'milan', victim.chipId, victim.reportedTcb))).toBe(false);
      routes.set(vcekPath(victim), victim.endorsement);
      expect(await codeOfAsync(() => round(verifier, victim, null))).toBe('no error');
      expect(existsSync(vcekFileName(dir, 'milan', victim.chipId, victim.reportedTcb))).toBe(true);
      expect(requests.filter((u) => u === vcekPath(victim)).length).toBe(2);
    });
  }
});

describe('v2 report (no CPUID): no chain request for a line the report did not pass the pre-checks as', () => {
  const cfg = () => ({ arkSha256: { ...milan.arkPins, ...turin.arkPins }, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } });
  it('agent VCEK for Turin, report passes only as Milan → refused as a product mismatch, no KDS request', async () => {
    // A Milan-shaped report (64-byte CHIP_ID, Milan TCB layout) signed by a Turin VCEK the agent sends.
    const turinSigner = { ...turin, chipId: milan.chipId, reportedTcb: milan.reportedTcb, tcb: milan.tcb };
    const verifier = createSevVerifier({ ...cfg(), products: ['milan'] }, vdeps());
    expect(await codeOfAsync(() => round(verifier, turinSigner, vcekOnly(turin), { version: 2 }))).toBe('sev.product_mismatch');
    expect(requests).toEqual([]);
  });
  it('agent VCEK for a line outside `products` that the report would fit → sev.product_not_allowed, no KDS request', async () => {
    const verifier = createSevVerifier({ ...cfg(), products: ['genoa'] }, vdeps());
    expect(await codeOfAsync(() => round(verifier, milan, vcekOnly(milan), { version: 2 }))).toBe('sev.product_not_allowed');
    expect(requests).toEqual([]);
  });
  it('control: the agent VCEK\'s line among the candidates → the chain is fetched and the report verifies', async () => {
    const verifier = createSevVerifier(cfg(), vdeps());
    expect(await codeOfAsync(() => round(verifier, turin, vcekOnly(turin), { version: 2 }))).toBe('no error');
    expect(requests).toEqual([chainPath('turin')]);
  });
});

describe('kds.baseUrl in the verifier config', () => {
  it('http:// to a non-loopback host is a config error, enabled or not; https and loopback http are accepted', async () => {
    for (const enabled of [true, false]) {
      const err = await (async () => {
        try {
          createSevVerifier({ kds: { enabled, baseUrl: 'http://kdsintf.amd.com' } }, vdeps());
        } catch (e) {
          return e as { code?: string; message?: string };
        }
        return undefined;
      })();
      expect(err?.code).toBe('sev.config_invalid');
      expect(err?.message).toMatch(/kds\.baseUrl .* must use https:\/\//);
    }
    expect(await codeOfAsync(async () => createSevVerifier({ kds: { enabled: true, baseUrl: 'https://kdsintf.amd.com' } }, vdeps()))).toBe('no error');
    expect(await codeOfAsync(async () => createSevVerifier({ crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps()))).toBe('no error');
    expect(await codeOfAsync(async () => createSevVerifier({ kds: { enabled: true } }, vdeps()))).toBe('no error');
  });
});
