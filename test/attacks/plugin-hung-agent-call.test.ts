/**
 * The agent attests by awaiting each node attestor's `hello()` and `respond()` in turn, in the one
 * loop that also renews the node SVID. Before this review a third-party attester whose promise
 * never settled (a device that never answers, a forgotten callback) stopped that loop for good:
 * no error, no log line, no retry, and the node never attested again. Third-party calls now have a
 * deadline (the longest a session can live: a later answer could not be used anyway) and fail with
 * `plugin.timeout`, which the loop logs and retries with backoff like any other failure.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { AGENT_PLUGIN_CALL_TIMEOUT_MS, guardAgent } from '../../src/plugins/error-boundary.js';
import type { NodeAttestorAgent } from '../../src/plugins/types.js';

const never = (): Promise<never> => new Promise<never>(() => undefined);

/** What `p` comes to within `ms`: its value, the code it failed with, or "pending". */
async function within(p: Promise<unknown>, ms: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const pending = new Promise<string>((r) => {
    timer = setTimeout(() => r('pending'), ms);
  });
  try {
    return await Promise.race([p.then((v) => `resolved ${String(v)}`, (e: unknown) => (e instanceof SigilError ? e.code : `threw ${String(e)}`)), pending]);
  } finally {
    clearTimeout(timer);
  }
}

describe("a third-party attester's call that never settles", () => {
  const hung: NodeAttestorAgent = { hello: never, respond: never };

  it('hello() fails with plugin.timeout at the deadline', async () => {
    const g = (guardAgent as (name: string, a: NodeAttestorAgent, timeoutMs?: number) => NodeAttestorAgent)('slow', hung, 50);
    expect(await within(g.hello(), 2000)).toBe('plugin.timeout');
  });

  it('respond() fails with plugin.timeout at the deadline', async () => {
    const g = (guardAgent as (name: string, a: NodeAttestorAgent, timeoutMs?: number) => NodeAttestorAgent)('slow', hung, 50);
    expect(await within(g.respond({}, { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(0) }), 2000)).toBe('plugin.timeout');
  });

  it('a call that settles in time is passed on, and the deadline is no shorter than a session may live', async () => {
    const fast: NodeAttestorAgent = { hello: async () => 'hi', respond: async () => 'ok' };
    const g = guardAgent('fast', fast);
    expect(await within(g.hello(), 2000)).toBe('resolved hi');
    expect(AGENT_PLUGIN_CALL_TIMEOUT_MS).toBeGreaterThanOrEqual(300_000);
  });
});
