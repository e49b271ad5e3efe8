/**
 * The agent's foreign bundles (FederatedBundles): what it takes from the verifier's answer, what it
 * refuses, and `dataDir/federated.json` — a restarted agent serves the last bundles it held while
 * its verifier is down; a damaged file is reported and ignored.
 */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { AGENT_MAX_FEDERATED, FederatedBundles } from '../../src/federation/agent-bundles.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';

const OWN = 'a.org';

function jwks(td: string, seq: number): { keys: Record<string, unknown>[]; spiffe_sequence: number } {
  const k = generateKey('ec-p256');
  const ca = issueCaCertificate({ trustDomain: td, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  return new SpiffeBundle(td, { x509Authorities: [ca], sequence: seq }).toJwks() as never;
}

function capture(): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines };
}

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('agent federated bundles', () => {
  it('persists what it takes, and a restarted agent serves it before hearing from its verifier', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fed-agent-'));
    const b = jwks('b.org', 3);
    const fb = new FederatedBundles(OWN, dir, capture().logger);
    expect(fb.adopt({ bundles: { 'b.org': b }, entries: { e1: ['b.org'], e2: [] } })).toBe(true);
    const path = join(dir, 'federated.json');
    const written = statSync(path).mtimeMs;
    // The same answer again: nothing changed, nothing written.
    expect(fb.adopt({ bundles: { 'b.org': b }, entries: { e1: ['b.org'], e2: [] } })).toBe(false);
    expect(statSync(path).mtimeMs).toBe(written);
    const again = new FederatedBundles(OWN, dir, capture().logger);
    expect(again.bundles().get('b.org')?.sequence).toBe(3);
    expect(again.trustDomainsOf('e1')).toEqual(['b.org']);
    expect(again.trustDomainsOf('e2')).toEqual([]);
  });

  it('a damaged federated.json is reported and ignored (the agent waits for its verifier)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fed-agent-'));
    writeFileSync(join(dir, 'federated.json'), '{"bundles": {"b.org": ');
    const { logger, lines } = capture();
    const fb = new FederatedBundles(OWN, dir, logger);
    expect(fb.bundles().size).toBe(0);
    expect(lines.some((l) => l.level === 40 && String(l.msg).includes('persisted federated bundles unusable'))).toBe(true);
  });

  it('refuses a malformed answer as a whole (federation.bad_answer) and keeps what it held', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fed-agent-'));
    const fb = new FederatedBundles(OWN, dir, capture().logger);
    fb.adopt({ bundles: { 'b.org': jwks('b.org', 1) }, entries: { e1: ['b.org'] } });
    const before = readFileSync(join(dir, 'federated.json'), 'utf8');
    const many = Object.fromEntries(Array.from({ length: AGENT_MAX_FEDERATED + 1 }, (_, i) => [`t${i}.org`, { keys: [] }]));
    for (const bad of [null, [], { bundles: [] }, { bundles: {}, entries: 'x' }, { bundles: {}, entries: { e1: [1] } }, { bundles: many, entries: {} }]) {
      expect(codeOf(() => fb.adopt(bad))).toBe('federation.bad_answer');
    }
    expect(fb.bundles().get('b.org')?.sequence).toBe(1);
    expect(readFileSync(join(dir, 'federated.json'), 'utf8')).toBe(before);
  });

  it('drops bundles it may not take, one by one: an invalid name, its own trust domain, too many keys, private key members', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fed-agent-'));
    const { logger, lines } = capture();
    const fb = new FederatedBundles(OWN, dir, logger);
    fb.adopt({ bundles: { 'c.org': jwks('c.org', 2) }, entries: {} });
    const c = jwks('c.org', 3);
    fb.adopt({
      bundles: {
        'B.ORG!': jwks('b.org', 1),
        [OWN]: jwks(OWN, 9),
        'c.org': { ...c, keys: Array.from({ length: 65 }, () => c.keys[0]) },
        'd.org': { ...jwks('d.org', 1), keys: [{ ...jwks('d.org', 1).keys[0], d: 'AAAA' }] },
        'e.org': jwks('e.org', 4),
      },
      entries: { e1: [OWN, 'c.org', 'e.org'] },
    });
    expect([...fb.bundles().keys()].sort()).toEqual(['c.org', 'e.org']);
    // c.org's bad successor refused: the one held before stays.
    expect(fb.bundles().get('c.org')?.sequence).toBe(2);
    expect(fb.trustDomainsOf('e1')).toEqual(['c.org', 'e.org']);
    const errors = lines.filter((l) => l.level === 50).map((l) => l.trustDomain);
    expect(errors.sort()).toEqual(['B.ORG!', OWN, 'c.org', 'd.org'].sort());
  });
});
