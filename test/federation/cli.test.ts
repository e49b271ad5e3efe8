/**
 * `sigil federation create|list|show|update|delete|refresh` run as a real process (the CLI entry
 * point) against real verifiers' admin sockets: A = example.org manages a relationship with
 * B = other.org, whose verifier publishes its bundle on an https_spiffe bundle endpoint; the first
 * bundle is carried out of band with `sigil bundle show --format spiffe` as docs/federation.md says.
 * Bad input: one line on stderr naming the error code, exit 1 (refused by the verifier or a file
 * that cannot be read) or 2 (usage).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { x509Of } from './support.js';
import { cliArgv } from '../support/cli-argv.js';

const A = 'example.org';
const B = 'other.org';
const root = resolve(__dirname, '../..');

let dir: string;
let va: TestVerifier;
let vb: TestVerifier;
let bundleFile: string;
let endpointUrl: string;

interface Run {
  code: number | null;
  out: string;
  err: string;
}

// Each call is a Node process loading the CLI through tsx: seconds apiece on a loaded machine,
// hence the long test timeouts. Asynchronous on purpose: the verifiers run in this process and must keep answering.
function sigil(args: string[], socket = va.adminSocket): Promise<Run> {
  return new Promise((res) => {
    execFile(
      cliArgv()[0]!,
      [...cliArgv().slice(1), ...args],
      { cwd: root, encoding: 'utf8', env: { ...process.env, SIGIL_ADMIN_SOCKET: socket }, timeout: 60_000 },
      (error, stdout, stderr) => res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr }),
    );
  });
}

/** A refusal: exit 1 (or 2 for usage), exactly one line on stderr carrying the code. */
function expectRefused(r: Run, code: string | RegExp, exit = 1): void {
  expect({ exit: r.code, out: r.out }).toEqual({ exit, out: '' });
  const lines = r.err.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(typeof code === 'string' ? new RegExp(`^sigil: ${code.replace(/\./g, '\\.')}: `) : code);
}

const createArgs = (extra: string[] = []) => ['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', endpointUrl, '--profile', 'https_spiffe', '--endpoint-spiffe-id', `spiffe://${B}/sigil/verifier`, '--trust-bundle', bundleFile, ...extra];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-fedcli-'));
  vb = await startTestVerifier({ trustDomain: B, federation: { bundleEndpoint: { address: '127.0.0.1', port: 0, profile: 'https_spiffe' } } }, { dir: join(dir, 'vb') });
  va = await startTestVerifier({ trustDomain: A, federation: { refresh: { min: '1s', maxBackoff: '1s' } } }, { dir: join(dir, 'va') });
  endpointUrl = `https://127.0.0.1:${vb.v.bundleEndpointPort}/`;
  // The first test writes this file again from `sigil bundle show`; the others may run alone.
  bundleFile = join(dir, 'other.org.json');
  writeFileSync(bundleFile, JSON.stringify(await adminCall(vb.adminSocket, 'GET', '/v1/admin/bundle')));
}, 30_000);

afterAll(async () => {
  await va?.stop();
  await vb?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('sigil federation', () => {
  it('B\'s operator exports the bundle; A\'s creates, lists, shows, refreshes, updates and deletes the relationship', async () => {
    const exported = await sigil(['bundle', 'show', '--format', 'spiffe'], vb.adminSocket);
    expect(exported.code).toBe(0);
    writeFileSync(bundleFile, exported.out);
    const published = JSON.parse(exported.out) as { keys: unknown[]; spiffe_sequence: number };

    const created = await sigil(createArgs());
    expect(created.err).toBe('');
    expect(created.code).toBe(0);
    expect(created.out).toContain(`Trust domain: ${B}`);
    expect(created.out).toContain(`Bundle endpoint: ${endpointUrl} (https_spiffe, spiffe://${B}/sigil/verifier)`);
    expect(created.out).toContain(`Bundle: sequence ${published.spiffe_sequence}, 1 X.509 / 1 JWT authorities`);

    const [list, listText, refreshed] = await Promise.all([sigil(['federation', 'list', '--json']), sigil(['federation', 'list']), sigil(['federation', 'refresh', B, '--json'])]);
    expect(list.code).toBe(0);
    expect((JSON.parse(list.out) as { relationships: RelationshipView[] }).relationships.map((r) => [r.trustDomain, r.profile, r.declaredInConfig])).toEqual([[B, 'https_spiffe', false]]);
    expect(listText.out).toContain(`Trust domain: ${B}`);
    expect(refreshed.code).toBe(0);
    const rv = JSON.parse(refreshed.out) as RelationshipView;
    expect(rv.refresh.lastSuccessAt).toBeDefined();
    expect(rv.refresh.lastError).toBeUndefined();

    const shown = await sigil(['federation', 'show', B, '--json']);
    expect(shown.code).toBe(0);
    const sv = JSON.parse(shown.out) as RelationshipView & { bundle: { keys: unknown[] } };
    expect(x509Of(sv.bundle)).toEqual(x509Of(published));
    const shownText = await sigil(['federation', 'show', `spiffe://${B}`]);
    expect(shownText.code).toBe(0);
    expect(shownText.out).toMatch(/Last refresh: \d{4}-/);
    expect(shownText.out).toContain('"use": "x509-svid"');

    // Point it at a dead endpoint: refresh fails with a coded error, the last good bundle stays.
    const moved = await sigil(['federation', 'update', B, '--bundle-endpoint-url', 'https://127.0.0.1:1/', '--json']);
    expect(moved.code).toBe(0);
    expect((JSON.parse(moved.out) as RelationshipView).bundleEndpointUrl).toBe('https://127.0.0.1:1/');
    expectRefused(await sigil(['federation', 'refresh', B]), 'federation.endpoint_unreachable');
    const kept = await sigil(['federation', 'show', B]);
    expect(kept.out).toContain(`Bundle: sequence ${published.spiffe_sequence}`);
    expect(kept.out).toMatch(/Last error: federation\.endpoint_unreachable: .*127\.0\.0\.1:1/);
    expect((await sigil(['federation', 'update', B, '--bundle-endpoint-url', endpointUrl])).code).toBe(0);
    expect((await sigil(['federation', 'refresh', B])).code).toBe(0);

    expectRefused(await sigil(createArgs()), 'federation.exists');

    // Entries federate with it (--federates-with, repeatable, bare or spiffe:// form); not with an unknown or the own trust domain.
    const [entry, unknown, local] = await Promise.all([
      sigil(['entry', 'create', '--spiffe-id', `spiffe://${A}/fed`, '--parent-id', `spiffe://${A}/node`, '--selector', 'unix:uid:1', '--federates-with', B, '--federates-with', `spiffe://${B}`, '--json']),
      sigil(['entry', 'create', '--spiffe-id', `spiffe://${A}/fed2`, '--parent-id', `spiffe://${A}/node`, '--selector', 'unix:uid:1', '--federates-with', 'third.org']),
      sigil(['entry', 'create', '--spiffe-id', `spiffe://${A}/fed3`, '--parent-id', `spiffe://${A}/node`, '--selector', 'unix:uid:1', '--federates-with', A]),
    ]);
    expect(entry.code).toBe(0);
    const entryId = (JSON.parse(entry.out) as { id: string; federatesWith: string[] }).id;
    expect((JSON.parse(entry.out) as { federatesWith: string[] }).federatesWith).toEqual([B]);
    expectRefused(unknown, 'entry.federates_with_unknown');
    expectRefused(local, 'entry.federates_with_local');

    const deleted = await sigil(['federation', 'delete', B]);
    expect(deleted).toEqual({ code: 0, out: `deleted ${B}\n`, err: '' });
    expect((await sigil(['federation', 'list'])).out).toBe('(no federation relationships)\n');
    // The entry keeps the name (and receives nothing until the relationship is made again).
    const entries = JSON.parse((await sigil(['entry', 'list', '--json'])).out) as { entries: { id: string; federatesWith: string[] }[] };
    expect(entries.entries.find((e) => e.id === entryId)?.federatesWith).toEqual([B]);
  }, 600_000);

  it('refuses bad input with a coded one-line error and exit 1', async () => {
    const badJson = join(dir, 'bad.json');
    writeFileSync(badJson, '{"keys": [');
    const privateKey = join(dir, 'private.json');
    // (The CLI export of a bundle is exercised above; these files come over the admin socket directly.)
    const pub = await adminCall<{ keys: Record<string, unknown>[] }>(vb.adminSocket, 'GET', '/v1/admin/bundle');
    writeFileSync(privateKey, JSON.stringify({ keys: pub.keys.map((k) => ({ ...k, d: 'AAAA' })) }));
    const aBundle = join(dir, 'a.json');
    writeFileSync(aBundle, JSON.stringify(await adminCall(va.adminSocket, 'GET', '/v1/admin/bundle')));
    const cases: [string[], string][] = [
      [['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', `http://127.0.0.1:${vb.v.bundleEndpointPort}/`, '--profile', 'https_web'], 'federation.url_not_https'],
      [['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', 'not a url', '--profile', 'https_web'], 'federation.invalid_url'],
      [['federation', 'create', '--trust-domain', 'Other_Org!', '--bundle-endpoint-url', endpointUrl, '--profile', 'https_web'], 'federation.invalid_trust_domain'],
      [['federation', 'create', '--trust-domain', A, '--bundle-endpoint-url', endpointUrl, '--profile', 'https_web'], 'federation.local_trust_domain'],
      [['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', endpointUrl, '--profile', 'https_spiffe', '--trust-bundle', bundleFile], 'federation.endpoint_id_required'],
      [['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', endpointUrl, '--profile', 'https_spiffe', '--endpoint-spiffe-id', `spiffe://${B}/sigil/verifier`], 'federation.initial_bundle_required'],
      [['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', endpointUrl, '--profile', 'https_spiffe', '--endpoint-spiffe-id', `spiffe://third.org/x`, '--trust-bundle', bundleFile], 'federation.endpoint_id_wrong_trust_domain'],
      [createArgs().map((a) => (a === bundleFile ? badJson : a)), 'federation.bundle_malformed'],
      [createArgs().map((a) => (a === bundleFile ? privateKey : a)), 'federation.bundle_malformed'],
      // A's own bundle given as B's: its CA names example.org.
      [createArgs().map((a) => (a === bundleFile ? aBundle : a)), 'federation.bundle_wrong_trust_domain'],
      [createArgs().map((a) => (a === bundleFile ? join(dir, 'missing.json') : a)), 'cli.file_unreadable'],
      [['federation', 'show', 'unknown.org'], 'federation.not_found'],
      [['federation', 'refresh', 'unknown.org'], 'federation.not_found'],
      [['federation', 'delete', 'unknown.org'], 'federation.not_found'],
      [['federation', 'update', 'unknown.org', '--bundle-endpoint-url', endpointUrl], 'federation.not_found'],
    ];
    // Four at a time: each is a Node process.
    for (let i = 0; i < cases.length; i += 4) {
      const batch = cases.slice(i, i + 4);
      const runs = await Promise.all(batch.map(([args]) => sigil(args)));
      runs.forEach((r, j) => {
        try {
          expectRefused(r, batch[j]![1]);
        } catch (e) {
          throw new Error(`sigil ${batch[j]![0].join(' ')}: ${(e as Error).message}\nstderr: ${r.err}`);
        }
      });
    }
    // An unknown profile is refused by the admin API's schema, naming the field.
    const profile = await sigil(['federation', 'create', '--trust-domain', B, '--bundle-endpoint-url', endpointUrl, '--profile', 'https']);
    expectRefused(profile, /^sigil: [a-z_.]+: .*profile/);
    expect((await sigil(['federation', 'list', '--json'])).out).toBe('{"relationships":[]}\n');
  }, 600_000);

  it('usage errors exit 2', async () => {
    const runs = await Promise.all([
      sigil(['federation', 'create', '--bundle-endpoint-url', endpointUrl, '--profile', 'https_web']),
      sigil(['federation', 'create', '--trust-domain', B, '--profile', 'https_web']),
      sigil(['federation', 'update', B]),
      sigil(['federation', 'show']),
    ]);
    for (const r of runs) {
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/trust-domain|bundle-endpoint-url|at least one of|missing required argument/);
    }
  }, 120_000);
});
