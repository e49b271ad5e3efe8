/**
 * The plugin kit promises a plugin author the verifier's own checks of what `finish` returns
 * (`checkAttestorResult` in `sigil/plugin`, and `runAttestation` in `sigil/plugin/testing`, which
 * checks "as the verifier checks it"). The verifier refuses a result whose `status` is
 * "contraindicated" (attest.contraindicated, 403) or one it does not know (attest.bad_status, 500),
 * since test/attacks/session-factor-status.test.ts; the kit checked selectors and the agent ID
 * only, so a plugin answering `status: "contraindicated"` passed its author's tests and was then
 * refused by every verifier. The kit now runs the verifier's very check (plugins/result.ts).
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { checkAttestorResult, type AttestorResult, type NodeAttestorAgentPlugin, type NodeAttestorVerifierPlugin } from '../../src/plugin-kit/index.js';
import { runAttestation } from '../../src/plugin-kit/testing.js';

const base: AttestorResult = { selectors: ['judge:seen'], claims: {}, agentIdSuffix: 'node-1' };

function outcome(status: unknown): string | { code: string; status: number } {
  try {
    return checkAttestorResult('judge', { ...base, status } as AttestorResult, 'example.org').toString();
  } catch (e) {
    if (e instanceof SigilError) return { code: e.code, status: e.status };
    throw e;
  }
}

/** Both halves of a plugin whose verifier half answers `status`. */
function judge(status: unknown): { verifier: NodeAttestorVerifierPlugin; agent: NodeAttestorAgentPlugin } {
  const configSchema = { type: 'object', additionalProperties: false, properties: {} };
  return {
    verifier: {
      name: 'judge',
      configSchema,
      create: () => ({
        begin: async () => ({ challenge: {}, state: {} }),
        finish: async () => ({ ...base, status }) as AttestorResult,
      }),
    },
    agent: { name: 'judge', configSchema, create: () => ({ hello: async () => ({}), respond: async () => ({}) }) },
  };
}

describe("the kit checks a result's status as the verifier does", () => {
  it('"contraindicated" is refused: attest.contraindicated, 403', () => {
    expect(outcome('contraindicated')).toEqual({ code: 'attest.contraindicated', status: 403 });
  });

  it.each([['rejected'], ['AFFIRMING'], [null], [1], [{}]])('status %j is a plugin bug: attest.bad_status, 500', (status) => {
    expect(outcome(status)).toEqual({ code: 'attest.bad_status', status: 500 });
  });

  it('"affirming", "warning" and no status pass, giving the agent ID', () => {
    for (const status of ['affirming', 'warning', undefined]) expect(outcome(status)).toBe('spiffe://example.org/sigil/agent/judge/node-1');
  });

  it('runAttestation rejects a contraindicated result with the code the agent would get', async () => {
    const e = await runAttestation(judge('contraindicated')).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('attest.contraindicated');
  });

  it('runAttestation still passes a "warning" result', async () => {
    const run = await runAttestation(judge('warning'));
    expect(run.result.status).toBe('warning');
    expect(run.agentId).toBe('spiffe://example.org/sigil/agent/judge/node-1');
  });
});
