/**
 * Test fakes for plugin authors (`import … from 'sigil/plugin/testing'`), as go-sev-guest ships
 * `testing/`: an in-memory plugin state store with the datastores' semantics, fake deps for both
 * halves, a fake session (real nonce, real CSR key, real binding), and `runAttestation`, which
 * drives an agent half and a verifier half through one session the way the agent and the verifier
 * do — config validated by the loader's path, every message and the verifier's state through JSON,
 * third-party errors through the same boundary (so a test sees the code the agent would see), the
 * result checked as the verifier checks it, `commit` last.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { asSigilError } from '../errors.js';
import { sessionBinding } from '../plugins/binding.js';
import { fromPlugin } from '../plugins/error-boundary.js';
import { checkAttestorResult } from '../plugins/result.js';
import type {
  AgentPluginDeps,
  AttestorResult,
  NodeAttestorAgentPlugin,
  NodeAttestorVerifierPlugin,
  PluginStateStore,
  SessionInput,
  VerifierPluginDeps,
} from '../plugins/types.js';
import { validatePluginConfig } from '../plugins/validate.js';

/**
 * PluginStateStore in memory, as the datastores behave: values are stored as JSON text (what you
 * read back is a copy, `undefined` members vanish), and `compareAndSet` compares that text with
 * `JSON.stringify(expected)`.
 */
export class MemoryPluginState implements PluginStateStore {
  /** The stored JSON text per key (read it in assertions). */
  readonly values = new Map<string, string>();

  async get(key: string): Promise<unknown> {
    const v = this.values.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as unknown);
  }

  async put(key: string, value: unknown): Promise<void> {
    this.values.set(key, JSON.stringify(value));
  }

  async compareAndSet(key: string, expected: unknown, next: unknown): Promise<boolean> {
    const cur = this.values.get(key);
    if (expected === undefined ? cur !== undefined : cur !== JSON.stringify(expected)) return false;
    this.values.set(key, JSON.stringify(next));
    return true;
  }
}

/** A logger that drops everything (pass your own to see plugin logs). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

export interface FakeDepsOptions {
  trustDomain?: string;
  /** Clock (default: the real one). */
  now?: () => Date;
  logger?: Logger;
  /** Directory relative config paths resolve against (default: the current directory). */
  configDir?: string;
}

/** Deps for a verifier half: a fresh MemoryPluginState, no verifier-internal services. */
export function fakeVerifierDeps(opts: FakeDepsOptions & { state?: PluginStateStore } = {}): VerifierPluginDeps & { state: PluginStateStore } {
  return {
    trustDomain: opts.trustDomain ?? 'example.org',
    logger: opts.logger ?? silentLogger(),
    now: opts.now ?? (() => new Date()),
    state: opts.state ?? new MemoryPluginState(),
    configDir: opts.configDir ?? process.cwd(),
  };
}

/** Deps for an agent half or a workload attestor; `dataDir` defaults to a new temporary directory. */
export function fakeAgentDeps(opts: FakeDepsOptions & { dataDir?: string } = {}): AgentPluginDeps {
  return {
    trustDomain: opts.trustDomain ?? 'example.org',
    logger: opts.logger ?? silentLogger(),
    now: opts.now ?? (() => new Date()),
    dataDir: opts.dataDir ?? mkdtempSync(join(tmpdir(), 'sigil-plugin-test-')),
    configDir: opts.configDir ?? process.cwd(),
  };
}

/** A session as the verifier makes one: 32 random nonce bytes, the SPKI of a fresh P-256 CSR key, and their binding. */
export function fakeSession(opts: { nonce?: Buffer; csrSpki?: Buffer; now?: Date } = {}): SessionInput {
  const nonce = opts.nonce ?? randomBytes(32);
  const csrSpki = opts.csrSpki ?? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: opts.now ?? new Date() };
}

/** What went over the wire, and the result. */
export interface AttestationRun {
  hello: unknown;
  challenge: unknown;
  response: unknown;
  /** The verifier half's state, as the datastore would hand it back to `finish`. */
  state: unknown;
  result: AttestorResult;
  session: SessionInput;
  /** The agent ID the verifier would give (when this attestor is the first factor). */
  agentId: string;
}

export interface RunAttestationOptions {
  verifier: NodeAttestorVerifierPlugin;
  agent: NodeAttestorAgentPlugin;
  verifierConfig?: unknown;
  agentConfig?: unknown;
  verifierDeps?: VerifierPluginDeps;
  agentDeps?: AgentPluginDeps;
  session?: SessionInput;
  /**
   * Error-code namespace (default: the plugin's name). Leave it: a third-party plugin's codes must
   * be `<name>.<reason>` or the agent sees `plugin.code_outside_namespace`.
   */
  namespace?: string;
  /** Tamper with the hello / response in flight (to test refusals). */
  editHello?: (hello: unknown) => unknown;
  editResponse?: (response: unknown) => unknown;
  /** Run `commit` after `finish` (default true). */
  commit?: boolean;
}

function overTheWire(v: unknown): unknown {
  return v === undefined ? undefined : (JSON.parse(JSON.stringify(v)) as unknown);
}

/**
 * One attestation session through both halves. Rejects with the SigilError the agent would get
 * (the plugin's own code when it is in its namespace; `attest.attestor_failed` /
 * `agent.attestor_failed` for errors without a code, as the hosts wrap them).
 */
export async function runAttestation(o: RunAttestationOptions): Promise<AttestationRun> {
  const name = o.verifier.name;
  if (o.agent.name !== name) throw new TypeError(`the halves are named "${o.agent.name}" and "${name}"`);
  const ns = o.namespace ?? name;
  const vdeps = o.verifierDeps ?? fakeVerifierDeps();
  const adeps = o.agentDeps ?? fakeAgentDeps({ trustDomain: vdeps.trustDomain, configDir: vdeps.configDir });
  const vcfg = validatePluginConfig(o.verifier.configSchema, o.verifierConfig, { namespace: ns, what: `plugin "${name}" config (nodeAttestors.${name})` });
  const acfg = validatePluginConfig(o.agent.configSchema, o.agentConfig, { namespace: ns, what: `plugin "${name}" config (nodeAttestors.${name})` });
  const onVerifier = async <T>(what: string, run: () => Promise<T> | T): Promise<T> => {
    try {
      return await run();
    } catch (e) {
      throw asSigilError(fromPlugin(e, ns), 'attest.attestor_failed', `${name} ${what}`);
    }
  };
  const onAgent = async <T>(what: string, run: () => Promise<T> | T): Promise<T> => {
    try {
      return await run();
    } catch (e) {
      throw asSigilError(fromPlugin(e, ns), 'agent.attestor_failed', `node attestor "${name}" ${what}`);
    }
  };
  const verifier = await onVerifier('create', () => o.verifier.create(vcfg, vdeps));
  const agent = await onAgent('create', () => o.agent.create(acfg, adeps));
  const session = o.session ?? fakeSession({ now: vdeps.now() });
  try {
    let hello = overTheWire(await onAgent('hello', () => agent.hello()));
    if (o.editHello) hello = overTheWire(o.editHello(hello));
    const begun = await onVerifier('begin', () => verifier.begin(hello, session));
    const challenge = overTheWire(begun.challenge);
    const state = overTheWire(begun.state);
    let response = overTheWire(await onAgent('respond', () => agent.respond(challenge, { nonce: session.nonce, binding: session.binding, csrSpki: session.csrSpki })));
    if (o.editResponse) response = overTheWire(o.editResponse(response));
    const result = await onVerifier('finish', () => verifier.finish(response, state, session));
    const agentId = checkAttestorResult(name, result, vdeps.trustDomain).toString();
    if (o.commit !== false && verifier.commit) await onVerifier('commit', () => verifier.commit?.(state, session));
    return { hello, challenge, response, state, result, session, agentId };
  } finally {
    await agent.close?.();
  }
}
