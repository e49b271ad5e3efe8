/**
 * A fixed amount of the verifier's event log work, for counting its instructions with callgrind
 * (robust on a noisy shared host, where wall-clock rates move by half between runs):
 *
 *   MODE=novel LEVEL=check N=1000 valgrind --tool=callgrind --instr-atstart=no \
 *     node --single-threaded --no-flush-bytecode --import tsx bench/eventlog-instructions.ts
 *
 * It runs WARM units, prepares N more (everything the agent and the network would do: log bytes,
 * base64 text, quote, PCR objects), then turns callgrind's instruction counting on
 * (`callgrind_control -i on`, only when CG=1), runs the N units and turns it off. Instructions per
 * unit = "Collected" / N. Without CG it prints the CPU time per unit.
 *
 *  LEVEL=check:  `EventLogCheckCache.checkText` alone (decode, parse, memos, replay, facts, claims);
 *  LEVEL=attest: a verifier-side TPM attestation (begin + finish), as bench/eventlog.ts times it.
 *  MODE: none (no log; attest only), memo (the same log every time), fresh (a log never seen,
 *  its PCR 0–7 records known: one more record in PCR 14) or novel (one more record in PCR 4,
 *  which is quoted: the first node after a boot chain update).
 */
import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { sessionBinding } from '../src/plugins/binding.js';
import { EkCertVerifier, EkTrustStore } from '../src/tpm/ekcert.js';
import { EventLogCheckCache, parseEventLog, replayEventLog } from '../src/tpm/eventlog/index.js';
import { LogDecoder } from '../src/tpm/log-text.js';
import { TpmVerifier } from '../src/tpm/plugin.js';
import type { PcrBankSelection } from '../src/tpm/structures.js';
import { td } from '../test/support/testdata.js';
import { agileRecord } from '../test/tpm/eventlog-builder.js';
import { akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair, signerUnderEk, syntheticQuote } from '../test/tpm/synthetic.js';
import { MemoryState } from './support/memory-state.js';

type Mode = 'none' | 'memo' | 'fresh' | 'novel';
const mode = (process.env.MODE ?? 'novel') as Mode;
const level = process.env.LEVEL ?? 'check';
const WARM = Number(process.env.WARM ?? 3000);
const N = Number(process.env.N ?? 1000);
const CG = process.env.CG === '1';
if (!['none', 'memo', 'fresh', 'novel'].includes(mode) || !['check', 'attest'].includes(level) || (mode === 'none' && level === 'check')) throw new Error(`MODE=${mode} LEVEL=${level}?`);

const raw = readFileSync(td('tpm-eventlog', 'ubuntu_2104_shielded_vm_no_secure_boot_eventlog'));
const banks = parseEventLog(raw).banks.map((b) => b.id);
const idx = [0, 1, 2, 3, 4, 5, 6, 7];
const regs = replayEventLog(parseEventLog(raw), { banks: ['sha256'], indices: idx }).get('sha256')!;
const rawText = raw.toString('base64');

/** What the agent sends for the next unit: the log text (if any) and PCR 4 as quoted. */
interface Sent {
  readonly text: string | undefined;
  readonly pcr4: Buffer;
}
// Six-digit counters: every log of a mode has the same length (and the same base64 padding).
let seq = 100_000;
function nextSent(): Sent {
  if (mode === 'none') return { text: undefined, pcr4: regs.get(4)! };
  if (mode === 'memo') return { text: rawText, pcr4: regs.get(4)! };
  const n = seq++;
  if (mode === 'fresh') {
    const rec = agileRecord({ index: 14, type: 0xd, data: Buffer.from(`instructions unseen log ${n}\0`, 'latin1') }, banks);
    return { text: Buffer.concat([raw, rec]).toString('base64'), pcr4: regs.get(4)! };
  }
  const data = Buffer.from(`instructions new boot record ${n}\0`, 'latin1');
  const pcr4 = createHash('sha256').update(regs.get(4)!).update(createHash('sha256').update(data).digest()).digest();
  return { text: Buffer.concat([raw, agileRecord({ index: 4, type: 0xd, data }, banks)]).toString('base64'), pcr4 };
}

function toggle(on: boolean): void {
  if (!CG) return;
  execFileSync('callgrind_control', ['-i', on ? 'on' : 'off', String(process.pid)], { stdio: 'ignore' });
}

/** Runs `unit` over `items` (the same function for warm-up and window, so it is optimized before the window opens). */
function runSync(items: readonly unknown[], unit: (prepared: unknown) => void): void {
  for (let i = 0; i < items.length; i++) unit(items[i]);
}

async function runAsync(items: readonly unknown[], unit: (prepared: unknown) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i++) await unit(items[i]);
}

async function run(unit: (prepared: unknown) => Promise<void> | void, prepare: () => unknown, sync: boolean): Promise<void> {
  const each = async (items: unknown[]): Promise<void> => {
    if (sync) runSync(items, unit as (prepared: unknown) => void);
    else await runAsync(items, unit as (prepared: unknown) => Promise<void>);
  };
  for (let done = 0; done < WARM; done += 100) {
    const chunk: unknown[] = [];
    for (let i = 0; i < Math.min(100, WARM - done); i++) chunk.push(prepare());
    await each(chunk);
  }
  // Preparing the window's units (some 50 MB of text) runs several major GCs with no check running:
  // unless node runs with --no-flush-bytecode, V8 then flushes the check's code as unused and the
  // window pays for compiling it all again.
  const ready: unknown[] = [];
  for (let i = 0; i < N; i++) ready.push(prepare());
  if (process.env.MARK === '1') console.log('-- window --');
  toggle(true);
  // Callgrind reads its command file between blocks: give it a moment before the window starts.
  if (CG) await new Promise((r) => setTimeout(r, 500));
  const c0 = process.cpuUsage();
  await each(ready);
  const u = process.cpuUsage(c0);
  toggle(false);
  console.log(`${level} ${mode}: ${((u.user + u.system) / N).toFixed(1)} µs CPU per unit over ${N} after ${WARM}`);
}

async function checkLevel(): Promise<void> {
  const cache = new EventLogCheckCache();
  const decoder = new LogDecoder('eventLog', 1024 * 1024);
  let sink = 0;
  await run(
    (p) => {
      const { text, values } = p as { text: string; values: Buffer[] };
      // New PCR objects per check, as a quote's parse makes them (made here: objects made before the
      // warm-up had another map by the window, which deoptimized the check's code).
      const pcrs = values.map((value, index) => ({ bank: 'sha256', index, value }));
      sink += cache.checkText(text, (t) => decoder.decode(t), pcrs, [10]).selectors.length;
    },
    () => {
      const s = nextSent();
      return { text: s.text, values: idx.map((index) => Buffer.from(index === 4 ? s.pcr4 : regs.get(index)!)) };
    },
    true,
  );
  if (sink === 0) throw new Error('no selectors');
}


async function attestLevel(): Promise<void> {
  const root = await makeRoot('Bench EK Root');
  const inter = await makeIntermediate('Bench EK Issuing CA', root);
  const ek = rsaKeyPair();
  const ak = rsaKeyPair();
  const akPub = akPublicFor(ak.publicKey);
  const selection: PcrBankSelection[] = [{ bank: 'sha256', pcrs: idx }];
  const hello = { ekCert: (await makeEkCert(ek.publicKey, inter)).toString('base64'), ekIntermediates: [inter.der.toString('base64')], ekPub: ekPublicFor(ek.publicKey).toString('base64'), akPub: akPub.toString('base64') };
  // The quote's qualifiedSigner: the AK as the EK's child (the attestor requires it).
  const signer = signerUnderEk(Buffer.from(hello.ekPub, 'base64'), akPub);
  const verifier = new TpmVerifier(new EkCertVerifier(new EkTrustStore([root.der])), selection, ['sha256'], { state: new MemoryState() });
  const csrSpki = p256KeyPair().publicKey.export({ type: 'spki', format: 'der' });
  // One session for all units: the agent's answer to the credential challenge is made once (its
  // RSA private-key work is not the verifier's), and the secret the verifier kept is set to it.
  const nonce = randomBytes(32);
  const binding = sessionBinding(nonce, csrSpki);
  const secret = randomBytes(32);
  const secretHash = createHash('sha256').update(secret).digest('base64');
  let clock = 1n;
  await run(
    async (p) => {
      const response = p as Record<string, unknown>;
      const session = { nonce, csrSpki, binding, now: new Date() };
      const { state } = await verifier.begin(hello, session);
      (state as { secretHash: string }).secretHash = secretHash;
      const r = await verifier.finish(response, state, session);
      if (mode !== 'none' && !r.selectors.includes('tpm:secureboot:disabled')) throw new Error('event log selectors missing');
    },
    () => {
      const s = nextSent();
      const values = new Map(idx.map((i) => [`sha256:${i}`, i === 4 ? s.pcr4 : regs.get(i)!]));
      const q = syntheticQuote({ ak: ak.privateKey, extraData: binding, selection, values, clock: clock++, resetCount: 1, restartCount: 0, signer });
      const pcrValues = idx.map((i) => ({ bank: 'sha256', index: i, value: values.get(`sha256:${i}`)!.toString('hex') }));
      return { secret: secret.toString('base64'), quote: q.attest.toString('base64'), signature: q.signature.toString('base64'), pcrValues, ...(s.text !== undefined ? { eventLog: s.text } : {}) };
    },
    false,
  );
}

await (level === 'check' ? checkLevel() : attestLevel());
process.exit(0);
