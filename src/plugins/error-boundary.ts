/**
 * The boundary between Sigil and a third-party plugin's errors (issue 11, item 10).
 *
 * A third-party plugin may fail with its own stable code, and that code reaches the agent (and the
 * operator's logs) unchanged — but only codes in the plugin's own namespace, `<plugin name>.<reason>`
 * (e.g. `x.bad_mac` from the plugin named `x`). A plugin may have been built against another copy
 * of Sigil (its own `node_modules/sigil`) or none at all, so its `SigilError` is not ours: any Error
 * whose `code` is in the namespace is accepted, whatever its class. A code outside the namespace is
 * never passed on, because hosts and agents act on codes: a plugin throwing `attest.agent_banned`,
 * `agent.unknown` (the agent re-attests) or `tpm.counter_race` would impersonate Sigil or another
 * attestor. Such an error becomes `plugin.code_outside_namespace` (HTTP 500: a plugin bug), naming
 * the code it tried. Errors without a usable code are left to the host, which wraps them as before
 * (`attest.attestor_failed`, `agent.attestor_failed`, `plugin.init_failed`).
 */
import { SigilError, errorMessage } from '../errors.js';
import { MAX_ATTESTOR_SELECTORS } from './result.js';
import type { AttestorResult, NodeAttestorAgent, NodeAttestorVerifier, WorkloadAttestor } from './types.js';

const REASON_RE = /^[a-z0-9_]+(?:\.[a-z0-9_]+)*$/;
/** The longest code the agent accepts from the verifier (src/agent/verifier-client.ts). */
const MAX_CODE = 100;

function statusOf(v: unknown): number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 400 && v <= 599 ? v : 400;
}

/** True when `code` is `<namespace>.<reason>` with a snake_case reason (dots allowed) and fits on the wire. */
export function inNamespace(code: string, namespace: string): boolean {
  return code.length <= MAX_CODE && code.startsWith(`${namespace}.`) && REASON_RE.test(code.slice(namespace.length + 1));
}

/**
 * What a third-party plugin named `name` threw, as Sigil passes it on: a SigilError with the
 * plugin's own code (namespaced), `plugin.code_outside_namespace`, or `e` unchanged when it carries
 * no code (the host wraps it). The thrown value's properties are read once each (a getter cannot
 * show the checks one code and the host another), and a SigilError is never passed on as the
 * plugin's own object: what leaves is always built here. A value whose properties cannot be read,
 * or that poses as a SigilError without a usable code, becomes a plain Error for the host to wrap.
 */
export function fromPlugin(e: unknown, name: string): unknown {
  try {
    return judge(e, name);
  } catch {
    return new Error(`plugin "${name}" threw a value whose properties cannot be read`);
  }
}

function judge(e: unknown, name: string): unknown {
  if ((typeof e !== 'object' && typeof e !== 'function') || e === null) return e;
  const o = e as { code?: unknown; message?: unknown; name?: unknown; status?: unknown; details?: unknown };
  const code = o.code;
  const rawMessage = o.message;
  const poses = e instanceof SigilError || o.name === 'SigilError';
  if (typeof code !== 'string') {
    if (!poses && typeof e === 'object') return e;
    return new Error(`plugin "${name}" failed: ${typeof rawMessage === 'string' ? rawMessage : 'no message'}`, { cause: e });
  }
  const message = typeof rawMessage === 'string' ? rawMessage : code;
  if (inNamespace(code, name)) {
    const rawDetails = o.details;
    const details = typeof rawDetails === 'object' && rawDetails !== null ? (rawDetails as Record<string, unknown>) : undefined;
    return new SigilError(code, message, { status: statusOf(o.status), ...(details ? { details } : {}), cause: e });
  }
  // Errors that present themselves as Sigil errors (ours, or another copy's) but use a foreign code;
  // plain errors with system codes (ENOENT, ERR_…) stay as they are and the host wraps them.
  if (poses || typeof e !== 'object' || /^[a-z0-9_]+\.[a-z0-9_.]+$/.test(code)) {
    return new SigilError(
      'plugin.code_outside_namespace',
      `plugin "${name}" failed with code "${code.slice(0, MAX_CODE)}", outside its namespace "${name}.*": ${message}`,
      { status: 500, cause: e },
    );
  }
  return e;
}

/** Run a plugin's synchronous member with its errors passed through `fromPlugin`. */
function guardedSync<A extends unknown[], R>(name: string, self: unknown, f: (...args: A) => R): (...args: A) => R {
  return (...args: A) => {
    try {
      return f.apply(self, args);
    } catch (e) {
      throw fromPlugin(e, name);
    }
  };
}

async function guarded<T>(name: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (e) {
    throw fromPlugin(e, name);
  }
}

/**
 * How long the agent waits for a third-party attester's `hello()` or `respond()`: the longest an
 * attestation session may live (`attestation.sessionTtl` is at most 5 min), so a later answer could
 * not be used anyway. The agent attests in the loop that also renews its SVID; a call that never
 * settles would stop that loop silently.
 */
export const AGENT_PLUGIN_CALL_TIMEOUT_MS = 300_000;

/** `run()` behind the boundary, failing with `plugin.timeout` when it has not settled after `ms`. */
function guardedWithin<T>(name: string, what: string, ms: number, run: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SigilError('plugin.timeout', `plugin "${name}" ${what} did not finish within ${ms} ms`, { status: 500 })), ms);
  });
  return Promise.race([guarded(name, run), deadline]).finally(() => clearTimeout(timer));
}

/**
 * A third-party `finish` result as the verifier may use it: each member read once, the selector
 * list copied into a plain array. The verifier checks the selectors (checkSelectors) and then reads
 * them again; the plugin's own object (a getter, a Proxy) could show the check one list and the
 * verifier another. A list longer than MAX_ATTESTOR_SELECTORS is refused before it is copied, and
 * a result whose members cannot be read is `attest.bad_selector` (HTTP 500, a plugin bug).
 */
function ownResult(name: string, r: unknown): AttestorResult {
  if (typeof r !== 'object' || r === null) return r as AttestorResult; // checkSelectors refuses it
  let tooMany: number | undefined;
  let out: AttestorResult | undefined;
  try {
    const o = r as Record<string, unknown>;
    const list = o.selectors;
    let selectors: unknown = list;
    if (Array.isArray(list)) {
      const n = list.length;
      if (n > MAX_ATTESTOR_SELECTORS) tooMany = n;
      else {
        const copy: unknown[] = [];
        for (let i = 0; i < n; i++) copy.push(list[i]);
        selectors = copy;
      }
    }
    if (tooMany === undefined) {
      const status = o.status;
      out = { selectors, claims: o.claims, agentIdSuffix: o.agentIdSuffix, ...(status !== undefined ? { status } : {}) } as AttestorResult;
    }
  } catch (e) {
    throw new SigilError('attest.bad_selector', `attestor "${name}" returned a result that cannot be read: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  if (out === undefined) {
    throw new SigilError('attest.too_many_selectors', `attestor "${name}" produced ${String(tooMany)} selectors, more than the ${MAX_ATTESTOR_SELECTORS} a node may have`);
  }
  return out;
}

/** The verifier half of a third-party plugin, with its errors passed through `fromPlugin` and its `finish` result copied (ownResult). */
export function guardVerifier(name: string, v: NodeAttestorVerifier): NodeAttestorVerifier {
  const out: NodeAttestorVerifier = {
    begin: (hello, session) => guarded(name, () => v.begin(hello, session)),
    finish: async (response, state, session) => ownResult(name, await guarded(name, () => v.finish(response, state, session))),
  };
  if (typeof v.commit === 'function') out.commit = (state, session) => guarded(name, () => (v.commit as NonNullable<NodeAttestorVerifier['commit']>).call(v, state, session));
  if (v.consumesOnCommit === true) out.consumesOnCommit = true;
  // The synchronous optional members run with the plugin's own `this`, behind the same boundary
  // (credentialKey runs on every unauthenticated hello). Every optional member of
  // NodeAttestorVerifier must be carried over here.
  if (typeof v.stateKeysForAgent === 'function') out.stateKeysForAgent = guardedSync(name, v, v.stateKeysForAgent);
  const withKey = v as { credentialKey?: (hello: unknown) => string | undefined };
  if (typeof withKey.credentialKey === 'function') (out as typeof withKey).credentialKey = guardedSync(name, v, withKey.credentialKey);
  return out;
}

/** The agent half of a third-party plugin, with its errors passed through `fromPlugin` and a deadline on `hello` and `respond`. */
export function guardAgent(name: string, a: NodeAttestorAgent, timeoutMs = AGENT_PLUGIN_CALL_TIMEOUT_MS): NodeAttestorAgent {
  const out: NodeAttestorAgent = {
    hello: () => guardedWithin(name, 'hello()', timeoutMs, () => a.hello()),
    respond: (challenge, session) => guardedWithin(name, 'respond()', timeoutMs, () => a.respond(challenge, session)),
  };
  if (typeof a.close === 'function') out.close = () => guarded(name, () => (a.close as NonNullable<NodeAttestorAgent['close']>).call(a));
  return out;
}

/** A third-party workload attestor, with its errors passed through `fromPlugin`. */
export function guardWorkload(name: string, w: WorkloadAttestor): WorkloadAttestor {
  return { attest: (caller, signal) => guarded(name, () => w.attest(caller, signal)) };
}
