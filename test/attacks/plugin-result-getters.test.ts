/**
 * The verifier checks what a node attestor's `finish` returned (checkSelectors: a list of at most
 * 1024 strings, each `<name>:…`) and then reads `selectors` again to build the agent's record. A
 * third-party plugin's result went from the boundary to the verifier as the plugin's own object, so
 * a `selectors` getter (or a Proxy) could show the check its own selectors and the verifier
 * another attestor's (`tpm:ek_pubhash:…`), satisfying entries meant for TPM-attested nodes. The
 * boundary now copies a third-party result once (members read once, the list copied to a plain
 * array), so what is checked is what is used.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { guardVerifier } from '../../src/plugins/error-boundary.js';
import { checkSelectors } from '../../src/plugins/result.js';
import type { AttestorResult, NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';

const session: SessionInput = { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(0), now: new Date() };

function plugin(result: () => unknown): NodeAttestorVerifier {
  return { begin: async () => ({ challenge: null, state: null }), finish: async () => result() as AttestorResult };
}

/** As the verifier does: check, then use. Returns the selectors used, or the code of the refusal. */
async function checkedThenUsed(v: NodeAttestorVerifier): Promise<string[] | string> {
  try {
    const r = await guardVerifier('x', v).finish({}, null, session);
    checkSelectors('x', r);
    return [...r.selectors];
  } catch (e) {
    return e instanceof SigilError ? e.code : `(not a SigilError) ${String(e)}`;
  }
}

describe('a third-party result is read once', () => {
  it('a selectors getter cannot show the verifier other selectors than the check saw', async () => {
    let reads = 0;
    const r = {
      claims: {},
      agentIdSuffix: 'n1',
      get selectors() {
        reads++;
        return reads <= 3 ? ['x:fine'] : ['tpm:ek_pubhash:' + 'ab'.repeat(32)];
      },
    };
    const used = await checkedThenUsed(plugin(() => r));
    expect(used).toEqual(['x:fine']);
  });

  it('a Proxy list cannot change between the check and the use', async () => {
    let reads = 0;
    const list = new Proxy(['x:fine'], {
      get(t, k, rcv) {
        if (k === '0') reads++;
        return k === '0' && reads > 1 ? 'tpm:ek_pubhash:' + 'cd'.repeat(32) : Reflect.get(t, k, rcv);
      },
    });
    const used = await checkedThenUsed(plugin(() => ({ claims: {}, agentIdSuffix: 'n1', selectors: list })));
    expect(used).toEqual(['x:fine']);
  });

  it('an oversized or unreadable list is refused, not copied', async () => {
    const huge = new Proxy([] as string[], { get: (t, k, rcv) => (k === 'length' ? 1e9 : Reflect.get(t, k, rcv)) });
    expect(await checkedThenUsed(plugin(() => ({ claims: {}, agentIdSuffix: 'n1', selectors: huge })))).toBe('attest.too_many_selectors');
    const throwing = {
      claims: {},
      agentIdSuffix: 'n1',
      get selectors(): string[] {
        throw new Error('no');
      },
    };
    expect(await checkedThenUsed(plugin(() => throwing))).toBe('attest.bad_selector');
  });
});
