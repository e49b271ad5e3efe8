/**
 * The `sev_snp` verifier and AMD's CRL: fetched through the KDS client (`/vcek/v1/<Product>/crl`,
 * `/vlek/v1/<Product>/crl`), checked against the pinned ARK, cached (memory and collateralDir)
 * until its nextUpdate; `crl.mode` decides what happens when no usable CRL can be had (default
 * `require` with KDS enabled, `best_effort` without).
 */
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { FetchLike } from '../../src/sev/collateral.js';
import { crlFileName, kdsCrlUrl } from '../../src/sev/collateral.js';
import { createSevVerifier } from '../../src/sev/plugin.js';
import { reportDataForBinding } from '../../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { crlFor, ownArk, serialOf } from './crl-fixtures.js';
import { codeOfAsync } from './helpers.js';

const NOW = new Date('2026-03-01T12:00:00Z');
const DAY = 86_400_000;
const THIS = new Date(NOW.getTime() - DAY);
const NEXT = new Date(NOW.getTime() + 7 * DAY);
const BASE = 'https://kds.test';

const milan = makeSnpTestChain('milan', { keyTag: 'crl-plugin' });
const root = ownArk(milan);
const binding = Buffer.alloc(32, 3);
const response = {
  report: makeSnpReport({ chain: milan, reportData: reportDataForBinding(binding) }).toString('base64'),
  certs: { vcek: milan.endorsement.toString('base64'), ask: root.intermediate.toString('base64'), ark: root.ark.toString('base64') },
};
const session = (now = NOW) => ({ binding, now, nonce: Buffer.alloc(32), csrSpki: Buffer.alloc(0) }) as never;

const warnings: unknown[] = [];
const logger = { warn: (o: unknown, msg?: string) => warnings.push([o, msg]), info() {}, debug() {}, error() {} };
let tmp = '';
const deps = () => ({ configDir: tmp, logger, trustDomain: 'example.org', now: () => NOW }) as never;

/** Fake KDS: answers from `routes` by URL; every request recorded. */
const routes = new Map<string, Buffer>();
const requests: string[] = [];
const fetch: FetchLike = async (url) => {
  requests.push(url);
  const body = routes.get(url);
  return new Response(body ?? null, { status: body ? 200 : 404 }) as never;
};
const crlUrl = kdsCrlUrl(BASE, 'milan', 'vcek');

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-sev-crl-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});
beforeEach(() => {
  routes.clear();
  requests.length = 0;
  warnings.length = 0;
});

const verifier = (extra: Record<string, unknown> = {}) => createSevVerifier({ arkSha256: root.arkPins, kds: { enabled: true, baseUrl: BASE }, ...extra }, deps(), { fetch });

describe('sev_snp verifier: AMD CRL from KDS', () => {
  it('KDS enabled: the CRL is fetched once, checked, cached until its nextUpdate, then fetched again', async () => {
    routes.set(crlUrl, crlFor(root, THIS, NEXT));
    const v = verifier();
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('no error');
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('no error');
    expect(requests).toEqual([crlUrl]);
    // Past nextUpdate the cached CRL is not used: a newer one is fetched.
    const later = new Date(NEXT.getTime() + DAY);
    routes.set(crlUrl, crlFor(root, later, new Date(later.getTime() + 7 * DAY)));
    expect(await codeOfAsync(() => v.finish(response, {}, session(new Date(later.getTime() + 1000))))).toBe('no error');
    expect(requests).toEqual([crlUrl, crlUrl]);
  });

  it('the ASK on the KDS CRL → sev.cert_revoked', async () => {
    routes.set(crlUrl, crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]));
    expect(await codeOfAsync(() => verifier().finish(response, {}, session()))).toBe('sev.cert_revoked');
  });

  it('default with KDS enabled is require: no CRL (404) → sev.crl_unavailable; a CRL that does not verify → sev.crl_invalid', async () => {
    expect(await codeOfAsync(() => verifier().finish(response, {}, session()))).toBe('sev.crl_unavailable');
    routes.set(crlUrl, crlFor(ownArk(milan), THIS, NEXT));
    expect(await codeOfAsync(() => verifier().finish(response, {}, session()))).toBe('sev.crl_invalid');
    routes.set(crlUrl, Buffer.alloc(70 * 1024, 0x30)); // over the KDS size cap
    expect(await codeOfAsync(() => verifier().finish(response, {}, session()))).toBe('sev.crl_unavailable');
  });

  it('an invalid CRL is not cached: once KDS serves a good one it is used', async () => {
    routes.set(crlUrl, crlFor(ownArk(milan), THIS, NEXT));
    const v = verifier();
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('sev.crl_invalid');
    routes.set(crlUrl, crlFor(root, THIS, NEXT));
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('no error');
  });

  it('crl.mode best_effort: no CRL → accepted with a warning; a revoked ASK is still refused', async () => {
    expect(await codeOfAsync(() => verifier({ crl: { mode: 'best_effort' } }).finish(response, {}, session()))).toBe('no error');
    expect(JSON.stringify(warnings)).toContain('revocation not checked');
    routes.set(crlUrl, crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]));
    expect(await codeOfAsync(() => verifier({ crl: { mode: 'best_effort' } }).finish(response, {}, session()))).toBe('sev.cert_revoked');
  });

  it('a report that fails anyway (VCEK of another key: signature chain broken) never costs a CRL request', async () => {
    routes.set(crlUrl, crlFor(root, THIS, NEXT));
    const rogue = makeSnpTestChain('milan', { keyTag: 'crl-plugin-rogue' });
    const forged = { ...response, certs: { ...response.certs, vcek: rogue.endorsement.toString('base64') } };
    expect(await codeOfAsync(() => verifier().finish(forged, {}, session()))).toBe('sev.cert_signature_invalid');
    const badSig = { ...response, report: makeSnpReport({ chain: rogue, reportData: reportDataForBinding(binding), chipId: milan.chipId }).toString('base64') };
    expect(await codeOfAsync(() => verifier().finish(badSig, {}, session()))).toBe('sev.signature_invalid');
    expect(requests).toEqual([]);
  });

  it('a verified CRL that revokes the ASK is cached too: the next session is refused without a request', async () => {
    routes.set(crlUrl, crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]));
    const v = verifier();
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('sev.cert_revoked');
    routes.delete(crlUrl);
    expect(await codeOfAsync(() => v.finish(response, {}, session()))).toBe('sev.cert_revoked');
    expect(requests).toEqual([crlUrl]);
  });

  it('crl.mode off: no CRL request at all', async () => {
    routes.set(crlUrl, crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]));
    expect(await codeOfAsync(() => verifier({ crl: { mode: 'off' } }).finish(response, {}, session()))).toBe('no error');
    expect(requests).toEqual([]);
  });

  it('an unknown crl.mode is a config error', async () => {
    expect(await codeOfAsync(async () => verifier({ crl: { mode: 'sometimes' } }))).toBe('sev.config_invalid');
    expect(await codeOfAsync(async () => verifier({ crl: { mode: 'off', extra: 1 } }))).toBe('sev.config_invalid');
  });
});

describe('sev_snp verifier: AMD CRL in the collateral directory', () => {
  it('a verified KDS CRL is written to collateralDir; a verifier without KDS then uses it (and is best_effort by default)', async () => {
    const dir = join(tmp, 'dir1');
    const crl = crlFor(root, THIS, NEXT);
    routes.set(crlUrl, crl);
    expect(await codeOfAsync(() => verifier({ collateralDir: dir }).finish(response, {}, session()))).toBe('no error');
    const file = crlFileName(dir, 'milan', 'vcek');
    expect(existsSync(file)).toBe(true);
    expect((await readFile(file)).equals(crl)).toBe(true);
    // Offline verifier: CRL from the directory, a revoked ASK there is refused.
    const offline = createSevVerifier({ arkSha256: root.arkPins, collateralDir: dir }, deps());
    expect(await codeOfAsync(() => offline.finish(response, {}, session()))).toBe('no error');
    await writeFile(file, crlFor(root, THIS, NEXT, [serialOf(root.intermediate)]));
    const offline2 = createSevVerifier({ arkSha256: root.arkPins, collateralDir: dir }, deps());
    expect(await codeOfAsync(() => offline2.finish(response, {}, session()))).toBe('sev.cert_revoked');
  });

  it('without KDS or a CRL file the default (best_effort) accepts, with a warning; require refuses', async () => {
    const dir = join(tmp, 'dir2');
    await mkdir(dir, { recursive: true });
    expect(await codeOfAsync(() => createSevVerifier({ arkSha256: root.arkPins, collateralDir: dir }, deps()).finish(response, {}, session()))).toBe('no error');
    expect(await codeOfAsync(() => createSevVerifier({ arkSha256: root.arkPins }, deps()).finish(response, {}, session()))).toBe('no error');
    expect(await codeOfAsync(() => createSevVerifier({ arkSha256: root.arkPins, crl: { mode: 'require' } }, deps()).finish(response, {}, session()))).toBe('sev.crl_unavailable');
  });

  it('a CRL file that does not verify (another key) with KDS enabled: a good one is fetched and replaces it', async () => {
    const dir = join(tmp, 'dir4');
    await mkdir(dir, { recursive: true });
    await writeFile(crlFileName(dir, 'milan', 'vcek'), crlFor(ownArk(milan), THIS, NEXT));
    const good = crlFor(root, THIS, NEXT);
    routes.set(crlUrl, good);
    expect(await codeOfAsync(() => verifier({ collateralDir: dir }).finish(response, {}, session()))).toBe('no error');
    expect(requests).toEqual([crlUrl]);
    expect((await readFile(crlFileName(dir, 'milan', 'vcek'))).equals(good)).toBe(true);
  });

  it('an expired CRL file with KDS enabled: a fresh one is fetched', async () => {
    const dir = join(tmp, 'dir3');
    await mkdir(dir, { recursive: true });
    await writeFile(crlFileName(dir, 'milan', 'vcek'), crlFor(root, new Date(THIS.getTime() - 30 * DAY), new Date(THIS.getTime() - 20 * DAY)));
    routes.set(crlUrl, crlFor(root, THIS, NEXT));
    expect(await codeOfAsync(() => verifier({ collateralDir: dir }).finish(response, {}, session()))).toBe('no error');
    expect(requests).toEqual([crlUrl]);
  });
});
