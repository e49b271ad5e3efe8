/**
 * parseStatus and parseStatStartTime (src/workload/proc.ts) find the fields they need without
 * splitting the whole text. Checked here against the split-everything rules they replace (kept
 * below as the reference): over the real /proc files of this machine and many mutated texts,
 * both give the same value, or both refuse with the same error code.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseStatStartTime, parseStatus, type ProcStatus } from '../../src/workload/proc.js';

// ---------------------------------------------------------------- the reference rules

function refIdList(line: string, what: string, exactlyFour: boolean): number[] {
  const parts = line.trim().length === 0 ? [] : line.trim().split(/\s+/);
  if (exactlyFour && parts.length !== 4) throw new SigilError('workload.bad_proc_status', `status ${what} line does not have 4 ids`);
  if (parts.length > 65536) throw new SigilError('workload.bad_proc_status', `status ${what} line has too many ids`);
  return parts.map((p) => {
    if (!/^\d{1,10}$/.test(p)) throw new SigilError('workload.bad_proc_status', `status ${what} line has a non-numeric id`);
    const n = Number(p);
    if (n > 0xffffffff) throw new SigilError('workload.bad_proc_status', `status ${what} id ${p} is out of range`);
    return n;
  });
}

function refStatus(text: string): ProcStatus {
  let uids: number[] | undefined;
  let gids: number[] | undefined;
  let groups: number[] | undefined;
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const key = line.slice(0, colon);
    const value = line.slice(colon + 1);
    if (key === 'Uid') {
      if (uids) throw new SigilError('workload.bad_proc_status', 'status has two Uid lines');
      uids = refIdList(value, 'Uid', true);
    } else if (key === 'Gid') {
      if (gids) throw new SigilError('workload.bad_proc_status', 'status has two Gid lines');
      gids = refIdList(value, 'Gid', true);
    } else if (key === 'Groups') {
      if (groups) throw new SigilError('workload.bad_proc_status', 'status has two Groups lines');
      groups = refIdList(value, 'Groups', false);
    }
  }
  if (!uids || !gids) throw new SigilError('workload.bad_proc_status', 'status has no Uid/Gid lines');
  return { uids: uids as ProcStatus['uids'], gids: gids as ProcStatus['gids'], groups: groups ?? [] };
}

function refStartTime(text: string): bigint {
  const close = text.lastIndexOf(')');
  if (close < 0 || text.indexOf('(') < 0 || text.indexOf('(') > close) throw new SigilError('workload.bad_proc_stat', 'stat line has no "(comm)" field');
  const v = text.slice(close + 1).trim().split(/\s+/)[19];
  if (v === undefined || !/^\d{1,20}$/.test(v)) throw new SigilError('workload.bad_proc_stat', 'stat line has no valid starttime (field 22)');
  return BigInt(v);
}

// ---------------------------------------------------------------- comparison

type Outcome = { ok: true; value: unknown } | { ok: false; code: string };

function outcome(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    return { ok: false, code: (e as { code?: string }).code ?? `not a SigilError: ${String(e)}` };
  }
}

/** A small deterministic generator (xorshift32), so that a failure can be replayed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

const PIECES = ['\t', ' ', '  ', '\r', '\n', '\u00a0', '\u2028', '\v', ':', '-', '0', '1', '7', '9', '4294967295', '4294967296', '99999999999', 'x', 'Uid:', 'Gid:', 'Groups:', '\nUid:', '\nGid:', '\nGroups:', ')', '(', 'é'];

/** `text` with a few random edits: pieces inserted, characters removed or replaced. */
function mutate(text: string, r: (n: number) => number): string {
  let t = text;
  const edits = 1 + r(4);
  for (let k = 0; k < edits; k++) {
    const at = r(t.length + 1);
    const op = r(3);
    const piece = PIECES[r(PIECES.length)]!;
    if (op === 0) t = t.slice(0, at) + piece + t.slice(at);
    else if (op === 1) t = t.slice(0, at) + t.slice(at + 1 + r(3));
    else t = t.slice(0, at) + piece + t.slice(at + piece.length);
  }
  return t;
}

const realStatus = readFileSync('/proc/self/status', 'utf8');
const realStat = readFileSync('/proc/self/stat', 'utf8');
const STATUS_SAMPLES = [
  realStatus,
  readFileSync('/proc/1/status', 'utf8'),
  'Name:\tx\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 11 \nVmRSS:\t1 kB\n',
  'Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n',
  'Uid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 30 46 100 118 1000 \n',
];
const STAT_SAMPLES = [realStat, readFileSync('/proc/1/stat', 'utf8'), '42 (a) b) 1 2 (c ) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 123456789 1000 50\n', '42 (new\nline) S 1 2 3 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 123456789'];

describe('/proc parsers against the split-everything rules', () => {
  it('parseStatus: same ids or same refusal, on real and mutated status texts', () => {
    const r = rng(0x5eed);
    for (const s of STATUS_SAMPLES) expect(outcome(() => parseStatus(s))).toEqual(outcome(() => refStatus(s)));
    for (let i = 0; i < 30_000; i++) {
      const t = mutate(STATUS_SAMPLES[r(STATUS_SAMPLES.length)]!, r);
      const got = outcome(() => parseStatus(t));
      const want = outcome(() => refStatus(t));
      if (JSON.stringify(got) !== JSON.stringify(want)) expect({ text: t, got }).toEqual({ text: t, got: want });
    }
  });

  it('parseStatStartTime: same start time or same refusal, on real and mutated stat lines', () => {
    const r = rng(0xc0ffee);
    const str = (o: Outcome): string => JSON.stringify(o, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
    for (const s of STAT_SAMPLES) expect(str(outcome(() => parseStatStartTime(s)))).toBe(str(outcome(() => refStartTime(s))));
    for (let i = 0; i < 30_000; i++) {
      const t = mutate(STAT_SAMPLES[r(STAT_SAMPLES.length)]!, r);
      const got = str(outcome(() => parseStatStartTime(t)));
      const want = str(outcome(() => refStartTime(t)));
      if (got !== want) expect({ text: t, got }).toEqual({ text: t, got: want });
    }
  });
});
