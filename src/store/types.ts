/**
 * The datastore contract. Callers only see this interface; SQLite is the embedded default and a
 * PostgreSQL implementation can be added behind the same methods (all async for that reason).
 * Every method that acknowledges a write returns only after the write is durable.
 */

export interface RegistrationEntry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: string[];
  /** Seconds; 0 = verifier default. */
  x509SvidTtl: number;
  /** Seconds; 0 = verifier default. */
  jwtSvidTtl: number;
  dnsNames: string[];
  hint: string;
  admin: boolean;
  /** ISO time after which the entry no longer applies, or null. */
  expiresAt: string | null;
  /**
   * Foreign trust domains (bare names, sorted) whose bundles workloads of this entry receive and
   * trust (SPIFFE Federation; docs/federation.md). Entries written before schema version 3: [].
   */
  federatesWith: string[];
  createdAt: string;
  /** Bumped on every change; also the global revision at which it was written. */
  revisionNumber: number;
}

export type NewEntry = Omit<RegistrationEntry, 'id' | 'createdAt' | 'revisionNumber' | 'federatesWith'> & { id?: string; federatesWith?: string[] };

/**
 * A federation relationship with a foreign trust domain (docs/federation.md) and the last good
 * bundle fetched from its bundle endpoint.
 */
export interface FederationRelationship {
  /** Foreign trust domain name (bare). */
  trustDomain: string;
  /** https URL of the foreign bundle endpoint. */
  bundleEndpointUrl: string;
  profile: 'https_web' | 'https_spiffe';
  /** https_spiffe: the SPIFFE ID the endpoint's certificate must carry. */
  endpointSpiffeId?: string;
  /** https_web: extra PEM roots the endpoint's certificate may chain to (default: the system's roots). */
  webCaPem?: string;
  createdAt: string;
  updatedAt: string;
  /**
   * Opaque token the store sets anew on every write of the relationship (create, update, re-anchor;
   * a relationship deleted and created again gets a new one too). Always present when read; ignored
   * when written. A refresh carries the generation it started with, and its bundle is stored only
   * while the relationship still has it (saveFederatedBundle), so a fetch that began with the old
   * endpoint or anchors never lands after the operator changed them (schema version 4).
   */
  generation?: string;
}

/** The last good foreign bundle (SPIFFE JWKS) and the outcome of the last refresh. */
export interface FederatedBundleRecord {
  trustDomain: string;
  /** SPIFFE bundle JWKS as JSON text. */
  bundle: string;
  sequence: number;
  /** When the bundle was last accepted (fetched, or given as the initial bundle). */
  updatedAt: string;
}

/**
 * One committed write of registration entries, for caches of authorized sets (DataStore.watchEntries):
 * it moved the entries revision from `fromRevision` to `toRevision` and created or deleted the
 * entries described (their parent and selectors), or — `entries` null — entries not described here
 * (a listener must then treat every agent as affected).
 */
export interface EntriesChange {
  fromRevision: number;
  toRevision: number;
  entries: { parentId: string; selectors: string[] }[] | null;
}

/** A subscription to entry changes (DataStore.watchEntries). */
export interface EntriesWatch {
  /**
   * The entries revision as known from the change feed, when the feed is known to be complete up
   * to it (PostgreSQL: the LISTEN connection is up and was primed); undefined otherwise, and then
   * the caller reads `entriesRevision()`.
   */
  currentRevision(): number | undefined;
  /**
   * The caller found the database ahead of `currentRevision()` for longer than notifications take:
   * the feed lost writes. The store stops answering `currentRevision()` and opens its feed again
   * (PostgreSQL: a new LISTEN connection, primed by a read). Absent where the feed cannot lag.
   */
  behind?(): void;
  close(): void;
}

/**
 * What a subscriber to agent-record changes is told (DataStore.watchAgents). Used to answer held
 * long-polls of evicted and banned agents at once, and to keep agent records in memory while the
 * feed is live (AgentsWatch.live; verifier/agent-records.ts): a record is only ever dropped on what
 * the feed says, so anything it says wrongly costs a read, never a stale answer.
 */
export interface AgentsListener {
  /**
   * An eviction or ban of `agentId` committed (evictAgent resolved true). The agents that attested
   * with `agentId` as a factor are affected as well.
   */
  changed(agentId: string): void;
  /**
   * The record `agentId` was created or replaced (upsertAgent, an attestation) or given a new SVID
   * serial (renewAgentSvid), and the write committed. Nothing else about the agents changed.
   */
  written?(agentId: string): void;
  /**
   * Changes may have been missed (PostgreSQL: the LISTEN connection was down and is up again, or a
   * change could not be described): treat every agent as changed.
   */
  missed(): void;
  /** A notification from the store could not be read; it was ignored. `detail` says why. */
  invalid(detail: string): void;
}

/** A subscription to agent-record changes (DataStore.watchAgents). */
export interface AgentsWatch {
  /**
   * True while every agent-record write committed from now on, by any process, will be reported to
   * this watch (PostgreSQL: the LISTEN connection is up and was primed; when it comes up again the
   * listener is told `missed` first). Absent where the store cannot promise that — SQLite reports
   * only its own process's writes — and then nothing may keep agent records between calls.
   */
  live?(): boolean;
  close(): void;
}

export interface AgentRecord {
  id: string;
  attestors: string[];
  selectors: string[];
  /** Hex serial of the agent's current node SVID; only that one is accepted on mTLS calls. */
  serial: string;
  svidExpiresAt: string;
  attestedAt: string;
  banned: boolean;
  /**
   * The agent ID each factor of the attestation gives (`spiffe://<td>/sigil/agent/<attestor>/<suffix>`),
   * in the agent's factor order, so `id` first. The agent is refused — on every agent call, on
   * renewal and on attestation — while any of them is banned. Records written before schema
   * version 2 hold only `[id]` (their other factors were not recorded) until the agent attests again.
   */
  factorIds: string[];
}

/** One plugin state entry (see DataStore.getPluginState). */
export interface PluginStateKey {
  plugin: string;
  key: string;
}

export interface JoinTokenRecord {
  id: string;
  /** SHA-256 of the token secret (hex); the secret itself is never stored. */
  secretHash: string;
  expiresAt: string;
  usedAt: string | null;
  spiffeId: string | null;
  createdAt: string;
}

/** The CA journal: every CA and JWT key the verifier has made, with its state. */
export interface CaJournal {
  x509: CaSlot[];
  jwt: JwtKeySlot[];
  /** Bumped whenever what this verifier publishes changes (the bundle's spiffe_sequence sums them over all verifiers). */
  sequence: number;
  /** Under an upstream CA: the upstream root (DER base64) this verifier's chains end at; it is published instead of the CA certificates. */
  upstreamRoot?: string;
}

/** An attestation session between POST /v1/attest and POST /v1/attest/{session}. */
export interface StoredSession {
  id: string;
  /** base64 */
  nonce: string;
  /** SPKI DER of the CSR key, base64 */
  csrSpki: string;
  attestors: string[];
  /** Each attestor's `begin` state (JSON). */
  states: Record<string, unknown>;
  expiresAt: string;
}

export interface CaSlot {
  id: string;
  keyType: string;
  /** DER of the CA certificate, base64. */
  certDer: string;
  /** DER of the chain up to (not including) the upstream root, base64, when running under an upstream CA. */
  upstreamChain: string[];
  /** File name of the PKCS#8 key in dataDir/keys. */
  keyFile: string;
  notBefore: string;
  notAfter: string;
  state: 'prepared' | 'active' | 'old';
}

export interface JwtKeySlot {
  kid: string;
  keyType: string;
  keyFile: string;
  /** SPKI DER base64 */
  publicKey: string;
  notBefore: string;
  notAfter: string;
  state: 'prepared' | 'active' | 'old';
}

export interface DataStore {
  readonly kind: string;
  /** Check the store answers (readiness). */
  ping(): Promise<void>;

  createEntry(e: NewEntry): Promise<RegistrationEntry>;
  /** Create many entries in one transaction (all or nothing). */
  createEntries(es: NewEntry[]): Promise<RegistrationEntry[]>;
  getEntry(id: string): Promise<RegistrationEntry | undefined>;
  deleteEntry(id: string): Promise<boolean>;
  listEntries(opts?: { parentId?: string; spiffeId?: string; limit?: number; offset?: number }): Promise<RegistrationEntry[]>;
  /** Entries whose parentId is one of `parentIds` (used to walk the authorization tree). */
  entriesByParents(parentIds: string[]): Promise<RegistrationEntry[]>;
  /** Current global entries revision; changes on every entry write. */
  entriesRevision(): Promise<number>;
  /**
   * Be told about entry writes after they commit: SQLite reports this process's writes (the only
   * writer of its file), PostgreSQL every verifier's writes (NOTIFY in the writing transaction,
   * LISTEN on a connection of its own, re-established after a loss). A change may be missed (a lost
   * connection, a write by another process), so a listener checks revision continuity and treats a
   * gap as "anything changed".
   */
  /** `onInvalid` is told about a notification from the store that could not be read (it is ignored). */
  watchEntries(listener: (change: EntriesChange) => void, onInvalid?: (detail: string) => void): EntriesWatch;
  /**
   * Be told about evictions and bans (`changed`) and other agent-record writes (`written`) after
   * they commit. SQLite: this process's (the only writer of its file), synchronously. PostgreSQL:
   * every verifier's on the same schema — this store's own at once, the others' by NOTIFY sent in
   * the writing transaction and heard on the LISTEN connection watchEntries uses. Each time that
   * connection comes up (again) the listener is told `missed`.
   */
  watchAgents(listener: AgentsListener): AgentsWatch;
  countEntries(): Promise<number>;
  /** Agent records, banned ones included (what listAgents would return, counted in the database). */
  countAgents(): Promise<number>;

  /**
   * Create or replace the agent record (node attestation), in one conditional write that never
   * touches a banned record: if a record with this id exists and is banned, nothing is written and
   * it resolves false — so a ban that lands between the caller's ban check and this write stands
   * (the caller must then refuse, as for a ban it saw). Otherwise it writes `a` and resolves true.
   * It therefore never clears `banned`; only an operator removing the record lifts a ban.
   */
  upsertAgent(a: AgentRecord): Promise<boolean>;
  getAgent(id: string): Promise<AgentRecord | undefined>;
  listAgents(): Promise<AgentRecord[]>;
  /**
   * Evict, in one transaction. Without ban: delete the record `id` and every record that names `id`
   * among its factorIds (those agents' SVIDs stop being accepted; they must attest again). With ban:
   * mark the record `id` banned and clear its serial (no SVID of it is accepted); when there is no
   * record `id` but some record names it as a factor, create a banned record for it (no attestors,
   * selectors or serial; factorIds `[id]`), so the agents naming it are refused and any attestation
   * presenting that factor is too. A banned record is only ever removed by an eviction without ban.
   *
   * `pluginState`, if given, maps an agent ID to the plugin state entries that belong to it (e.g. the
   * TPM counters of an EK); the entries of every factor ID of every record deleted or banned — and,
   * without ban, of `id` itself even when no record is or names it (state left by a session that
   * failed after its factor committed) — are deleted in the same transaction. It must be
   * synchronous; if it throws, nothing changes.
   *
   * Resolves whether anything was deleted or banned; false means nothing changed.
   */
  evictAgent(id: string, ban: boolean, pluginState?: (agentId: string) => PluginStateKey[]): Promise<boolean>;
  /**
   * Node SVID renewal: set the agent's serial and SVID expiry in one conditional write, only if the
   * agent still exists, is not banned, no record of its other factorIds is banned and its serial is
   * still `expectedSerial` (the SVID the caller authenticated with). Returns false, changing
   * nothing, otherwise — so an eviction, ban or other renewal that lands between the caller's read
   * and this write is never undone.
   */
  renewAgentSvid(id: string, expectedSerial: string, serial: string, svidExpiresAt: string): Promise<boolean>;

  createJoinToken(t: JoinTokenRecord): Promise<void>;
  getJoinTokenByHash(secretHash: string): Promise<JoinTokenRecord | undefined>;
  /** Mark the token used if it is unused and unexpired at `now`; returns the record or undefined. Atomic. */
  useJoinToken(secretHash: string, now: Date): Promise<JoinTokenRecord | undefined>;
  /** Create an entry and a join token in one transaction (node alias). */
  createJoinTokenWithAlias(t: JoinTokenRecord, alias: NewEntry): Promise<RegistrationEntry>;

  /** CA journals: one per verifier instance (each verifier has its own CA keys; the bundle is their union). */
  loadCaJournal(instance: string): Promise<CaJournal | undefined>;
  saveCaJournal(instance: string, j: CaJournal): Promise<void>;
  listCaJournals(): Promise<{ instance: string; journal: CaJournal }[]>;

  /** Attestation sessions live in the store, so any verifier sharing it can finish a session. */
  putSession(s: StoredSession): Promise<void>;
  /** Remove and return the session: single use, atomic across verifiers. */
  takeSession(id: string): Promise<StoredSession | undefined>;
  /** Whether an unexpired session with this ID exists (a cheap look before a message body is read). */
  hasSession(id: string, now: Date): Promise<boolean>;
  /** Delete sessions expired at `now`; returns how many remain. */
  sweepSessions(now: Date): Promise<number>;

  getPluginState(plugin: string, key: string): Promise<unknown | undefined>;
  putPluginState(plugin: string, key: string, value: unknown): Promise<void>;
  /**
   * Atomically replace the plugin state under (plugin, key) by `next` if it is `expected`, compared
   * as the stored JSON text (`JSON.stringify(expected)`); `expected` undefined means "no value
   * stored" (then the value is created). Returns whether it wrote. See PluginStateStore.compareAndSet.
   */
  compareAndSetPluginState(plugin: string, key: string, expected: unknown | undefined, next: unknown): Promise<boolean>;

  /**
   * Federation relationships (schema version 3). `create` true: refuse (false) when one exists;
   * false: refuse when none does. Every write gives the relationship a new `generation` (schema
   * version 4). With `bundle`, that bundle is stored as the last good one whatever its sequence, in
   * the same transaction (the operator's word: a first bundle, or re-anchoring).
   */
  putFederation(r: FederationRelationship, create: boolean, bundle?: FederatedBundleRecord): Promise<boolean>;
  getFederation(trustDomain: string): Promise<FederationRelationship | undefined>;
  listFederations(): Promise<FederationRelationship[]>;
  /** Delete the relationship and its bundle in one transaction; false when there was none. */
  deleteFederation(trustDomain: string): Promise<boolean>;
  /**
   * Store a foreign bundle as the last good one, only if the relationship exists — with
   * `generation` given, only while it still has that generation — and the stored bundle's sequence
   * is not higher (so a slower verifier sharing the store never rolls it back). All checked in the
   * statement that writes, so it holds across verifiers sharing PostgreSQL. Returns whether it wrote.
   */
  saveFederatedBundle(b: FederatedBundleRecord, generation?: string): Promise<boolean>;
  getFederatedBundle(trustDomain: string): Promise<FederatedBundleRecord | undefined>;
  listFederatedBundles(): Promise<FederatedBundleRecord[]>;

  close(): Promise<void>;
}
