/**
 * The running TPM agent survives its AK being flushed behind its back (issue 11 item 12): after
 * `tpm2_flushcontext -t` the next attestation reloads the stored AK and retries once instead of
 * failing with TPM_RC_REFERENCE_H0 (0x910) for ever. On swtpm through a TCP relay: swtpm serves
 * one client at a time, so the relay lets go of swtpm while the agent is idle (the agent's own
 * connection stays open, as in a running daemon) for tpm2-tools to get in.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { tpmAvailable } from '../../src/native/tpm.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorAgent, SessionInput } from '../../src/plugins/types.js';
import { TpmAgent, isTpmObjectNotLoaded, tpmAgentPlugin, tpmVerifierPlugin, type TpmDevice } from '../../src/tpm/plugin.js';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';
import { finishAndCommit } from '../tpm/commit.js';
import { MemoryState } from '../tpm/memory-state.js';
import { ekPublicFor, p256KeyPair } from '../tpm/synthetic.js';
import { spkiHash } from '../../src/tpm/keys.js';
import { parseTpm2bPublic } from '../../src/tpm/structures.js';

const exec = promisify(execFile);
const avail = tpmAvailable();
if (!avail.ok) {
  if (process.env.CI === 'true') throw new Error(`TPM native addon unavailable under CI: ${avail.reason}`);
  console.warn(`[skip] TPM native addon unavailable: ${avail.reason}`);
}
const logger = pino({ level: 'silent' });

/** A relay in front of swtpm's command port P and control port P+1 (on ports X and X+1). */
interface Relay {
  port: number;
  /** Close every connection to swtpm (the agent's side stays open); the next byte reconnects. */
  release(): Promise<void>;
  close(): Promise<void>;
}

function listen(server: Server, port: number): Promise<boolean> {
  return new Promise((res) => {
    server.once('error', () => res(false));
    server.listen(port, '127.0.0.1', () => res(true));
  });
}

async function startRelay(target: number): Promise<Relay> {
  const upstream = new Set<Socket>();
  const clients = new Set<Socket>();
  const make = (targetPort: number): Server =>
    createServer((client) => {
      clients.add(client);
      let up: Socket | null = null;
      client.on('data', (d) => {
        if (up === null) {
          const s = createConnection({ host: '127.0.0.1', port: targetPort });
          upstream.add(s);
          s.on('data', (x) => client.write(x));
          s.on('error', () => undefined);
          s.on('close', () => {
            upstream.delete(s);
            if (up === s) up = null;
          });
          up = s;
        }
        up.write(d);
      });
      const end = () => {
        clients.delete(client);
        up?.destroy();
      };
      client.on('close', end);
      client.on('error', end);
    });
  for (let tries = 0; tries < 20; tries++) {
    const data = make(target);
    const ctrl = make(target + 1);
    await listen(data, 0);
    const port = (data.address() as { port: number }).port;
    if (await listen(ctrl, port + 1)) {
      return {
        port,
        async release() {
          const closing = [...upstream].map((s) => new Promise<void>((r) => (s.destroyed ? r() : (s.once('close', () => r()), s.destroy()))));
          await Promise.all(closing);
        },
        async close() {
          for (const s of [...upstream, ...clients]) s.destroy();
          await Promise.all([data, ctrl].map((srv) => new Promise<void>((r) => srv.close(() => r()))));
        },
      };
    }
    await new Promise<void>((r) => data.close(() => r()));
  }
  throw new Error('no two consecutive free ports for the relay');
}

function newSession(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: new Date(Date.now() + 1000) };
}

async function transientHandles(tpm: SwtpmHandle): Promise<string[]> {
  const r = await exec('tpm2_getcap', ['handles-transient'], { env: { ...process.env, TPM2TOOLS_TCTI: tpm.tcti } });
  return r.stdout.split('\n').map((l) => l.replace(/^- /, '').trim()).filter((l) => /^0x/.test(l));
}

describe.skipIf(!avail.ok)('tpm agent: AK flushed behind the running agent (swtpm)', () => {
  let tpm: SwtpmHandle | null = null;
  let relay: Relay | null = null;
  let dataDir = '';
  const agents: NodeAttestorAgent[] = [];
  beforeEach(async () => {
    tpm = await startSwtpm();
    if (!tpm) throw new Error('swtpm unavailable');
    relay = await startRelay(tpm.port);
    dataDir = mkdtempSync(join(tmpdir(), 'sigil-tpm-reload-'));
  });
  afterEach(async () => {
    for (const a of agents.splice(0)) await a.close?.();
    await relay?.close();
    await tpm?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  async function setup() {
    const t = tpm!;
    const state = new MemoryState();
    const v = await tpmVerifierPlugin.create({ ekCa: t.ekCaFiles, pcrs: { sha256: [0, 7] } }, { trustDomain: 'example.org', logger, now: () => new Date(), state, configDir: dataDir });
    const agent = await tpmAgentPlugin.create({ tcti: `swtpm:host=127.0.0.1,port=${relay!.port}`, akAlg: 'rsa' }, { trustDomain: 'example.org', logger, dataDir, configDir: dataDir, now: () => new Date() });
    agents.push(agent);
    return { v, agent };
  }

  /** Let go of swtpm, run `tpm2_flushcontext -t` on it directly, check nothing transient is left. */
  async function flushBehindTheAgent(): Promise<void> {
    const t = tpm!;
    await relay!.release();
    expect((await transientHandles(t)).length).toBeGreaterThan(0); // the agent's AK
    await exec('tpm2_flushcontext', ['-t'], { env: { ...process.env, TPM2TOOLS_TCTI: t.tcti } });
    expect(await transientHandles(t)).toEqual([]);
  }

  it('attests again after tpm2_flushcontext -t, with the same AK', async () => {
    const { v, agent } = await setup();
    const attest = async () => {
      const s = newSession();
      const hello = (await agent.hello()) as { akPub: string };
      const { challenge, state } = await v.begin(JSON.parse(JSON.stringify(hello)), s);
      const response = await agent.respond(JSON.parse(JSON.stringify(challenge)), { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki });
      const r = await finishAndCommit(v, JSON.parse(JSON.stringify(response)), state, s);
      return { akPub: hello.akPub, suffix: r.agentIdSuffix };
    };
    const first = await attest();
    await flushBehindTheAgent();
    const second = await attest();
    expect(second).toEqual(first);
    // and it keeps working afterwards (the reloaded AK is the one in use)
    expect(await attest()).toEqual(first);
  });

  it('the AK flushed between hello and the challenge: the challenge made for it still activates', async () => {
    const { v, agent } = await setup();
    const s = newSession();
    const hello = await agent.hello();
    const { challenge, state } = await v.begin(JSON.parse(JSON.stringify(hello)), s);
    await flushBehindTheAgent();
    const response = await agent.respond(JSON.parse(JSON.stringify(challenge)), { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki });
    const r = await finishAndCommit(v, JSON.parse(JSON.stringify(response)), state, s);
    expect(r.selectors.some((x) => x.startsWith('tpm:ek_pubhash:'))).toBe(true);
  });
});

describe('tpm agent: reload-and-retry is bounded and specific (fake device)', () => {
  const EK_PUB = ekPublicFor(p256KeyPair().publicKey);
  const EK_HASH = spkiHash(parseTpm2bPublic(EK_PUB));
  const notLoaded = () => new SigilError('tpm.device_error', 'activating the credential: Esys_ActivateCredential: tpm:warn(2.0): a handle references an object that is not loaded', { status: 500, details: { rc: 0x910 } });

  function fakeDevice(fail: (op: string) => SigilError | null) {
    const calls: string[] = [];
    const ekPub = EK_PUB;
    const dev: TpmDevice = {
      async readEkCertificate() {
        calls.push('readEkCertificate');
        return null;
      },
      async getEkPublic() {
        calls.push('getEkPublic');
        return ekPub;
      },
      async createAk() {
        throw new Error('not used');
      },
      async loadAk() {
        calls.push('loadAk');
        return { name: Buffer.alloc(34) };
      },
      async activateCredential() {
        calls.push('activateCredential');
        const e = fail('activateCredential');
        if (e) throw e;
        return Buffer.alloc(32);
      },
      async quote() {
        throw new Error('not reached');
      },
      async pcrRead() {
        return [];
      },
      async close() {
        calls.push('close');
      },
    };
    return { dev, calls };
  }

  it('recognises TPM_RC_REFERENCE_H0..H6 and S0..S6 (any layer) and nothing else', () => {
    const err = (rc: number) => new SigilError('tpm.device_error', 'x', { details: { rc } });
    for (const rc of [0x910, 0x916, 0x918, 0x91e, 0x70910]) expect(isTpmObjectNotLoaded(err(rc))).toBe(true);
    for (const rc of [0x90f, 0x917, 0x91f, 0x98b, 0x100, 0x921]) expect(isTpmObjectNotLoaded(err(rc))).toBe(false);
    expect(isTpmObjectNotLoaded(new SigilError('tpm.closed', 'x', { details: { rc: 0x910 } }))).toBe(false);
    expect(isTpmObjectNotLoaded(new Error('rc 0x910'))).toBe(false);
  });

  it('a TPM that keeps answering 0x910 is reopened once, then the error is reported', async () => {
    const opened: ReturnType<typeof fakeDevice>[] = [];
    const agent = new TpmAgent({ tcti: 'fake' }, { dataDir: '/nonexistent', configDir: '/', logger }, async () => {
      const d = fakeDevice(() => notLoaded());
      opened.push(d);
      return d.dev;
    });
    // State as after a successful hello: the AK loaded under the EK the device reports.
    Object.assign(agent as unknown as Record<string, unknown>, { loadedAk: { version: 1, alg: 'rsa', ekPubHash: EK_HASH, public: '', private: '' }, ekAlg: 'ecc-p256' });
    const challenge = { credentialBlob: Buffer.alloc(8).toString('base64'), encryptedSecret: Buffer.alloc(8).toString('base64'), pcrSelection: Buffer.from('00000000', 'hex').toString('base64') };
    const s = newSession();
    const e = await agent.respond(challenge, { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.device_error');
    expect(opened).toHaveLength(2); // the first device and one reopened after the reload
    expect(opened[0]!.calls).toEqual(['activateCredential', 'close']);
    expect(opened[1]!.calls).toEqual(['getEkPublic', 'loadAk', 'activateCredential']);
  });

  it('other TPM errors are not retried', async () => {
    const opened: ReturnType<typeof fakeDevice>[] = [];
    const agent = new TpmAgent({ tcti: 'fake' }, { dataDir: '/nonexistent', configDir: '/', logger }, async () => {
      const d = fakeDevice(() => new SigilError('tpm.device_error', 'integrity check failed', { details: { rc: 0x9a2 } }));
      opened.push(d);
      return d.dev;
    });
    Object.assign(agent as unknown as Record<string, unknown>, { loadedAk: { version: 1, alg: 'rsa', ekPubHash: EK_HASH, public: '', private: '' }, ekAlg: 'ecc-p256' });
    const challenge = { credentialBlob: Buffer.alloc(8).toString('base64'), encryptedSecret: Buffer.alloc(8).toString('base64'), pcrSelection: Buffer.from('00000000', 'hex').toString('base64') };
    const s = newSession();
    await expect(agent.respond(challenge, { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki })).rejects.toMatchObject({ code: 'tpm.device_error' });
    expect(opened).toHaveLength(1);
    expect(opened[0]!.calls).toEqual(['activateCredential']);
  });
});
