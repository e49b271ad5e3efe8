/**
 * The agent's bundle refresh pace: at most the bundle's refresh hint (the verifier publishes a
 * successor CA two hints before it signs with it), and also while the agent holds no valid node
 * SVID, so an agent waiting to attest again still learns the verifier's new CAs.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { EntrySync } from '../../src/agent/entry-sync.js';
import type { NodeIdentity } from '../../src/agent/node-attestation.js';
import type { SvidCache } from '../../src/agent/svid-cache.js';
import { TrustStore } from '../../src/agent/trust.js';
import type { VerifierClient } from '../../src/agent/verifier-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { waitFor } from './harness.js';

const logger = pino({ level: 'silent' });

function ca(): Buffer {
  const k = generateKey('ec-p256');
  return issueCaCertificate({ subjectKey: k.publicKey, signerKey: k.privateKey, trustDomain: 'example.org', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(hasNodeSvid: boolean, named?: { etag: () => string | undefined }) {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-sync-bundle-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const first = ca();
  writeFileSync(join(dir, 'bootstrap.pem'), certsToPem([first]));
  const trust = TrustStore.load({ trustDomain: 'example.org', dataDir: dir, bootstrapPath: join(dir, 'bootstrap.pem'), logger });
  // The verifier's bundle: the first CA plus a successor, refresh hint 1 s.
  const published = new SpiffeBundle('example.org', { x509Authorities: [first, ca()], sequence: 2, refreshHintSeconds: 1 });
  let bundleCalls = 0;
  let syncs = 0;
  const heldSent: (string | undefined)[] = [];
  const trustSets: Buffer[][] = [];
  const client = {
    // A verifier that sends no ETag: every refresh gets the whole bundle.
    bundleIfChanged: async (held: string | undefined) => {
      bundleCalls++;
      heldSent.push(held);
      if (named === undefined) return { jwks: published.toJwks(), etag: undefined };
      const now = named.etag();
      return held !== undefined && held === now ? undefined : { jwks: published.toJwks(), etag: now };
    },
    setTrust: (d: Buffer[]) => void trustSets.push(d),
    // Without `named`, a verifier that does not name its bundle ETag on entries answers.
    syncEntries: async () => {
      syncs++;
      return { set: undefined, bundleEtag: named?.etag() };
    },
    signX509: async () => [],
  } as unknown as VerifierClient;
  const node = {
    current: () => (hasNodeSvid ? { agentId: 'spiffe://example.org/sigil/agent/x/1' } : undefined),
    generation: () => 1,
    onIdentity: () => () => undefined,
    trustFailure: () => undefined,
    invalidate: () => undefined,
  } as unknown as NodeIdentity;
  const cache = { setEntries: () => false, dueForIssue: () => [], nextRotation: () => undefined, notify: () => undefined } as unknown as SvidCache;
  const sync = new EntrySync({ trustDomain: 'example.org', client, cache, node, trust, logger, now: () => new Date(), intervalMs: named ? 100 : 60_000, longPollSeconds: 0 });
  sync.start();
  cleanups.push(() => sync.close());
  return { trust, published, calls: () => bundleCalls, syncs: () => syncs, heldSent, trustSets };
}

describe('agent bundle refresh', () => {
  it('refreshes the bundle without a valid node SVID and trusts the successor CA for TLS', async () => {
    const { trust, published, trustSets } = setup(false);
    await waitFor(() => trust.bundle().x509Authorities.length === 2, 3000, 'the published bundle adopted');
    expect(trust.bundle().x509Authorities.map((d) => d.toString('hex'))).toEqual(published.x509Authorities.map((d) => d.toString('hex')));
    expect(trustSets.at(-1)).toHaveLength(2);
  });

  it('refreshes at the bundle refresh hint when syncInterval is longer', async () => {
    const { calls } = setup(true);
    await waitFor(() => calls() >= 3, 4000, 'three bundle fetches within 4 s (hint 1 s, syncInterval 60 s)');
  });

  it('fetches the bundle only when the ETag named by the entries answer is not the held one', async () => {
    let now: string | undefined = '"A"';
    const { calls, syncs, heldSent, trust } = setup(true, { etag: () => now });
    // First cycle: nothing held yet, so one fetch; then every sync names "A", the held bundle's ETag.
    await waitFor(() => syncs() >= 6, 4000, 'six syncs at a 100 ms interval');
    expect(calls()).toBe(1);
    expect(trust.bundle().x509Authorities).toHaveLength(2);
    // The verifier's bundle changes: the next sync names "B", and the agent fetches with "A" held.
    now = '"B"';
    await waitFor(() => calls() === 2, 3000, 'a fetch after the named ETag changed');
    expect(heldSent).toEqual([undefined, '"A"']);
    const before = syncs();
    await waitFor(() => syncs() >= before + 4, 3000, 'four more syncs');
    expect(calls()).toBe(2);
    // An older verifier (no header): a conditional fetch on every sync, as before.
    now = undefined;
    await waitFor(() => calls() >= 5, 3000, 'a fetch per sync without the header');
  });
});
