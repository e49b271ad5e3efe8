/**
 * The agent half sends measurement logs with its quote: a configured file is read after the
 * quote and sent base64; the default path is used only with a device TCTI and left out when the
 * kernel has none; a configured path that cannot be read is a typed error; bad config is refused.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { TpmAgent, tpmAgentPlugin, type TpmDevice } from '../../src/tpm/plugin.js';
import { encodePcrSelection } from '../../src/tpm/structures.js';
import { rsaKeyPair, syntheticQuote } from './synthetic.js';

const logger = pino({ level: 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'sigil-eventlog-agent-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ak = rsaKeyPair();
const selection = [{ bank: 'sha256' as const, pcrs: [0] }];
const value = Buffer.alloc(32, 9);

function fakeDevice(): TpmDevice {
  return {
    readEkCertificate: () => Promise.resolve(null),
    getEkPublic: () => Promise.reject(new Error('unused')),
    createAk: () => Promise.reject(new Error('unused')),
    loadAk: () => Promise.reject(new Error('unused')),
    activateCredential: () => Promise.resolve(Buffer.alloc(32, 1)),
    quote: (_sel: Buffer, qd: Buffer) => Promise.resolve(syntheticQuote({ ak: ak.privateKey, extraData: qd, selection, values: new Map([['sha256:0', value]]), clock: 1n, resetCount: 1, restartCount: 0 })),
    pcrRead: () => Promise.resolve([{ bank: 'sha256', index: 0, value }]),
    close: () => Promise.resolve(),
  } as unknown as TpmDevice;
}

const challenge = { credentialBlob: 'AAAA', encryptedSecret: 'AAAA', pcrSelection: encodePcrSelection(selection).toString('base64') };
const session = { nonce: Buffer.alloc(32), binding: Buffer.alloc(32, 2), csrSpki: Buffer.alloc(0) };

async function respond(config: ConstructorParameters<typeof TpmAgent>[0]): Promise<Record<string, unknown>> {
  const agent = new TpmAgent(config, { dataDir: dir, configDir: dir, logger }, () => Promise.resolve(fakeDevice()));
  try {
    return (await agent.respond(challenge, session)) as Record<string, unknown>;
  } finally {
    await agent.close();
  }
}

describe('tpm agent: measurement logs in the response', () => {
  it('sends configured files (relative to the config directory), base64', async () => {
    writeFileSync(join(dir, 'bios.bin'), Buffer.from([1, 2, 3]));
    writeFileSync(join(dir, 'ima.txt'), 'x\n');
    const r = await respond({ tcti: 'swtpm:host=127.0.0.1,port=1', eventLog: 'bios.bin', imaLog: join(dir, 'ima.txt') });
    expect(r.eventLog).toBe('AQID');
    expect(Buffer.from(r.imaLog as string, 'base64').toString()).toBe('x\n');
  });

  it('sends nothing by default with a non-device TCTI, or when disabled', async () => {
    const r = await respond({ tcti: 'swtpm:host=127.0.0.1,port=1' });
    expect(r).not.toHaveProperty('eventLog');
    expect(r).not.toHaveProperty('imaLog');
    expect(await respond({ tcti: 'device:/dev/tpmrm0', eventLog: false })).not.toHaveProperty('eventLog');
  });

  it('a configured log that cannot be read is tpm.eventlog_unreadable', async () => {
    const e = await respond({ tcti: 'swtpm:host=127.0.0.1,port=1', eventLog: 'missing.bin' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.eventlog_unreadable');
  });

  it('config: eventLog/imaLog must be a boolean or a non-empty path', () => {
    const deps = { dataDir: dir, configDir: dir, logger } as Parameters<typeof tpmAgentPlugin.create>[1];
    for (const bad of [{ eventLog: '' }, { eventLog: 3 }, { imaLog: [] }]) {
      expect(() => tpmAgentPlugin.create({ tcti: 'device:/dev/tpmrm0', ...bad }, deps)).toThrow(expect.objectContaining({ code: 'tpm.config_invalid' }) as unknown as Error);
    }
    expect(() => tpmAgentPlugin.create({ tcti: 'device:/dev/tpmrm0', eventLog: true, imaLog: '/x' }, deps)).not.toThrow();
  });
});
