/**
 * Plugin contracts (DESIGN §2). A node attestor is two halves sharing a name:
 * the attester half (agent) produces evidence, the verifier half (verifier)
 * checks it. Both halves publish a JSON Schema for their config block.
 *
 * Protocol (DESIGN §3): the agent sends every attester's `hello` in one
 * POST /v1/attest together with its CSR; the verifier draws a session nonce,
 * computes binding = SHA-256("sigil-attest-v1" ‖ nonce ‖ SHA-256(SPKI of CSR key)),
 * and calls `begin` on each verifier half, which returns that attestor's challenge.
 * The agent calls `respond` on each attester half with its challenge and the
 * binding; the verifier calls `finish` with the response. Evidence must be bound
 * to `binding` so it cannot be replayed or moved to another key.
 */
import type { Logger } from 'pino';

/** JSON Schema object (draft 2020-12 / draft-07 subset that ajv accepts). */
export type JsonSchema = Record<string, unknown>;

/** Selectors are strings `type:value` where type is the attestor name; value may contain ':'. */
export type Selector = string;

export interface AttestorResult {
  /** Verified selectors, each prefixed with the attestor name, e.g. `tpm:ek_pubhash:ab…`. */
  selectors: Selector[];
  /** Verified facts for the attestation result (EAR-style submod claims). JSON-serialisable. */
  claims: Record<string, unknown>;
  /** Agent ID suffix; the agent ID is spiffe://<td>/sigil/agent/<attestor>/<suffix>. Must be a valid SPIFFE path segment sequence. */
  agentIdSuffix: string;
  /** "warning" lets an attestor accept with a caveat; default "affirming". */
  status?: 'affirming' | 'warning';
}

/** Small persistent key/value space per attestor (e.g. TPM monotonic counters per agent). */
export interface PluginStateStore {
  get(key: string): Promise<unknown | undefined>;
  put(key: string, value: unknown): Promise<void>;
  /**
   * Atomic compare-and-set: when the value stored under `key` equals `expected` — compared as
   * the JSON text `put` stores (`JSON.stringify`), with `undefined` meaning "nothing stored" —
   * store `next` and resolve true; otherwise change nothing and resolve false. Atomic across
   * every verifier sharing the datastore, so a plugin can check a value in `finish` and write
   * its successor in `commit` without a concurrent session slipping in between (pass exactly
   * what `get` returned as `expected`). Every host must provide it; a plugin may rely on it.
   */
  compareAndSet(key: string, expected: unknown | undefined, next: unknown): Promise<boolean>;
}

export interface VerifierPluginDeps {
  trustDomain: string;
  logger: Logger;
  now: () => Date;
  state: PluginStateStore;
  /** Directory of the config file, for resolving relative paths in plugin config. */
  configDir: string;
  /** Verifier-internal services for built-in plugins; third-party plugins should not rely on them. */
  services?: VerifierServices;
}

export interface VerifierServices {
  /** Look a join token up without using it; throws SigilError if unknown, used or expired. */
  checkJoinToken(token: string, now: Date): Promise<{ tokenId: string }>;
  /** Use a join token (atomically, once); throws SigilError if unknown, used or expired. */
  consumeJoinToken(token: string, now: Date): Promise<{ tokenId: string }>;
  /** The digest the datastore keys a token by (SHA-256, hex): what a plugin may keep in session state. */
  digestJoinToken(token: string): string;
  /** Like `checkJoinToken`, by digest. */
  checkJoinTokenDigest(digest: string, now: Date): Promise<{ tokenId: string }>;
  /** Like `consumeJoinToken`, by digest. */
  consumeJoinTokenDigest(digest: string, now: Date): Promise<{ tokenId: string }>;
}

export interface SessionInput {
  /** 32 random bytes drawn for this session. */
  nonce: Buffer;
  /** SHA-256("sigil-attest-v1" ‖ nonce ‖ SHA-256(csrSpki)). */
  binding: Buffer;
  /** DER SubjectPublicKeyInfo of the key in the agent's CSR. */
  csrSpki: Buffer;
  now: Date;
}

export interface NodeAttestorVerifier {
  /** Check the hello payload and produce a challenge (JSON-serialisable). `state` stays on the verifier. */
  begin(hello: unknown, session: SessionInput): Promise<{ challenge: unknown; state: unknown }>;
  /** Check the response against the state and session; return verified selectors or throw SigilError. */
  finish(response: unknown, state: unknown, session: SessionInput): Promise<AttestorResult>;
  /**
   * Optional: make this factor's side effects durable (use up a join token, record TPM counters).
   * Called only after every factor of the session passed `finish`, so a failure in another factor
   * never consumes this one. May still throw (e.g. the token was used concurrently); the session
   * then fails. Commits run one after another: first those of factors without `consumesOnCommit`
   * (in the agent's factor order), then those with it.
   */
  commit?(state: unknown, session: SessionInput): Promise<void>;
  /**
   * Set to true when `commit` uses up a one-time resource (the built-in `join_token` does). Such
   * commits run after every other factor's commit, so a commit that can still fail — a
   * compare-and-set that loses a race — fails the session before anything single-use is spent.
   * What earlier commits stored stays stored if a later one fails. Two factors that both consume
   * cannot be ordered safely this way: the second can fail after the first consumed.
   */
  consumesOnCommit?: boolean;
  /**
   * Optional: the keys of this plugin's state (`deps.state`) that belong to the node to which this
   * attestor gave `agentIdSuffix` (e.g. the `tpm` attestor's stored counters for that EK). When an
   * operator evicts an agent (`sigil agent evict`, with or without `--ban`), the verifier deletes
   * these keys for every factor of the agent, in the same datastore transaction as the eviction.
   * Must be synchronous and side-effect free; return `[]` for a suffix it does not recognise.
   */
  stateKeysForAgent?(agentIdSuffix: string): string[];
  /**
   * Optional: a stable string naming the credential this hello presents (the `tpm` attestor: the
   * hash of the EK public key), so the verifier can limit the attestation sessions open per
   * credential (`attestation.maxSessionsPerCredential`). Called before `begin` on the unverified
   * hello: must be cheap, synchronous and side-effect free, and derived only from what `begin` then
   * verifies, so that a hello varying the key without holding another credential fails `begin`.
   * Return undefined when the hello names no credential (only the per-address and total limits apply).
   */
  credentialKey?(hello: unknown): string | undefined;
}

export interface NodeAttestorVerifierPlugin {
  name: string;
  configSchema: JsonSchema;
  create(config: unknown, deps: VerifierPluginDeps): Promise<NodeAttestorVerifier> | NodeAttestorVerifier;
}

export interface AgentPluginDeps {
  trustDomain: string;
  logger: Logger;
  dataDir: string;
  configDir: string;
  now: () => Date;
}

export interface NodeAttestorAgent {
  /** First-round payload (JSON-serialisable), sent before the nonce is known. */
  hello(): Promise<unknown>;
  /** Answer the verifier's challenge with evidence bound to `session.binding`. */
  respond(challenge: unknown, session: { nonce: Buffer; binding: Buffer; csrSpki: Buffer }): Promise<unknown>;
  close?(): Promise<void>;
}

export interface NodeAttestorAgentPlugin {
  name: string;
  configSchema: JsonSchema;
  create(config: unknown, deps: AgentPluginDeps): Promise<NodeAttestorAgent> | NodeAttestorAgent;
}

export interface WorkloadCaller {
  pid: number;
  uid: number;
  gid: number;
  /** pidfd from SO_PEERPIDFD when the kernel supports it. */
  pidfd?: number;
}

export interface WorkloadAttestor {
  /**
   * Selectors for the caller, each prefixed with the attestor name. Throw SigilError on failure.
   * `signal` is aborted when the attestation's deadline passes (and, harmlessly, once it is over
   * if anything still listens to it; a signal nobody listens to any more may instead be handed,
   * unaborted, to a later attestation); its reason is a shared, frozen Error named "AbortError".
   */
  attest(caller: WorkloadCaller, signal: AbortSignal): Promise<Selector[]>;
  /**
   * Selector types this attestor speaks for besides its own name (e.g. `["k8s"]`). The agent
   * honours a declared type only while no other configured attestor has that name or declares it.
   */
  readonly selectorTypes?: readonly string[];
}

export interface WorkloadAttestorPlugin {
  name: string;
  configSchema: JsonSchema;
  create(config: unknown, deps: AgentPluginDeps): Promise<WorkloadAttestor> | WorkloadAttestor;
}

/** What a third-party plugin module exports (default export or named `plugin`/`plugins`). */
export interface PluginModule {
  nodeAttestorVerifier?: NodeAttestorVerifierPlugin;
  nodeAttestorAgent?: NodeAttestorAgentPlugin;
  workloadAttestor?: WorkloadAttestorPlugin;
}
