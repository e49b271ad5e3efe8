/**
 * What the Workload API's caller checks cost, measured alone on a real connection record of this
 * process (its /proc files held open, as the server holds a caller's): what every call answered from
 * cached selectors pays (the exe stat, the status read, the credential compare), and what one
 * attestation pays (the baseline status read, the unix and container attestors through the held
 * files, the check after them). Used by bench/agent.ts and bench/workload-api.ts to set the checks
 * beside the bare HTTP/2 floor: issue 15 asks for CPU per call within 1.3× of that floor, and the
 * floor does none of this.
 *
 * A quiet loop is the least these cost: in the server they run between other work, with colder caches.
 */
import pino from 'pino';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { attestCaller } from '../../src/agent/workload-api/attest.js';
import { CallerConnection } from '../../src/agent/workload-api/caller.js';
import { credentialLines, sameCredentials } from '../../src/agent/workload-api/connection.js';
import { timerDeadline } from '../../src/agent/workload-api/deadlines.js';
import { createContainerAttestor } from '../../src/workload/container.js';
import { createUnixAttestor } from '../../src/workload/unix.js';

/**
 * Attestations per call in the benches' open loops: 1,000 calls/s over 200 connections is 5 calls
 * per connection per second, and a connection keeps an attestation for a random 0.5–1 s
 * (selectorCacheMs 1,000, mean 0.75 s): 1 / (5 × 0.75) ≈ 0.27.
 */
export const ATTESTATIONS_PER_CALL = 0.27;

export interface CallerCheckCost {
  /** µs per call answered from cached selectors. */
  cachedCall: number;
  /** µs per attestation. */
  attestation: number;
  /** cachedCall + ATTESTATIONS_PER_CALL × attestation, µs. */
  perCall: number;
}

export async function callerCheckCost(): Promise<CallerCheckCost> {
  const conn = new CallerConnection({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() }, '/proc');
  try {
    await conn.ready;
    const lines = credentialLines(conn.statusText());
    const attestors = new Map<string, WorkloadAttestor>([
      ['unix', createUnixAttestor({ hashBinaries: true })],
      ['container', createContainerAttestor({})],
    ]);
    const quiet = pino({ level: 'silent' });
    const cachedCall = (): void => {
      conn.checkImage();
      if (!sameCredentials(conn.statusText(), lines)) throw new Error('credentials changed during the bench');
    };
    const attestOnce = async (): Promise<void> => {
      const before = conn.statusText();
      await attestCaller(conn.caller, attestors, quiet, 5000, timerDeadline, conn.attestationFiles(before));
      if (!sameCredentials(conn.checkUnchanged(), lines)) throw new Error('credentials changed during the bench');
    };
    await attestOnce(); // the executable's hash, once
    let t0 = performance.now();
    for (let i = 0; i < 5000; i++) cachedCall();
    const cached = ((performance.now() - t0) / 5000) * 1000;
    t0 = performance.now();
    for (let i = 0; i < 2000; i++) await attestOnce();
    const attestation = ((performance.now() - t0) / 2000) * 1000;
    return { cachedCall: cached, attestation, perCall: cached + ATTESTATIONS_PER_CALL * attestation };
  } finally {
    conn.close();
  }
}
