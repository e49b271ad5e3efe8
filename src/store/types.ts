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
  createdAt: string;
  /** Bumped on every change; also the global revision at which it was written. */
  revisionNumber: number;
}

export type NewEntry = Omit<RegistrationEntry, 'id' | 'createdAt' | 'revisionNumber'> & { id?: string };

export interface AgentRecord {
  id: string;
  attestors: string[];
  selectors: string[];
  /** Hex serial of the agent's current node SVID; only that one is accepted on mTLS calls. */
  serial: string;
  svidExpiresAt: string;
  attestedAt: string;
  banned: boolean;
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
  countEntries(): Promise<number>;

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
  /** Remove the agent record (its SVID stops being accepted). With ban, keep the record as banned. */
  evictAgent(id: string, ban: boolean): Promise<boolean>;
  /**
   * Node SVID renewal: set the agent's serial and SVID expiry in one conditional write, only if the
   * agent still exists, is not banned and its serial is still `expectedSerial` (the SVID the caller
   * authenticated with). Returns false, changing nothing, otherwise — so an eviction, ban or other
   * renewal that lands between the caller's read and this write is never undone.
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

  close(): Promise<void>;
}
