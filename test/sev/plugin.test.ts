/**
 * `sev_snp` plugin halves in a full protocol round at plugin level: agent.hello → verifier.begin →
 * agent.respond (fake configfs-tsm kernel) → verifier.finish, with payloads passed through JSON as
 * on the wire. Collateral from a directory and from a local HTTP server standing in for AMD KDS
 * (the real KDS is not reachable from here).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { type Server, createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { AgentPluginDeps, NodeAttestorVerifier, SessionInput, VerifierPluginDeps } from '../../src/plugins/types.js';
import { CERT_GUIDS, buildCertTable } from '../../src/sev/certtable.js';
import { chainFileName, kdsVcekUrl, vcekFileName } from '../../src/sev/collateral.js';
import { createSevAgent, createSevVerifier, sevAgentPlugin, sevVerifierPlugin } from '../../src/sev/plugin.js';
import type { SnpReportSource } from '../../src/sev/attester.js';
import { type SnpTestChain, makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { MemoryState } from '../tpm/memory-state.js';
import { FakeTsm } from './fake-tsm.js';
import { codeOfAsync } from './helpers.js';

const NOW = new Date('2026-03-01T12:00:00Z');
const logger = pino({ level: 'silent' });
let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-sev-plugin-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const vdeps = (): VerifierPluginDeps => ({
  trustDomain: 'example.org',
  logger,
  now: () => NOW,
  // The full plugin state contract (get/put/compareAndSet on JSON text, as the datastores do).
  state: new MemoryState(),
  configDir: tmp,
});
const adeps = (): AgentPluginDeps => ({ trustDomain: 'example.org', logger, dataDir: tmp, configDir: tmp, now: () => NOW });

function newSession(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: NOW };
}
const wire = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

function auxFor(chain: SnpTestChain, kinds: ('endorsement' | 'ask' | 'ark')[] = ['endorsement', 'ask', 'ark']): Buffer {
  const entries = [];
  if (kinds.includes('endorsement')) entries.push({ guid: chain.signingKey === 'vcek' ? CERT_GUIDS.vcek : CERT_GUIDS.vlek, data: chain.endorsement });
  if (kinds.includes('ask')) entries.push({ guid: CERT_GUIDS.ask, data: chain.intermediate });
  if (kinds.includes('ark')) entries.push({ guid: CERT_GUIDS.ark, data: chain.ark });
  return buildCertTable(entries, 8192);
}

/** Fake guest: a configfs-tsm kernel that signs reports with `chain`. */
function guest(chain: SnpTestChain, o: { aux?: Buffer | null; report?: Partial<Parameters<typeof makeSnpReport>[0]> } = {}) {
  return new FakeTsm({
    produce: (inblob, privlevel) => ({
      report: makeSnpReport({ chain, reportData: inblob, vmpl: privlevel ?? 0, ...o.report }),
      ...(o.aux === null ? {} : { aux: o.aux ?? auxFor(chain) }),
    }),
  });
}

async function round(opts: {
  chain: SnpTestChain;
  fs: FakeTsm;
  verifierConfig?: Record<string, unknown>;
  agentConfig?: Record<string, unknown>;
  finishSession?: SessionInput;
  source?: SnpReportSource;
  /** Reuse one verifier across rounds (its collateral source keeps state); verifierConfig is then ignored. */
  verifier?: NodeAttestorVerifier;
}) {
  const verifier = opts.verifier ?? createSevVerifier({ arkSha256: opts.chain.arkPins, ...opts.verifierConfig }, vdeps());
  const agent = createSevAgent({ configfsRoot: opts.fs.root, transport: 'configfs', ...opts.agentConfig }, adeps(), {
    fs: opts.fs,
    ...(opts.source ? { source: opts.source } : {}),
  });
  const s = newSession();
  const hello = wire(await agent.hello());
  const { challenge, state } = await verifier.begin(hello, s);
  const response = wire(await agent.respond(wire(challenge), { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki }));
  const result = await verifier.finish(response, wire(state), opts.finishSession ?? s);
  return { hello, challenge, response, result };
}

describe('plugin objects', () => {
  it('both halves are named sev_snp and publish schemas ajv compiles', () => {
    expect(sevVerifierPlugin.name).toBe('sev_snp');
    expect(sevAgentPlugin.name).toBe('sev_snp');
    const ajv = new Ajv({ strict: false });
    const v = ajv.compile(sevVerifierPlugin.configSchema);
    expect(v({ allowDebug: false, vmpls: [0], products: ['milan', 'genoa', 'turin'], minTcb: { snp: 8, fmc: 1 }, kds: { enabled: false, baseUrl: 'https://kdsintf.amd.com' } })).toBe(true);
    expect(v({ bogus: 1 })).toBe(false);
    expect(v({ products: ['rome'] })).toBe(false);
    expect(v({ arkSha256: { milan: 'abc' } })).toBe(false);
    expect(ajv.compile(sevAgentPlugin.configSchema)({ transport: 'ioctl', privlevel: 0 })).toBe(true);
    expect(ajv.compile(sevAgentPlugin.configSchema)({ privlevel: 7 })).toBe(false);
  });
  it('create() validates config itself', async () => {
    expect(await codeOfAsync(async () => sevVerifierPlugin.create({ vmpls: [9] }, vdeps()))).toBe('sev.config_invalid');
    expect(await codeOfAsync(async () => sevVerifierPlugin.create({ kds: { enabled: 'yes' } }, vdeps()))).toBe('sev.config_invalid');
    // The same validation as the loader's (defaults filled in): `enabled` defaults to false.
    expect(await codeOfAsync(async () => sevVerifierPlugin.create({ kds: { baseUrl: 'https://x' } }, vdeps()))).toBe('no error');
    expect(await codeOfAsync(async () => sevAgentPlugin.create({ mode: 'x' }, adeps()))).toBe('sev.config_invalid');
    expect(await codeOfAsync(async () => sevVerifierPlugin.create(undefined, vdeps()))).toBe('no error');
  });
});

describe('session rounds', () => {
  const genoa = makeSnpTestChain('genoa');
  const turin = makeSnpTestChain('turin');
  const milanVlek = makeSnpTestChain('milan', { signingKey: 'vlek' });

  it('agent ↔ verifier with the host certificate table: selectors, claims, agent id', async () => {
    const fs = guest(genoa);
    const { hello, challenge, response, result } = await round({ chain: genoa, fs });
    expect(hello).toEqual({});
    expect(challenge).toEqual({});
    expect(Object.keys(response as object).sort()).toEqual(['certs', 'report']);
    expect(result.agentIdSuffix).toBe(genoa.chipId.toString('hex'));
    expect(result.selectors).toContain('sev_snp:product:genoa');
    expect(result.selectors).toContain(`sev_snp:chip_id:${genoa.chipId.toString('hex')}`);
    expect(result.selectors).toContain('sev_snp:signing_key:vcek');
    expect(result.claims.product).toBe('genoa');
    expect(fs.entries.size).toBe(0);
  });

  it('Turin and a VLEK chain work the same way', async () => {
    const t = await round({ chain: turin, fs: guest(turin) });
    expect(t.result.selectors).toContain('sev_snp:product:turin');
    const v = await round({ chain: milanVlek, fs: guest(milanVlek) });
    expect(v.result.selectors).toContain('sev_snp:signing_key:vlek');
    expect(v.result.selectors.some((s) => s.startsWith('sev_snp:chip_id:'))).toBe(false);
    expect(v.result.agentIdSuffix).toMatch(/^[0-9a-f]{96}$/);
  });

  it('evidence bound to another session is rejected (wrong binding)', async () => {
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa), finishSession: newSession() }))).toBe('sev.report_data_mismatch');
  });

  it('VLEK/VCEK mismatch between the report and the certificate is rejected', async () => {
    // The report claims VLEK, the host table carries the VCEK.
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa, { report: { signingKey: 'vlek' } }) }))).toBe('sev.signing_key_mismatch');
    // The report claims VCEK but is signed by the VLEK whose certificate the host sends.
    expect(await codeOfAsync(() => round({ chain: milanVlek, fs: guest(milanVlek, { report: { signingKey: 'vcek' } }) }))).toBe('sev.signing_key_mismatch');
  });

  it('policy from the verifier config: debug, VMPL, measurements, minimum TCB', async () => {
    const dbg = guest(genoa, { report: { policy: 0x30000n | (1n << 19n) } });
    expect(await codeOfAsync(() => round({ chain: genoa, fs: dbg }))).toBe('sev.debug_not_allowed');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: dbg, verifierConfig: { allowDebug: true } }))).toBe('no error');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa), agentConfig: { privlevel: 1 } }))).toBe('sev.vmpl_not_allowed');
    const r = await round({ chain: genoa, fs: guest(genoa), agentConfig: { privlevel: 1 }, verifierConfig: { vmpls: [0, 1] } });
    expect(r.result.selectors).toContain('sev_snp:vmpl:1');
    const meas = 'ab'.repeat(48);
    const fixed = guest(genoa, { report: { measurement: Buffer.from(meas, 'hex') } });
    expect(await codeOfAsync(() => round({ chain: genoa, fs: fixed, verifierConfig: { measurements: [meas] } }))).toBe('no error');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: fixed, verifierConfig: { measurements: ['cd'.repeat(48)] } }))).toBe('sev.measurement_not_allowed');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa), verifierConfig: { minTcb: { snp: 9 } } }))).toBe('sev.tcb_too_low');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa), verifierConfig: { products: ['milan'] } }))).toBe('sev.product_not_allowed');
  });

  it('certificates from agent files (hello) when the host has none', async () => {
    const dir = join(tmp, 'agentcerts');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'vcek.der'), genoa.endorsement);
    await writeFile(join(dir, 'ask.der'), genoa.intermediate);
    await writeFile(join(dir, 'ark.pem'), genoa.chainPem.split(/(?=-----BEGIN)/)[1]!);
    const { hello, response, result } = await round({
      chain: genoa,
      fs: guest(genoa, { aux: null }),
      agentConfig: { certFiles: { vcek: 'agentcerts/vcek.der', ask: join(dir, 'ask.der'), ark: 'agentcerts/ark.pem' } },
    });
    expect(Object.keys((hello as { certs: object }).certs).sort()).toEqual(['ark', 'ask', 'vcek']);
    expect(response).not.toHaveProperty('certs');
    expect(result.selectors).toContain('sev_snp:product:genoa');
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa, { aux: null }), agentConfig: { certFiles: { vcek: 'agentcerts/missing.der' } } }))).toBe(
      'sev.cert_file_unreadable',
    );
  });

  it('no certificates anywhere → sev.vcek_missing; a malformed host table is dropped by the agent', async () => {
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa, { aux: null }) }))).toBe('sev.vcek_missing');
    const broken = auxFor(genoa);
    broken.writeUInt32LE(0xffff, 20);
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa, { aux: broken }) }))).toBe('sev.vcek_missing');
  });

  it('the agent refuses a report that does not carry its REPORT_DATA', async () => {
    const source: SnpReportSource = { getReport: async () => ({ report: makeSnpReport({ chain: genoa }), via: 'configfs' }) };
    expect(await codeOfAsync(() => round({ chain: genoa, fs: guest(genoa), source }))).toBe('sev.attester_report_data_mismatch');
  });

  it('payload validation', async () => {
    const verifier = createSevVerifier({ arkSha256: genoa.arkPins }, vdeps());
    const s = newSession();
    expect(await codeOfAsync(() => verifier.begin('x', s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.begin({ other: 1 }, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.begin({ certs: { vcek: '!!!' } }, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.begin({ certs: { pck: 'AAAA' } }, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.begin({ certs: { vcek: 'A'.repeat(40000) } }, s))).toBe('sev.payload_invalid');
    const { state } = await verifier.begin(undefined, s);
    expect(await codeOfAsync(() => verifier.finish({}, state, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.finish(null, state, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.finish({ report: 'AAAA', extra: 1 }, state, s))).toBe('sev.payload_invalid');
    expect(await codeOfAsync(() => verifier.finish({ report: 'AAAA' }, state, s))).toBe('sev.report_length');
    expect(await codeOfAsync(() => verifier.finish({ report: 'A'.repeat(5000) }, state, s))).toBe('sev.payload_invalid');
    const agent = createSevAgent({ configfsRoot: '/nowhere', transport: 'configfs' }, adeps(), { fs: guest(genoa) });
    expect(await codeOfAsync(() => agent.respond({ x: 1 }, s))).toBe('sev.challenge_invalid');
    expect(await codeOfAsync(() => agent.respond(null, s))).toBe('sev.challenge_invalid');
  });
});

describe('collateral directory and AMD KDS (local HTTP stand-in)', () => {
  // These tests count VCEK/chain requests, so revocation is off here (`crl: { mode: 'off' }`; with KDS
  // enabled the default is `require`, one CRL request per line): see crl-plugin.test.ts for the CRL.
  const milan = makeSnpTestChain('milan');
  const turin = makeSnpTestChain('turin');
  let server: Server;
  let base = '';
  const requests: string[] = [];
  let failWith = 0;
  /** Extra KDS answers by path+query (e.g. a VCEK that does not chain to the pinned ARK). */
  const extra = new Map<string, Buffer>();
  const pathOf = (url: string): string => new URL(url).pathname + new URL(url).search;

  beforeAll(async () => {
    server = createServer((req, res) => {
      requests.push(req.url ?? '');
      if (failWith) {
        res.statusCode = failWith;
        res.end();
        return;
      }
      const more = extra.get(req.url ?? '');
      if (more) {
        res.end(more);
        return;
      }
      for (const c of [milan, turin]) {
        const title = c.product === 'milan' ? 'Milan' : 'Turin';
        if (req.url === `/vcek/v1/${title}/cert_chain`) {
          res.setHeader('content-type', 'application/x-pem-file');
          res.end(c.chainPem);
          return;
        }
        if (req.url === new URL(kdsVcekUrl('http://x', c.product, c.chipId, c.reportedTcb)).pathname + new URL(kdsVcekUrl('http://x', c.product, c.chipId, c.reportedTcb)).search) {
          res.setHeader('content-type', 'application/x-x509-ca-cert');
          res.end(c.endorsement);
          return;
        }
      }
      res.statusCode = 404;
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()));
  });

  it('KDS URLs follow the KDS interface (Turin: 8-byte hwID and fmcSPL)', () => {
    expect(kdsVcekUrl('https://kdsintf.amd.com', 'milan', milan.chipId, milan.reportedTcb)).toBe(
      `https://kdsintf.amd.com/vcek/v1/Milan/${milan.chipId.toString('hex')}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115`,
    );
    expect(kdsVcekUrl('https://kdsintf.amd.com/', 'turin', turin.chipId, turin.reportedTcb)).toBe(
      `https://kdsintf.amd.com/vcek/v1/Turin/${turin.hwId.toString('hex')}?fmcSPL=1&blSPL=3&teeSPL=2&snpSPL=5&ucodeSPL=97`,
    );
  });

  it('fetches the VCEK and chain from KDS into the cache, then works from the cache offline', async () => {
    const dir = join(tmp, 'kds-cache');
    const cfg = { collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } };
    for (const chain of [milan, turin]) {
      requests.length = 0;
      const r = await round({ chain, fs: guest(chain, { aux: null }), verifierConfig: cfg });
      expect(r.result.selectors).toContain(`sev_snp:product:${chain.product}`);
      expect(requests.length).toBe(2);
      expect(existsSync(vcekFileName(dir, chain.product, chain.chipId, chain.reportedTcb))).toBe(true);
      expect(existsSync(chainFileName(dir, chain.product, 'vcek'))).toBe(true);
    }
    // Cache hits: KDS "down".
    failWith = 500;
    requests.length = 0;
    const again = await round({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: cfg });
    expect(again.result.selectors).toContain('sev_snp:product:milan');
    expect(requests).toEqual([]);
    // Offline verifier with the cache only (KDS disabled).
    expect(await codeOfAsync(() => round({ chain: turin, fs: guest(turin, { aux: null }), verifierConfig: { collateralDir: dir } }))).toBe('no error');
    failWith = 0;
  });

  it('KDS errors: 5xx → sev.kds_fetch_failed, 404 → sev.vcek_missing, unreachable → sev.kds_fetch_failed', async () => {
    const fresh = makeSnpTestChain('milan');
    const dir = join(tmp, 'kds-errors');
    failWith = 503;
    expect(await codeOfAsync(() => round({ chain: fresh, fs: guest(fresh, { aux: null }), verifierConfig: { collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } } }))).toBe(
      'sev.kds_fetch_failed',
    );
    failWith = 0;
    expect(await codeOfAsync(() => round({ chain: fresh, fs: guest(fresh, { aux: null }), verifierConfig: { crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } } }))).toBe('sev.vcek_missing');
    expect(
      await codeOfAsync(() => round({ chain: fresh, fs: guest(fresh, { aux: null }), verifierConfig: { crl: { mode: 'off' }, kds: { enabled: true, baseUrl: 'http://127.0.0.1:9' } } })),
    ).toBe('sev.kds_fetch_failed');
  });

  it('a v2 report (no CPUID) finds its VCEK by trying each product directory', async () => {
    const dir = join(tmp, 'v2-dir');
    const p = vcekFileName(dir, 'turin', turin.chipId, turin.reportedTcb);
    await mkdir(join(dir, 'turin'), { recursive: true });
    await writeFile(p, turin.endorsement);
    await writeFile(chainFileName(dir, 'turin', 'vcek'), turin.chainPem);
    const r = await round({ chain: turin, fs: guest(turin, { aux: null, report: { version: 2 } }), verifierConfig: { collateralDir: dir } });
    expect(r.result.selectors).toContain('sev_snp:product:turin');
    // The agent sent only the VCEK; the chain comes from the directory.
    const r2 = await round({ chain: turin, fs: guest(turin, { aux: auxFor(turin, ['endorsement']), report: { version: 2 } }), verifierConfig: { collateralDir: dir } });
    expect(r2.result.selectors).toContain('sev_snp:product:turin');
  });
  describe('a report that fails a check not needing the VCEK never reaches KDS', () => {
    const dir = (): string => join(tmp, 'kds-precheck');
    const cfg = () => ({ collateralDir: dir(), crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } });
    const turinTail = Buffer.from(turin.chipId);
    turinTail[20] = 1;
    const turinForm = Buffer.concat([randomBytes(8), Buffer.alloc(56)]);
    const cases: [string, () => Parameters<typeof round>[0], string][] = [
      ['report bound to another session', () => ({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: cfg(), finishSession: newSession() }), 'sev.report_data_mismatch'],
      ['debug policy', () => ({ chain: milan, fs: guest(milan, { aux: null, report: { policy: 0x30000n | (1n << 19n) } }), verifierConfig: cfg() }), 'sev.debug_not_allowed'],
      ['VMPL not allowed', () => ({ chain: milan, fs: guest(milan, { aux: null }), agentConfig: { privlevel: 2 }, verifierConfig: cfg() }), 'sev.vmpl_not_allowed'],
      ['measurement not allowed', () => ({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: { ...cfg(), measurements: ['cd'.repeat(48)] } }), 'sev.measurement_not_allowed'],
      ['TCB below the minimum', () => ({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: { ...cfg(), minTcb: { microcode: 0x74 } } }), 'sev.tcb_too_low'],
      ['guest SVN below the minimum', () => ({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: { ...cfg(), minGuestSvn: 1 } }), 'sev.guest_svn_too_low'],
      ['product line not allowed', () => ({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: { ...cfg(), products: ['genoa'] } }), 'sev.product_not_allowed'],
      [
        'reserved byte of REPORTED_TCB set',
        () => ({ chain: milan, fs: guest(milan, { aux: null, report: { tamper: (b) => (b[0x183] = 1) } }), verifierConfig: cfg() }),
        'sev.report_reserved_nonzero',
      ],
      ['Turin CHIP_ID with a non-zero tail', () => ({ chain: turin, fs: guest(turin, { aux: null, report: { chipId: turinTail } }), verifierConfig: cfg() }), 'sev.chip_id_invalid'],
      ['Milan CHIP_ID in the 8-byte Turin form', () => ({ chain: milan, fs: guest(milan, { aux: null, report: { chipId: turinForm } }), verifierConfig: cfg() }), 'sev.chip_id_invalid'],
      [
        'v2 report (no CPUID) whose CHIP_ID fits none of the allowed lines',
        () => ({ chain: milan, fs: guest(milan, { aux: null, report: { version: 2, chipId: turinForm } }), verifierConfig: { ...cfg(), products: ['milan', 'genoa'] } }),
        'sev.chip_id_invalid',
      ],
      ['unsupported report version', () => ({ chain: milan, fs: guest(milan, { aux: null, report: { version: 4 } }), verifierConfig: cfg() }), 'sev.report_version_unsupported'],
      ['reserved policy bit', () => ({ chain: milan, fs: guest(milan, { aux: null, report: { policy: 0x10000n } }), verifierConfig: cfg() }), 'sev.policy_invalid'],
    ];
    for (const [name, opts, code] of cases) {
      it(`${name} → ${code}, no KDS request`, async () => {
        requests.length = 0;
        expect(await codeOfAsync(() => round(opts()))).toBe(code);
        expect(requests).toEqual([]);
        expect(existsSync(dir())).toBe(false);
      });
    }
    it('control: the same report without a fault does reach KDS (VCEK, then the chain)', async () => {
      requests.length = 0;
      expect(await codeOfAsync(() => round({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: cfg() }))).toBe('no error');
      expect(requests.length).toBe(2);
    });
  });

  it('a v2 report (no CPUID) asks KDS only for the product lines its CHIP_ID fits', async () => {
    requests.length = 0;
    const r = await round({ chain: turin, fs: guest(turin, { aux: null, report: { version: 2 } }), verifierConfig: { crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } } });
    expect(r.result.selectors).toContain('sev_snp:product:turin');
    expect(requests.length).toBe(2);
    for (const u of requests) expect(u.startsWith('/vcek/v1/Turin/')).toBe(true);
  });

  it('a fetched VCEK that does not chain to the pinned ARK is not cached', async () => {
    const dir = join(tmp, 'kds-rogue');
    const rogue = makeSnpTestChain('milan', { keyTag: 'rogue-kds' });
    extra.set(pathOf(kdsVcekUrl('http://x', 'milan', rogue.chipId, rogue.reportedTcb)), rogue.endorsement);
    try {
      requests.length = 0;
      const cfg = { arkSha256: milan.arkPins, collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } };
      expect(await codeOfAsync(() => round({ chain: rogue, fs: guest(rogue, { aux: null }), verifierConfig: cfg }))).toBe('sev.cert_signature_invalid');
      expect(requests.length).toBe(2);
      expect(existsSync(vcekFileName(dir, 'milan', rogue.chipId, rogue.reportedTcb))).toBe(false);
      // The chain fetched alongside is the genuine one and checks out on its own: it is cached.
      expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(true);
    } finally {
      extra.clear();
    }
  });

  it('a fetched VCEK that verifies against ASK/ARK is cached even if the report signature then fails', async () => {
    const dir = join(tmp, 'kds-badsig');
    const cfg = { collateralDir: dir, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } };
    const other = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
    requests.length = 0;
    expect(await codeOfAsync(() => round({ chain: milan, fs: guest(milan, { aux: null, report: { signWith: other } }), verifierConfig: cfg }))).toBe('sev.signature_invalid');
    expect(requests.length).toBe(2);
    expect(existsSync(vcekFileName(dir, 'milan', milan.chipId, milan.reportedTcb))).toBe(true);
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(true);
    // The cached VCEK serves the next (genuine) report without KDS.
    failWith = 500;
    try {
      requests.length = 0;
      expect(await codeOfAsync(() => round({ chain: milan, fs: guest(milan, { aux: null }), verifierConfig: cfg }))).toBe('no error');
      expect(requests).toEqual([]);
    } finally {
      failWith = 0;
    }
  });

  it('KDS requests are rate-limited per verifier (kds.maxRequestsPerMinute)', async () => {
    const verifier = createSevVerifier({ arkSha256: milan.arkPins, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base, maxRequestsPerMinute: 2 } }, vdeps());
    requests.length = 0;
    // Unknown chips (forged reports that pass every pre-check): each costs one KDS request until the bucket is empty.
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) {
      const unknown = makeSnpTestChain('milan');
      codes.push(await codeOfAsync(() => round({ chain: unknown, fs: guest(unknown, { aux: null }), verifier })));
    }
    expect(codes).toEqual(['sev.vcek_missing', 'sev.vcek_missing', 'sev.kds_rate_limited']);
    expect(requests.length).toBe(2);
    expect(await codeOfAsync(async () => createSevVerifier({ kds: { enabled: true, maxRequestsPerMinute: 0 } }, vdeps()))).toBe('sev.config_invalid');
  });

  it('a KDS 404 is remembered: the same unknown chip does not cause a second request', async () => {
    const verifier = createSevVerifier({ arkSha256: milan.arkPins, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    const unknown = makeSnpTestChain('milan');
    requests.length = 0;
    expect(await codeOfAsync(() => round({ chain: unknown, fs: guest(unknown, { aux: null }), verifier }))).toBe('sev.vcek_missing');
    expect(await codeOfAsync(() => round({ chain: unknown, fs: guest(unknown, { aux: null }), verifier }))).toBe('sev.vcek_missing');
    expect(requests.length).toBe(1);
  });

  it('without a collateral directory, verified KDS certificates are kept in memory', async () => {
    const verifier = createSevVerifier({ arkSha256: turin.arkPins, crl: { mode: 'off' }, kds: { enabled: true, baseUrl: base } }, vdeps());
    requests.length = 0;
    expect(await codeOfAsync(() => round({ chain: turin, fs: guest(turin, { aux: null }), verifier }))).toBe('no error');
    expect(requests.length).toBe(2);
    requests.length = 0;
    expect(await codeOfAsync(() => round({ chain: turin, fs: guest(turin, { aux: null }), verifier }))).toBe('no error');
    expect(requests).toEqual([]);
  });
});
