/**
 * Runs every configured workload attestor for a caller, concurrently, under one deadline. An
 * attestor that fails or times out is logged and contributes no selectors; the result is the
 * union of the others' selectors (deduplicated, sorted). Selectors must be prefixed with the
 * attestor's name (`unix:…` from "unix"), or with one of the extra types the attestor declares in
 * `selectorTypes` (`k8s:…` from "container") when no other configured attestor has that name or
 * claims that type; anything else is dropped with a warning, so one plugin cannot speak for another.
 */
import { getEventListeners } from 'node:events';
import type { Logger } from 'pino';
import type { Selector, WorkloadAttestor, WorkloadCaller } from '../../plugins/types.js';
import { timerDeadline, type ScheduleDeadline } from './deadlines.js';
import { readsHeldFiles, type CallerProcFiles } from '../../workload/proc.js';

export const DEFAULT_ATTEST_TIMEOUT_MS = 5000;
const MAX_SELECTORS_PER_ATTESTOR = 4096;
const MAX_SELECTOR_LENGTH = 4096;
/**
 * Abort reasons handed to attestors' signals: made once (a default reason is a DOMException with
 * a stack trace, built on every call), frozen so that no attestor can change them for the next,
 * and named AbortError like the default.
 */
function abortReason(message: string): Error {
  const e = new Error(message);
  e.name = 'AbortError';
  return Object.freeze(e);
}
const ATTESTATION_OVER = abortReason('workload attestation is over');
const ATTESTATION_TIMED_OUT = abortReason('workload attestation timed out');

/**
 * Controllers whose signals are free for the next attestation. An AbortController made per
 * attestation was most of what an attestation left behind to be promoted: measured on Node 20,
 * about 600 bytes of old generation per attestation (the signal and, once aborted, its event),
 * whether or not it was aborted, at ~270 attestations a second under load. A controller goes back
 * here only when its attestation ended without aborting it and nothing listens to its signal any
 * more (so nothing of that attestation can still be told anything through it); otherwise it is
 * aborted ("over") and dropped, as before. One attestation at a time holds a given controller.
 */
const spareControllers: AbortController[] = [];
const MAX_SPARE_CONTROLLERS = 256;

function takeController(): AbortController {
  return spareControllers.pop() ?? new AbortController();
}

function releaseController(ac: AbortController): void {
  if (ac.signal.aborted) return;
  if (spareControllers.length < MAX_SPARE_CONTROLLERS && getEventListeners(ac.signal, 'abort').length === 0) spareControllers.push(ac);
  // Tell attestors still listening (only after a timeout, or one that left a listener behind) to
  // stop. A fixed reason: the default one is a DOMException with a stack trace, which cost more
  // than the rest of a cached call.
  else ac.abort(ATTESTATION_OVER);
}

const prefixCache = new WeakMap<Map<string, WorkloadAttestor>, Map<string, string[]>>();

/** Each attestor's allowed selector prefixes: its own name, plus declared types nobody else has. */
export function selectorPrefixes(attestors: Map<string, WorkloadAttestor>): Map<string, string[]> {
  const cached = prefixCache.get(attestors);
  if (cached) return cached;
  const claims = new Map<string, number>();
  for (const [name, a] of attestors) {
    for (const t of new Set([name, ...(a.selectorTypes ?? [])])) claims.set(t, (claims.get(t) ?? 0) + 1);
  }
  const out = new Map<string, string[]>();
  for (const [name, a] of attestors) {
    const extra = (a.selectorTypes ?? []).filter((t) => t !== name && !attestors.has(t) && claims.get(t) === 1);
    out.set(name, [`${name}:`, ...extra.map((t) => `${t}:`)]);
  }
  prefixCache.set(attestors, out);
  return out;
}

export interface CallerAttestation {
  /** Union of the selectors of the attestors that succeeded, sorted. */
  selectors: Selector[];
  /** Names of attestors that failed or timed out. */
  failed: string[];
}

/**
 * Attest `caller` with every attestor. `files`: the caller's /proc files as its connection holds
 * them open, read by the built-in attestors that can (see CallerProcFiles) instead of the paths.
 */
export async function attestCaller(
  caller: WorkloadCaller,
  attestors: Map<string, WorkloadAttestor>,
  logger: Logger,
  timeoutMs = DEFAULT_ATTEST_TIMEOUT_MS,
  schedule: ScheduleDeadline = timerDeadline,
  files?: CallerProcFiles,
): Promise<CallerAttestation> {
  const failed: string[] = [];
  const prefixes = selectorPrefixes(attestors);
  const ac = takeController();
  let cancelTimeout: () => void = () => undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    cancelTimeout = schedule(timeoutMs, () => {
      ac.abort(ATTESTATION_TIMED_OUT);
      resolve('timeout');
    });
  });
  const one = async (name: string, attestor: WorkloadAttestor): Promise<Selector[]> => {
    try {
      const copy = { ...caller };
      const r = await Promise.race([files !== undefined && readsHeldFiles(attestor) ? attestor.attestWithFiles(copy, files, ac.signal) : attestor.attest(copy, ac.signal), timeout]);
      if (r === 'timeout') {
        logger.warn({ attestor: name, pid: caller.pid, timeoutMs }, 'workload attestor timed out; it contributes no selectors');
        failed.push(name);
        return [];
      }
      if (!Array.isArray(r)) {
        logger.warn({ attestor: name, pid: caller.pid }, 'workload attestor returned a non-array; ignored');
        failed.push(name);
        return [];
      }
      const allowed = prefixes.get(name) as string[];
      const good: Selector[] = [];
      const n = Math.min(r.length, MAX_SELECTORS_PER_ATTESTOR);
      for (let i = 0; i < n; i++) {
        const s: unknown = r[i];
        if (typeof s === 'string' && s.length <= MAX_SELECTOR_LENGTH && hasPrefix(s, allowed)) good.push(s);
        else logger.warn({ attestor: name, selector: String(s).slice(0, 100) }, 'workload attestor returned a selector outside its namespace; dropped');
      }
      return good;
    } catch (e) {
      const err = e as { code?: string; message?: string };
      logger.warn({ attestor: name, pid: caller.pid, code: err.code, err: err.message }, 'workload attestor failed; it contributes no selectors');
      failed.push(name);
      return [];
    }
  };
  try {
    const runs: Promise<Selector[]>[] = [];
    for (const [name, attestor] of attestors) runs.push(one(name, attestor));
    const results = await Promise.all(runs);
    return { selectors: sortedUnion(results), failed: failed.sort() };
  } finally {
    cancelTimeout();
    releaseController(ac);
  }
}

/** Whether `s` starts with one of `prefixes` and has more after it. */
function hasPrefix(s: string, prefixes: readonly string[]): boolean {
  for (const p of prefixes) if (s.length > p.length && s.startsWith(p)) return true;
  return false;
}

/** The union of selector lists, sorted (as `[...new Set(lists.flat())].sort()`). */
function sortedUnion(lists: readonly Selector[][]): Selector[] {
  const all: Selector[] = [];
  for (const l of lists) for (const s of l) all.push(s);
  all.sort();
  let w = 0;
  for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[w - 1]) all[w++] = all[i]!;
  all.length = w;
  return all;
}
