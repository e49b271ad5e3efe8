/**
 * `sigil evidence verify tpm … --json` and `sigil evidence eventlog … --json`, through the real CLI:
 * a usage problem (an unreadable file, bad hex, a bad time, a malformed --pcrs) is answered like the
 * aws_nitro, sev_snp and tdx verbs answer it — one JSON object on stdout with `cli.usage` naming the
 * flag, exit 2 — so a script reading stdout sees why. Before, these two verbs left stdout empty and
 * wrote the message to stderr only. Without --json the message stays on stderr (exit 2).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sigil, type CliRun } from './evidence-cli.js';

let tmp = '';
let blob = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-tpm-usage-'));
  blob = join(tmp, 'blob.bin');
  await writeFile(blob, Buffer.from([1, 2, 3]));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function expectUsageJson(r: CliRun, ...phrases: string[]): void {
  expect({ code: r.code, err: r.err }).toEqual({ code: 2, err: '' });
  expect(r.json?.ok).toBe(false);
  expect(r.json?.attestor).toBe('tpm');
  expect(r.json?.error?.code).toBe('cli.usage');
  for (const p of phrases) expect(r.json?.error?.message).toContain(p);
}

describe('evidence verify tpm --json: usage problems as one JSON object', () => {
  const base = (over: Record<string, string>): string[] => {
    const o: Record<string, string> = { '--ek-cert': blob, '--ek-ca': blob, '--ak-pub': blob, '--quote': blob, '--signature': blob, '--nonce': '00', ...over };
    return ['evidence', 'verify', 'tpm', ...Object.entries(o).flat(), '--json'];
  };

  it('names the file that cannot be read, the bad nonce, the bad time and the bad PCR spec', async () => {
    const missing = join(tmp, 'no-such-file');
    const [file, nonce, at, pcrs] = await Promise.all([
      sigil(base({ '--quote': missing })),
      sigil(base({ '--nonce': 'zz' })),
      sigil(base({ '--at': '2025-01-01T00:00:00' })),
      sigil(base({ '--pcrs': 'md5:0' })),
    ]);
    expectUsageJson(file, '--quote', missing);
    expectUsageJson(nonce, '--nonce');
    expectUsageJson(at, '--at');
    expectUsageJson(pcrs, '--pcrs', 'md5:0');
  });

  it('--event-log without --pcr-values is a usage error in JSON too', async () => {
    expectUsageJson(await sigil(base({ '--event-log': blob })), '--event-log', '--pcr-values');
  });

  it('without --json the message goes to stderr, stdout stays empty, exit 2', async () => {
    const r = await sigil(base({ '--nonce': 'zz' }).filter((a) => a !== '--json'));
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toContain('--nonce');
  });
});

describe('evidence eventlog --json: usage problems as one JSON object', () => {
  it('an unreadable log file and a malformed --pcrs are named', async () => {
    const missing = join(tmp, 'no-such-log');
    const [file, notJson, badBank] = await Promise.all([
      sigil(['evidence', 'eventlog', missing, '--json']),
      sigil(['evidence', 'eventlog', blob, '--pcrs', '{not json', '--json']),
      sigil(['evidence', 'eventlog', blob, '--pcrs', '{"md5":{"0":"00"}}', '--json']),
    ]);
    expectUsageJson(file, missing);
    expectUsageJson(notJson, '--pcrs', 'not JSON');
    expectUsageJson(badBank, '--pcrs', 'md5');
  });

  it('a log that does not parse is still a refusal of the evidence (exit 1), not a usage error', async () => {
    const r = await sigil(['evidence', 'eventlog', blob, '--json']);
    expect(r.code).toBe(1);
    expect(r.json?.ok).toBe(false);
    expect(r.json?.error?.code).toMatch(/^tpm\./);
  });
});
