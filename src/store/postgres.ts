/**
 * PostgreSQL datastore (node-postgres), for running several verifiers against one database.
 *
 * Same logical schema and the same semantics as the SQLite store (src/store/sqlite.ts):
 *   - every entry write bumps the global entries revision in the same transaction; the `meta`
 *     row holding the revision is locked by the bump, so entry writes from all verifiers are
 *     serialised and revisions grow in commit order;
 *   - useJoinToken is one conditional `UPDATE … RETURNING` (row lock + re-check under READ
 *     COMMITTED), so exactly one concurrent caller wins, whichever verifier it runs in;
 *   - createEntries / createJoinTokenWithAlias are all-or-nothing transactions.
 * Types: selectors / dnsNames / attestors are JSONB arrays, times are TIMESTAMPTZ (read back as
 * ISO strings via Date#toISOString, which is what the verifier writes), the CA journal and plugin
 * state are JSON text exactly as in SQLite. Text ordering uses COLLATE "C" so list order matches
 * SQLite's byte order. A write is acknowledged after COMMIT returns, i.e. durable as the server's
 * synchronous_commit setting (default `on`) defines.
 *
 * Schema changes are versioned migrations, applied by `open()` on a dedicated connection that
 * holds a session advisory lock (keyed by schema), so verifiers starting at the same time apply
 * each migration exactly once. Every library error leaves this file as a SigilError (`store.*`).
 * All values are bound parameters; the only text put into SQL is the schema identifier, which
 * is validated against a strict pattern and quoted.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { SigilError, errorMessage } from '../errors.js';
import { pendingMigrations } from './migrations.js';
import { evictedPluginStateKeys, pluginStateExpectedText, pluginStateText, pluginStateValue } from './plugin-state.js';
import {
  type AgentColumns,
  type ColumnDecoder,
  type EntryColumns,
  type FederatedBundleColumns,
  type TokenColumns,
  agentFromRow,
  EntryInterner,
  entriesChangeOf,
  entryFromRow,
  factorIdsOf,
  federatedBundleFromRow,
  federationBody,
  federationFromRow,
  newEntryRecord,
  newFederationGeneration,
  parseStoredJson,
  tokenFromRow,
} from './rows.js';
import type { FederatedBundleRecord, FederationRelationship } from './types.js';
import type { AgentRecord, AgentsListener, AgentsWatch, CaJournal, DataStore, EntriesChange, EntriesWatch, JoinTokenRecord, NewEntry, PluginStateKey, RegistrationEntry, StoredSession } from './types.js';

const { Pool, Client } = pg;
type PoolClient = pg.PoolClient;

export interface PostgresStoreOptions {
  /** Schema holding Sigil's tables (created if missing). Default `public`. */
  schema?: string;
  /** Most connections this verifier opens. Default 10. */
  poolMax?: number;
  /** Server-side statement_timeout for every query, ms. Default 15000. */
  statementTimeoutMs?: number;
  /** How long to wait for a connection (TCP + auth, or a free pool slot), ms. Default 5000. */
  connectTimeoutMs?: number;
  /** How long open() may wait for another verifier's migration (advisory lock) and run its own, ms. Default 120000. */
  migrationTimeoutMs?: number;
  /** How often the LISTEN connection is probed with `SELECT 1`, ms. Default 5000. */
  listenProbeMs?: number;
  /** How long a query on the LISTEN connection (the probe, LISTEN) may go unanswered before the connection is given up and opened again, ms. Default 5000. */
  listenProbeTimeoutMs?: number;
}

/**
 * Migrations, in order; index + 1 = schema version. Never edit a shipped migration: add a new one.
 * `${S}` is replaced by the quoted schema name.
 */
const MIGRATIONS: string[] = [
  `CREATE TABLE \${S}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   INSERT INTO \${S}.meta (key, value) VALUES ('entries_revision', '0');
   CREATE TABLE \${S}.entries (
     id TEXT PRIMARY KEY,
     spiffe_id TEXT NOT NULL,
     parent_id TEXT NOT NULL,
     selectors JSONB NOT NULL,
     x509_ttl BIGINT NOT NULL DEFAULT 0,
     jwt_ttl BIGINT NOT NULL DEFAULT 0,
     dns_names JSONB NOT NULL DEFAULT '[]',
     hint TEXT NOT NULL DEFAULT '',
     admin BOOLEAN NOT NULL DEFAULT FALSE,
     expires_at TIMESTAMPTZ,
     created_at TIMESTAMPTZ NOT NULL,
     revision BIGINT NOT NULL
   );
   CREATE INDEX entries_parent ON \${S}.entries (parent_id);
   CREATE INDEX entries_spiffe ON \${S}.entries (spiffe_id);
   CREATE TABLE \${S}.agents (
     id TEXT PRIMARY KEY,
     attestors JSONB NOT NULL,
     selectors JSONB NOT NULL,
     serial TEXT NOT NULL,
     svid_expires_at TIMESTAMPTZ NOT NULL,
     attested_at TIMESTAMPTZ NOT NULL,
     banned BOOLEAN NOT NULL DEFAULT FALSE
   );
   CREATE TABLE \${S}.join_tokens (
     id TEXT PRIMARY KEY,
     secret_hash TEXT NOT NULL UNIQUE,
     expires_at TIMESTAMPTZ NOT NULL,
     used_at TIMESTAMPTZ,
     spiffe_id TEXT,
     created_at TIMESTAMPTZ NOT NULL
   );
   CREATE TABLE \${S}.ca_journals (instance TEXT PRIMARY KEY, body TEXT NOT NULL);
   CREATE TABLE \${S}.sessions (id TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
   CREATE INDEX sessions_expiry ON \${S}.sessions (expires_at);
   CREATE TABLE \${S}.plugin_state (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key));`,
  // 2: the agent ID of every factor of the attestation (own ID first). Existing agents are known by
  // their own ID only until they attest again.
  `ALTER TABLE \${S}.agents ADD COLUMN factor_ids JSONB NOT NULL DEFAULT '[]'::jsonb;
   UPDATE \${S}.agents SET factor_ids = jsonb_build_array(id);`,
  // 3: SPIFFE Federation — entries' federatesWith, relationships and their last good bundles.
  `ALTER TABLE \${S}.entries ADD COLUMN federates_with JSONB NOT NULL DEFAULT '[]'::jsonb;
   CREATE TABLE \${S}.federations (trust_domain TEXT PRIMARY KEY, body TEXT NOT NULL);
   CREATE TABLE \${S}.federated_bundles (trust_domain TEXT PRIMARY KEY REFERENCES \${S}.federations(trust_domain) ON DELETE CASCADE, bundle TEXT NOT NULL, sequence BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL);`,
  // 4: a relationship's generation, new on every write of it: a fetched bundle is stored only while
  // the relationship still has the generation its fetch started with. Existing relationships (and
  // any a not yet upgraded verifier creates) get a random one.
  `ALTER TABLE \${S}.federations ADD COLUMN generation TEXT NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text);`,
];

/** Number of schema migrations this build knows (the schema version it creates). */
export const POSTGRES_SCHEMA_VERSION = MIGRATIONS.length;

const SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;
/** Rows per INSERT in createEntries (keeps each statement's bound arrays modest). */
const INSERT_CHUNK = 1000;

/** node-postgres returns JSONB decoded, BIGINT as a string, BOOLEAN as a boolean, TIMESTAMPTZ as a Date. */
const PG_COLUMNS: ColumnDecoder = {
  list: (v) => v as string[],
  int: (v) => Number(v),
  bool: (v) => v as boolean,
  time: (v) => (v as Date).toISOString(),
};

const NET_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOENT', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EPIPE', 'EACCES']);

/** Map anything node-postgres throws onto a SigilError with a stable `store.*` code. */
export function postgresError(e: unknown, op: string): SigilError {
  if (e instanceof SigilError) return e;
  const msg = errorMessage(e);
  const code = typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string' ? (e as { code: string }).code : '';
  const mk = (c: string, status: number): SigilError => new SigilError(c, `PostgreSQL ${op} failed: ${msg}`, { status, cause: e });
  // Node socket errors first: some (EPIPE) look like a five-character SQLSTATE.
  if (NET_ERRORS.has(code) && !(e instanceof pg.DatabaseError)) return mk('store.unavailable', 503);
  if (e instanceof pg.DatabaseError && /^[0-9A-Z]{5}$/.test(code)) {
    // SQLSTATE from the server.
    if (code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code.startsWith('53') || code === '3D000') return mk('store.unavailable', 503);
    if (code.startsWith('28')) return mk('store.auth_failed', 503);
    if (code === '57014' || code === '55P03') return mk('store.timeout', 503);
    if (code === '40001' || code === '40P01') return mk('store.conflict', 503);
    if (code === '23505') return mk('store.duplicate', 409);
    if (code.startsWith('22') || code.startsWith('23')) return mk('store.invalid_value', 400);
    return mk('store.query_failed', 500);
  }
  if (/timeout exceeded when trying to connect|Connection terminated|connection error|not queryable|Cannot use a pool after calling end/i.test(msg)) {
    return mk('store.unavailable', 503);
  }
  if (/Query read timeout/i.test(msg)) return mk('store.timeout', 503);
  return mk('store.query_failed', 500);
}

function isUniqueViolation(e: unknown, constraint: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === '23505' && (e as { constraint?: unknown }).constraint === constraint;
}

/** `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages. */
export function redactPostgresUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/@?#]*):[^@/?#]*@/i, '$1:***@');
}

/** NOTIFY channel of entry writes (every schema; the payload names its schema). */
const ENTRIES_CHANNEL = 'sigil_entries';
/** NOTIFY channel of evictions and bans (every schema; the payload names its schema). */
const AGENTS_CHANNEL = 'sigil_agents';
/** NOTIFY payloads are limited to 8000 bytes (UTF-8); a longer description is sent as "not described". */
const NOTIFY_PAYLOAD_MAX = 7000;
/** Characters of a malformed payload quoted in the report of it. */
const BAD_PAYLOAD_QUOTE = 120;
/**
 * Pause before a lost LISTEN connection is opened again, ms: 0.5–1 s after a connection that came up
 * (primed), doubling with each attempt that fails since, up to LISTEN_RETRY_MAX_MS; see listenRetryMs.
 */
const LISTEN_RETRY_MS = 1000;
/** Longest pause between attempts to open the LISTEN connection, ms. */
const LISTEN_RETRY_MAX_MS = 10_000;
/** Idle time before the LISTEN connection's first TCP keepalive probe, ms (without it the OS default applies: 2 h on Linux). */
const LISTEN_KEEPALIVE_MS = 10_000;
/** How long a LISTEN connection given up may take to say goodbye before its socket is destroyed, ms. */
const LISTEN_END_MS = 1000;
/** Writes heard beyond a missing one that are kept; past that the LISTEN connection is opened again (and primed). */
const HEARD_LATER_MAX = 1024;

/**
 * The entries revisions a store has heard of (its own writes at commit, every verifier's by NOTIFY),
 * for EntriesWatch.currentRevision: `through` is the revision up to which every write was heard or
 * read (the priming read when the LISTEN connection came up); writes heard beyond a missing one wait
 * in `later` until it is heard. A notification that never comes (dropped as unreadable, lost on a
 * half-open connection) keeps `through` below the database's revision, which the authorized-set
 * cache's revision check notices (EntriesWatch.behind).
 */
class HeardRevisions {
  through: number | undefined;
  private later: { from: number; to: number }[] = [];

  /** A write moved the revision from `from` to `to`. False when too many writes wait behind a missing one (they are forgotten: prime again). */
  heard(from: number, to: number): boolean {
    if (this.through !== undefined && from <= this.through) {
      this.through = Math.max(this.through, to);
      this.absorb();
      return true;
    }
    this.later.push({ from, to });
    if (this.later.length <= HEARD_LATER_MAX) return true;
    this.later = [];
    return false;
  }

  /** Every write up to `rev` is in a read made after LISTEN. */
  primed(rev: number): void {
    this.through = Math.max(this.through ?? rev, rev);
    this.absorb();
  }

  private absorb(): void {
    if (this.later.length === 0 || this.through === undefined) return;
    this.later.sort((a, b) => a.from - b.from);
    let through = this.through;
    let i = 0;
    for (; i < this.later.length && (this.later[i] as { from: number }).from <= through; i++) through = Math.max(through, (this.later[i] as { to: number }).to);
    this.later.splice(0, i);
    this.through = through;
  }
}

/**
 * The pause before attempt `failed + 1` to open the LISTEN connection, where `failed` attempts have
 * failed since one came up: a random time in the upper half of min(LISTEN_RETRY_MAX_MS,
 * LISTEN_RETRY_MS · 2^failed) — 0.5–1 s, 1–2 s, 2–4 s, 4–8 s, then 5–10 s. A server that is down or out
 * of reach is asked a few times a minute rather than every second by every verifier, the verifiers'
 * attempts spread apart, and one that is back is found within the pause then due.
 */
function listenRetryMs(failed: number): number {
  const ceiling = Math.min(LISTEN_RETRY_MAX_MS, LISTEN_RETRY_MS * 2 ** Math.min(failed, 30));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/** End a LISTEN client given up; its socket is destroyed if the goodbye does not go through (a half-open connection never answers it). */
function endListenClient(c: pg.Client): void {
  const t = setTimeout(() => c.connection.stream.destroy(), LISTEN_END_MS);
  t.unref();
  c.end().then(
    () => clearTimeout(t),
    () => undefined,
  );
}

/** The NOTIFY payload of an entry write: schema, revision range and (if short enough) the entries. */
function entriesPayload(schema: string, change: EntriesChange): string {
  const full = JSON.stringify({ s: schema, f: change.fromRevision, t: change.toRevision, e: change.entries?.map((e) => [e.parentId, e.selectors]) ?? null });
  if (Buffer.byteLength(full) <= NOTIFY_PAYLOAD_MAX) return full;
  return JSON.stringify({ s: schema, f: change.fromRevision, t: change.toRevision, e: null });
}

/**
 * A notification payload's JSON object, or why it is not one; `bad` words a later refusal the same
 * way (the reason and the start of the payload, quoted).
 */
function payloadObject(text: string | undefined): { fields: Record<string, unknown>; bad: (why: string) => { invalid: string } } | { invalid: string } {
  const bad = (why: string): { invalid: string } => ({ invalid: `${why}: ${JSON.stringify((text ?? '').slice(0, BAD_PAYLOAD_QUOTE))}` });
  let p: unknown;
  try {
    p = JSON.parse(text ?? '');
  } catch {
    return bad('not JSON');
  }
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return bad('not a JSON object');
  return { fields: p as Record<string, unknown>, bad };
}

/**
 * Read an entries payload: the change for this schema, undefined for another schema's, or why it
 * is unreadable. It comes from the database, so anything in it is checked. A well-formed header
 * whose entry list is not of the expected shape counts as a change that is not described.
 */
export function parseEntriesPayload(text: string | undefined, schema: string): EntriesChange | { invalid: string } | undefined {
  const p = payloadObject(text);
  if ('invalid' in p) return p;
  const bad = p.bad;
  const { s, f, t, e } = p.fields;
  if (typeof s !== 'string') return bad('no schema name (s)');
  if (s !== schema) return undefined;
  if (!Number.isSafeInteger(f) || !Number.isSafeInteger(t)) return bad('no revision range (f, t)');
  const range = { fromRevision: f as number, toRevision: t as number };
  if (!Array.isArray(e)) return { ...range, entries: null };
  const entries: { parentId: string; selectors: string[] }[] = [];
  for (const x of e as unknown[]) {
    if (!Array.isArray(x) || typeof x[0] !== 'string' || !Array.isArray(x[1]) || !x[1].every((v) => typeof v === 'string')) return { ...range, entries: null };
    entries.push({ parentId: x[0], selectors: x[1] as string[] });
  }
  return { ...range, entries };
}

/**
 * The NOTIFY payload of an agent-record write: schema, the store that made it (`o`, so it skips its
 * own notification, already reported), the agent ID — null when the ID is too long to send
 * (listeners then treat every agent as changed) — and, for a write that is not an eviction or ban
 * (an attestation's record, a renewal), `k: "w"`.
 */
function agentsPayload(schema: string, origin: string, agentId: string, written = false): string {
  const k = written ? { k: 'w' } : {};
  const full = JSON.stringify({ s: schema, o: origin, a: agentId, ...k });
  if (Buffer.byteLength(full) <= NOTIFY_PAYLOAD_MAX) return full;
  return JSON.stringify({ s: schema, o: origin, a: null });
}

/** A read agents payload: for this schema, another schema's (undefined), or why it is unreadable. */
type AgentsNotice = { origin: string; agentId: string | null; written: boolean } | { invalid: string } | undefined;

/** Read an agents payload. It comes from the database, so anything in it is checked. */
export function parseAgentsPayload(text: string | undefined, schema: string): AgentsNotice {
  const p = payloadObject(text);
  if ('invalid' in p) return p;
  const bad = p.bad;
  const { s, o, a, k } = p.fields;
  if (typeof s !== 'string') return bad('no schema name (s)');
  if (s !== schema) return undefined;
  if (typeof o !== 'string' || o.length === 0 || o.length > 64) return bad('no origin (o)');
  if (a !== null && (typeof a !== 'string' || a.length === 0)) return bad('the agent ID (a) is neither a non-empty string nor null');
  if (k !== undefined && k !== 'w') return bad('unknown kind (k)');
  return { origin: o, agentId: a, written: k === 'w' };
}

export class PostgresStore implements DataStore {
  readonly kind = 'postgres';
  private closed = false;
  private readonly entryListeners = new Set<(change: EntriesChange) => void>();
  /** Told about unreadable entries notifications (watchEntries' onInvalid). */
  private readonly entryInvalidListeners = new Set<(detail: string) => void>();
  private readonly agentListeners = new Set<AgentsListener>();
  /** Names this store in its agents notifications. */
  private readonly origin = randomBytes(8).toString('hex');
  private listenClient: pg.Client | undefined;
  private listenLive = false;
  private listenTimer: NodeJS.Timeout | undefined;
  /** Attempts to open the LISTEN connection that failed since one came up (the next pause grows with it). */
  private listenFailures = 0;
  /** The next liveness probe of the LISTEN connection. */
  private probeTimer: NodeJS.Timeout | undefined;
  private readonly revisions = new HeardRevisions();

  private constructor(
    private readonly pool: pg.Pool,
    /** Quoted schema identifier, validated against SCHEMA_RE. */
    private readonly s: string,
    /** The schema name itself (NOTIFY payloads name it). */
    private readonly schemaName: string,
    private readonly listenOptions: pg.ClientConfig,
    /** Interval of the LISTEN connection's liveness probe, ms. */
    private readonly probeMs: number,
  ) {}

  /**
   * Connect, migrate (under an advisory lock) and check the store answers.
   * `url`: `postgres://user:password@host:port/database?sslmode=…` or, for a Unix socket,
   * `postgres://user@/database?host=/run/postgresql`.
   */
  static async open(url: string, opts: PostgresStoreOptions = {}): Promise<PostgresStore> {
    if (typeof url !== 'string' || !/^postgres(ql)?:\/\//i.test(url)) {
      throw new SigilError('store.bad_url', `datastore url must start with postgres:// or postgresql:// (got "${redactPostgresUrl(String(url)).slice(0, 80)}")`, { status: 500 });
    }
    const schema = opts.schema ?? 'public';
    if (!SCHEMA_RE.test(schema)) {
      throw new SigilError('store.bad_schema', `datastore schema "${schema.slice(0, 80)}" must match ${SCHEMA_RE.source}`, { status: 500 });
    }
    const positive = (v: number | undefined, dflt: number, name: string): number => {
      if (v === undefined) return dflt;
      if (!Number.isInteger(v) || v <= 0) throw new SigilError('store.bad_option', `datastore option ${name} must be a positive integer (got ${v})`, { status: 500 });
      return v;
    };
    const poolMax = positive(opts.poolMax, 10, 'poolMax');
    const statementTimeout = positive(opts.statementTimeoutMs, 15_000, 'statementTimeoutMs');
    const connectTimeout = positive(opts.connectTimeoutMs, 5_000, 'connectTimeoutMs');
    const migrationTimeout = positive(opts.migrationTimeoutMs, 120_000, 'migrationTimeoutMs');
    const probeMs = positive(opts.listenProbeMs, 5_000, 'listenProbeMs');
    const probeTimeout = positive(opts.listenProbeTimeoutMs, 5_000, 'listenProbeTimeoutMs');
    const quoted = `"${schema}"`;

    await migrate(url, quoted, schema, connectTimeout, migrationTimeout);

    const pool = new Pool({
      connectionString: url,
      max: poolMax,
      connectionTimeoutMillis: connectTimeout,
      idleTimeoutMillis: 30_000,
      statement_timeout: statementTimeout,
      // A client-side bound as well, in case the server never answers.
      query_timeout: statementTimeout + 5_000,
      // A verifier that stalls mid-transaction must not hold the revision row lock forever.
      idle_in_transaction_session_timeout: statementTimeout * 2,
      application_name: 'sigil-verifier',
      keepAlive: true,
    });
    // Idle clients report server restarts and network errors here; without a listener Node would
    // treat them as uncaught. The pool drops such clients and the next query reconnects.
    pool.on('error', () => undefined);
    const listen: pg.ClientConfig = {
      connectionString: url,
      connectionTimeoutMillis: connectTimeout,
      application_name: 'sigil-verifier-listen',
      keepAlive: true,
      keepAliveInitialDelayMillis: LISTEN_KEEPALIVE_MS,
      // Every query on it (LISTEN, the probe) is tiny: one not answered in time means the connection is dead.
      query_timeout: probeTimeout,
    };
    const store = new PostgresStore(pool, quoted, schema, listen, probeMs);
    try {
      await store.ping();
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return store;
  }

  private check(): void {
    if (this.closed) throw new SigilError('store.closed', 'PostgreSQL datastore is closed', { status: 503 });
  }

  private async q<R extends pg.QueryResultRow>(op: string, sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    this.check();
    try {
      return await this.pool.query<R>(sql, params);
    } catch (e) {
      throw postgresError(e, op);
    }
  }

  /** Run fn in one transaction on one connection; COMMIT on success, ROLLBACK on any error. */
  private async tx<T>(op: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
    this.check();
    let c: PoolClient;
    try {
      c = await this.pool.connect();
    } catch (e) {
      throw postgresError(e, op);
    }
    // A checked-out client has no pool error listener; keep a network error from going uncaught.
    let broken: Error | undefined;
    const onError = (err: Error): void => {
      broken = err;
    };
    c.on('error', onError);
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (e) {
      try {
        await c.query('ROLLBACK');
      } catch (re) {
        broken ??= re instanceof Error ? re : new Error(String(re));
      }
      throw postgresError(e, op);
    } finally {
      c.removeListener('error', onError);
      c.release(broken ?? false);
    }
  }

  async ping(): Promise<void> {
    await this.q('ping', 'SELECT 1');
  }

  /** Insert entries (in order) inside transaction c; each gets its own revision, as in SQLite. */
  private async insertEntries(c: PoolClient, es: NewEntry[]): Promise<RegistrationEntry[]> {
    if (es.length === 0) return [];
    const out: RegistrationEntry[] = [];
    for (let i = 0; i < es.length; i += INSERT_CHUNK) {
      const chunk = es.slice(i, i + INSERT_CHUNK);
      const bumped = await c.query<{ v: string }>(
        `UPDATE ${this.s}.meta SET value = (value::bigint + $1::bigint)::text WHERE key = 'entries_revision' RETURNING value AS v`,
        [chunk.length],
      );
      const last = Number(bumped.rows[0]?.v);
      if (!Number.isSafeInteger(last)) throw new SigilError('store.corrupt', 'PostgreSQL datastore has no valid entries_revision row', { status: 500 });
      const first = last - chunk.length + 1;
      const cols = {
        id: [] as string[],
        spiffe: [] as string[],
        parent: [] as string[],
        selectors: [] as string[],
        x509: [] as number[],
        jwt: [] as number[],
        dns: [] as string[],
        hint: [] as string[],
        admin: [] as boolean[],
        expires: [] as (string | null)[],
        created: [] as string[],
        revision: [] as number[],
        federates: [] as string[],
      };
      chunk.forEach((e, k) => {
        const entry = newEntryRecord(e, first + k, new Date().toISOString());
        cols.id.push(entry.id);
        cols.spiffe.push(entry.spiffeId);
        cols.parent.push(entry.parentId);
        cols.selectors.push(JSON.stringify(entry.selectors));
        cols.x509.push(entry.x509SvidTtl);
        cols.jwt.push(entry.jwtSvidTtl);
        cols.dns.push(JSON.stringify(entry.dnsNames));
        cols.hint.push(entry.hint);
        cols.admin.push(entry.admin);
        cols.expires.push(entry.expiresAt);
        cols.created.push(entry.createdAt);
        cols.revision.push(entry.revisionNumber);
        cols.federates.push(JSON.stringify(entry.federatesWith));
        out.push(entry);
      });
      try {
        const r = await c.query<EntryColumns>(
          `INSERT INTO ${this.s}.entries (id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, hint, admin, expires_at, created_at, revision, federates_with)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::bigint[], $6::bigint[], $7::jsonb[], $8::text[], $9::boolean[],
                                $10::timestamptz[], $11::timestamptz[], $12::bigint[], $13::jsonb[])
           RETURNING *`,
          [cols.id, cols.spiffe, cols.parent, cols.selectors, cols.x509, cols.jwt, cols.dns, cols.hint, cols.admin, cols.expires, cols.created, cols.revision, cols.federates],
        );
        // Return what the database holds (normalised times), in input order.
        const byId = new Map(r.rows.map((row) => [row.id, entryFromRow(row, PG_COLUMNS)]));
        for (let k = out.length - chunk.length; k < out.length; k++) {
          const stored = byId.get(out[k]!.id);
          if (stored) out[k] = stored;
        }
      } catch (err) {
        if (isUniqueViolation(err, 'entries_pkey')) {
          const m = /\(id\)=\((.*)\) already exists/.exec((err as { detail?: string }).detail ?? '');
          const id = m?.[1] ?? (chunk.length === 1 ? cols.id[0] : undefined);
          throw new SigilError('entry.exists', id !== undefined ? `an entry with id ${id} already exists` : 'an entry with one of these ids already exists', { status: 409, cause: err });
        }
        throw err;
      }
      // Delivered to every verifier's LISTEN connection when (and only if) this transaction commits.
      await c.query('SELECT pg_notify($1, $2)', [ENTRIES_CHANNEL, entriesPayload(this.schemaName, { fromRevision: first - 1, toRevision: last, entries: chunk.map((e) => ({ parentId: e.parentId, selectors: [...e.selectors].sort() })) })]);
    }
    return out;
  }

  /** Tell this process's entry watchers at once (the NOTIFY of the same write may come later). */
  private entriesWritten(change: EntriesChange): void {
    // Tracked only while something listens (a LISTEN connection coming up primes what came before).
    if (this.watched() && !this.revisions.heard(change.fromRevision, change.toRevision) && this.listenClient) this.listenLost(this.listenClient);
    for (const l of this.entryListeners) l(change);
  }

  watchEntries(listener: (change: EntriesChange) => void, onInvalid?: (detail: string) => void): EntriesWatch {
    this.entryListeners.add(listener);
    if (onInvalid) this.entryInvalidListeners.add(onInvalid);
    void this.listen();
    return {
      currentRevision: () => (this.listenLive ? this.revisions.through : undefined),
      behind: () => {
        // Writes the database has were not heard: the connection is given up (a half-open one is never reused) and opened again.
        if (this.listenLive && this.listenClient) this.listenLost(this.listenClient);
      },
      close: () => {
        this.entryListeners.delete(listener);
        if (onInvalid) this.entryInvalidListeners.delete(onInvalid);
        if (!this.watched()) this.stopListening();
      },
    };
  }

  watchAgents(listener: AgentsListener): AgentsWatch {
    this.agentListeners.add(listener);
    void this.listen();
    return {
      live: () => this.listenLive,
      close: () => {
        this.agentListeners.delete(listener);
        if (!this.watched()) this.stopListening();
      },
    };
  }

  private watched(): boolean {
    return this.entryListeners.size > 0 || this.agentListeners.size > 0;
  }

  /** An agents notification arrived: tell the listeners, unless it is another schema's or this store's own. */
  private agentsNotified(text: string | undefined): void {
    const n = parseAgentsPayload(text, this.schemaName);
    if (n === undefined || ('origin' in n && n.origin === this.origin)) return;
    for (const l of this.agentListeners) {
      if ('invalid' in n) l.invalid(`${AGENTS_CHANNEL} notification ignored, ${n.invalid}`);
      else if (n.agentId === null) l.missed();
      else if (n.written) l.written?.(n.agentId);
      else l.changed(n.agentId);
    }
  }

  /**
   * Open the LISTEN connection and probe it every probeMs; on loss (an error, the server closing it
   * or ending its process, a query or probe not answered within its timeout) report "not live" and
   * open it again after a pause that grows while attempts fail (listenRetryMs). Every connection that
   * comes up reads the revision after LISTEN (priming): a write committed while none was up is in
   * that read, so it is not lost, and the authorized-set cache finds it undescribed (a gap) and
   * recomputes the sets it may touch.
   */
  private async listen(): Promise<void> {
    if (this.closed || this.listenClient || !this.watched()) return;
    clearTimeout(this.listenTimer);
    const c = new Client(this.listenOptions);
    this.listenClient = c;
    const lost = (): void => this.listenLost(c);
    c.on('error', lost);
    c.on('end', lost);
    c.on('notification', (n) => {
      if (n.channel === AGENTS_CHANNEL) this.agentsNotified(n.payload);
      if (n.channel !== ENTRIES_CHANNEL) return;
      const change = parseEntriesPayload(n.payload, this.schemaName);
      if (!change) return;
      if ('invalid' in change) {
        // Ignored: the write it announced stays unheard, so the authorized-set cache's revision
        // check finds the database ahead of this feed and stops trusting it (EntriesWatch.behind).
        for (const l of this.entryInvalidListeners) l(`${ENTRIES_CHANNEL} notification ignored, ${change.invalid}`);
        return;
      }
      this.entriesWritten(change);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${ENTRIES_CHANNEL}`);
      await c.query(`LISTEN ${AGENTS_CHANNEL}`);
      // Primed after LISTEN: every write committed later is notified, every earlier one is in this read.
      const rev = await this.entriesRevision();
      if (this.listenClient !== c) return;
      this.revisions.primed(rev);
      this.listenLive = true;
      this.listenFailures = 0;
      this.probeListener(c);
      // Evictions committed while nothing listened were not heard; later ones are.
      for (const l of this.agentListeners) l.missed();
    } catch {
      lost();
    }
  }

  /**
   * `SELECT 1` on the LISTEN connection every probeMs. A half-open connection (a NAT or load
   * balancer forgot it, a partition) delivers nothing and reports no error; its probe goes
   * unanswered and times out (the client's query_timeout), and the connection is opened again.
   */
  private probeListener(c: pg.Client): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => {
      if (this.listenClient !== c) return;
      c.query('SELECT 1').then(
        () => {
          if (this.listenClient === c) this.probeListener(c);
        },
        () => this.listenLost(c),
      );
    }, this.probeMs);
    this.probeTimer.unref();
  }

  /** The LISTEN connection `c` is lost or given up: not live; opened again after listenRetryMs. */
  private listenLost(c: pg.Client): void {
    if (this.listenClient !== c) return;
    // Counted from 0 when a connection came up (primed), so its loss is followed by the shortest pause.
    const failed = this.listenFailures++;
    this.listenClient = undefined;
    this.listenLive = false;
    clearTimeout(this.probeTimer);
    endListenClient(c);
    if (!this.closed && this.watched()) {
      this.listenTimer = setTimeout(() => void this.listen(), listenRetryMs(failed));
      this.listenTimer.unref();
    }
  }

  private stopListening(): void {
    clearTimeout(this.listenTimer);
    clearTimeout(this.probeTimer);
    const c = this.listenClient;
    this.listenClient = undefined;
    this.listenLive = false;
    if (c) endListenClient(c);
  }

  async createEntry(e: NewEntry): Promise<RegistrationEntry> {
    const [entry] = await this.tx('createEntry', (c) => this.insertEntries(c, [e]));
    this.entriesWritten(entriesChangeOf([entry as RegistrationEntry]));
    return entry as RegistrationEntry;
  }

  async createEntries(es: NewEntry[]): Promise<RegistrationEntry[]> {
    if (es.length === 0) return [];
    const out = await this.tx('createEntries', (c) => this.insertEntries(c, es));
    this.entriesWritten(entriesChangeOf(out));
    return out;
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    const r = await this.q<EntryColumns>('getEntry', `SELECT * FROM ${this.s}.entries WHERE id = $1`, [id]);
    const row = r.rows[0];
    return row ? entryFromRow(row, PG_COLUMNS) : undefined;
  }

  async deleteEntry(id: string): Promise<boolean> {
    const change = await this.tx('deleteEntry', async (c) => {
      const gone = (await c.query<{ parent_id: string; selectors: string[] }>(`DELETE FROM ${this.s}.entries WHERE id = $1 RETURNING parent_id, selectors`, [id])).rows[0];
      if (!gone) return undefined;
      const bumped = await c.query<{ v: string }>(`UPDATE ${this.s}.meta SET value = (value::bigint + 1)::text WHERE key = 'entries_revision' RETURNING value AS v`);
      const rev = Number(bumped.rows[0]?.v);
      const ch: EntriesChange = { fromRevision: rev - 1, toRevision: rev, entries: [{ parentId: gone.parent_id, selectors: gone.selectors }] };
      await c.query('SELECT pg_notify($1, $2)', [ENTRIES_CHANNEL, entriesPayload(this.schemaName, ch)]);
      return ch;
    });
    if (change) this.entriesWritten(change);
    return change !== undefined;
  }

  async listEntries(opts: { parentId?: string; spiffeId?: string; limit?: number; offset?: number } = {}): Promise<RegistrationEntry[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.parentId !== undefined) {
      args.push(opts.parentId);
      where.push(`parent_id = $${args.length}`);
    }
    if (opts.spiffeId !== undefined) {
      args.push(opts.spiffeId);
      where.push(`spiffe_id = $${args.length}`);
    }
    // As in SQLite: a negative limit means no limit, a negative offset means 0.
    const limit = opts.limit === undefined || opts.limit < 0 ? null : Math.floor(opts.limit);
    const offset = opts.offset === undefined || opts.offset < 0 ? 0 : Math.floor(opts.offset);
    args.push(limit, offset);
    const sql = `SELECT * FROM ${this.s}.entries ${where.length ? 'WHERE ' + where.join(' AND ') : ''}
                 ORDER BY created_at, id COLLATE "C" LIMIT $${args.length - 1}::bigint OFFSET $${args.length}::bigint`;
    return (await this.q<EntryColumns>('listEntries', sql, args)).rows.map((row) => entryFromRow(row, PG_COLUMNS));
  }

  async entriesByParents(parentIds: string[]): Promise<RegistrationEntry[]> {
    if (parentIds.length === 0) return [];
    // One array parameter, whatever the number of ids (no bound-parameter limit to chunk around).
    const r = await this.q<EntryColumns>('entriesByParents', `SELECT * FROM ${this.s}.entries WHERE parent_id = ANY($1::text[])`, [parentIds]);
    // The verifier keeps these entries (its authorized-set cache): one copy of each repeated string,
    // as on SQLite (EntryInterner).
    const intern = new EntryInterner(this.internedValues, parentIds);
    return r.rows.map((row) => entryFromRow(row, PG_COLUMNS, intern));
  }

  /** Selectors, times and other values shared by the entries entriesByParents returns (EntryInterner). */
  private readonly internedValues = new Map<string, string>();

  async entriesRevision(): Promise<number> {
    const r = await this.q<{ v: string }>('entriesRevision', `SELECT value AS v FROM ${this.s}.meta WHERE key = 'entries_revision'`);
    const v = Number(r.rows[0]?.v);
    if (!Number.isSafeInteger(v)) throw new SigilError('store.corrupt', 'PostgreSQL datastore has no valid entries_revision row', { status: 500 });
    return v;
  }

  async countEntries(): Promise<number> {
    const r = await this.q<{ n: string }>('countEntries', `SELECT count(*) AS n FROM ${this.s}.entries`);
    return Number(r.rows[0]?.n ?? 0);
  }

  async countAgents(): Promise<number> {
    const r = await this.q<{ n: string }>('countAgents', `SELECT count(*) AS n FROM ${this.s}.agents`);
    return Number(r.rows[0]?.n ?? 0);
  }

  async upsertAgent(a: AgentRecord): Promise<boolean> {
    // One statement: on a conflict PostgreSQL locks the existing row and evaluates the DO UPDATE
    // WHERE against its latest committed version (READ COMMITTED), so a ban committed concurrently
    // is seen and nothing is written (rowCount 0); a concurrent insert of the same id is a conflict too.
    // The NOTIFY rides in the same statement (one per row written, none when nothing was), so it is
    // delivered exactly when the write commits.
    const r = await this.q(
      'upsertAgent',
      `WITH w AS (
         INSERT INTO ${this.s}.agents AS cur (id, attestors, selectors, serial, svid_expires_at, attested_at, banned, factor_ids)
         VALUES ($1, $2::jsonb, $3::jsonb, $4, $5::timestamptz, $6::timestamptz, $7, $8::jsonb)
         ON CONFLICT (id) DO UPDATE SET attestors = EXCLUDED.attestors, selectors = EXCLUDED.selectors, serial = EXCLUDED.serial,
           svid_expires_at = EXCLUDED.svid_expires_at, attested_at = EXCLUDED.attested_at, banned = EXCLUDED.banned,
           factor_ids = EXCLUDED.factor_ids
         WHERE NOT cur.banned
         RETURNING cur.id)
       SELECT pg_notify($9, $10) FROM w`,
      [a.id, JSON.stringify(a.attestors), JSON.stringify(a.selectors), a.serial, a.svidExpiresAt, a.attestedAt, a.banned, JSON.stringify(a.factorIds), AGENTS_CHANNEL, agentsPayload(this.schemaName, this.origin, a.id, true)],
    );
    if ((r.rowCount ?? 0) === 0) return false;
    this.agentWritten(a.id);
    return true;
  }

  /** Tell this store's own agent watchers of a committed write at once (its NOTIFY names this store and is skipped). */
  private agentWritten(id: string): void {
    for (const l of this.agentListeners) l.written?.(id);
  }

  async getAgent(id: string): Promise<AgentRecord | undefined> {
    const r = await this.q<AgentColumns>('getAgent', `SELECT * FROM ${this.s}.agents WHERE id = $1`, [id]);
    const row = r.rows[0];
    return row ? agentFromRow(row, PG_COLUMNS) : undefined;
  }

  async listAgents(): Promise<AgentRecord[]> {
    return (await this.q<AgentColumns>('listAgents', `SELECT * FROM ${this.s}.agents ORDER BY id COLLATE "C"`)).rows.map((row) => agentFromRow(row, PG_COLUMNS));
  }

  async evictAgent(id: string, ban: boolean, pluginState?: (agentId: string) => PluginStateKey[]): Promise<boolean> {
    const changed = await this.tx('evictAgent', async (c) => {
      type Hit = { id: string; factor_ids: string[] };
      let hits: Hit[];
      if (!ban) {
        // The agent and every agent that presented it as a factor.
        hits = (
          await c.query<Hit>(`DELETE FROM ${this.s}.agents WHERE id = $1 OR factor_ids @> jsonb_build_array($1::text) RETURNING id, factor_ids`, [id])
        ).rows;
      } else {
        hits = (await c.query<Hit>(`UPDATE ${this.s}.agents SET banned = TRUE, serial = '' WHERE id = $1 RETURNING id, factor_ids`, [id])).rows;
        if (hits.length === 0) {
          // No record of its own, but a factor of some agent: keep a banned record for it. An
          // attestation writing this id concurrently conflicts, and the ban wins.
          hits = (
            await c.query<Hit>(
              `INSERT INTO ${this.s}.agents AS cur (id, attestors, selectors, serial, svid_expires_at, attested_at, banned, factor_ids)
               SELECT $1, '[]'::jsonb, '[]'::jsonb, '', now(), now(), TRUE, jsonb_build_array($1::text)
               WHERE EXISTS (SELECT 1 FROM ${this.s}.agents WHERE factor_ids @> jsonb_build_array($1::text))
               ON CONFLICT (id) DO UPDATE SET banned = TRUE, serial = ''
               RETURNING id, factor_ids`,
              [id],
            )
          ).rows;
        }
      }
      if (ban && hits.length === 0) return false;
      let changed = hits.length > 0;
      if (pluginState) {
        const factors = hits.map((h) => ({ factorIds: factorIdsOf(h.id, h.factor_ids) }));
        const evicted = evictedPluginStateKeys(factors, id, ban, pluginState);
        const plugins = evicted.map((k) => k.plugin);
        const keys = evicted.map((k) => k.key);
        if (plugins.length > 0) {
          const r = await c.query(
            `DELETE FROM ${this.s}.plugin_state s USING unnest($1::text[], $2::text[]) AS k(plugin, key) WHERE s.plugin = k.plugin AND s.key = k.key`,
            [plugins, keys],
          );
          if ((r.rowCount ?? 0) > 0) changed = true;
        }
      }
      // Delivered to every verifier's LISTEN connection when (and only if) this transaction commits.
      if (changed) await c.query('SELECT pg_notify($1, $2)', [AGENTS_CHANNEL, agentsPayload(this.schemaName, this.origin, id)]);
      return changed;
    });
    // This store's own watchers at once (its NOTIFY names this store and is skipped).
    if (changed) for (const l of this.agentListeners) l.changed(id);
    return changed;
  }

  async renewAgentSvid(id: string, expectedSerial: string, serial: string, svidExpiresAt: string): Promise<boolean> {
    // One conditional UPDATE: under READ COMMITTED a concurrent ban or renewal holds the row lock
    // and this statement re-checks the WHERE clause against the row it committed; a concurrent
    // DELETE leaves no row to update. Either way nothing is written and the caller is told so.
    // A ban of one of the agent's other factor IDs committed before this statement is seen by the
    // NOT EXISTS; one committed after it is a later ban, seen by the agent's next call.
    const r = await this.q(
      'renewAgentSvid',
      `WITH w AS (
         UPDATE ${this.s}.agents AS cur SET serial = $3, svid_expires_at = $4::timestamptz
         WHERE cur.id = $1 AND cur.serial = $2 AND NOT cur.banned
           AND NOT EXISTS (SELECT 1 FROM ${this.s}.agents b
                           WHERE b.banned AND b.id IN (SELECT jsonb_array_elements_text(cur.factor_ids)))
         RETURNING cur.id)
       SELECT pg_notify($5, $6) FROM w`,
      [id, expectedSerial, serial, svidExpiresAt, AGENTS_CHANNEL, agentsPayload(this.schemaName, this.origin, id, true)],
    );
    if ((r.rowCount ?? 0) === 0) return false;
    this.agentWritten(id);
    return true;
  }

  private insertTokenSql(): string {
    return `INSERT INTO ${this.s}.join_tokens (id, secret_hash, expires_at, used_at, spiffe_id, created_at)
            VALUES ($1, $2, $3::timestamptz, NULL, $4, $5::timestamptz)`;
  }

  private tokenArgs(t: JoinTokenRecord): unknown[] {
    return [t.id, t.secretHash, t.expiresAt, t.spiffeId, t.createdAt];
  }

  async createJoinToken(t: JoinTokenRecord): Promise<void> {
    await this.q('createJoinToken', this.insertTokenSql(), this.tokenArgs(t));
  }

  async getJoinTokenByHash(secretHash: string): Promise<JoinTokenRecord | undefined> {
    const r = await this.q<TokenColumns>('getJoinTokenByHash', `SELECT * FROM ${this.s}.join_tokens WHERE secret_hash = $1`, [secretHash]);
    const row = r.rows[0];
    return row ? tokenFromRow(row, PG_COLUMNS) : undefined;
  }

  async useJoinToken(secretHash: string, now: Date): Promise<JoinTokenRecord | undefined> {
    // Concurrent callers queue on the row lock; after the winner commits, the others re-check
    // `used_at IS NULL` against the new row version and update nothing.
    const r = await this.q<TokenColumns>(
      'useJoinToken',
      `UPDATE ${this.s}.join_tokens SET used_at = $2::timestamptz
       WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > $2::timestamptz RETURNING *`,
      [secretHash, now.toISOString()],
    );
    const row = r.rows[0];
    return row ? tokenFromRow(row, PG_COLUMNS) : undefined;
  }

  async createJoinTokenWithAlias(t: JoinTokenRecord, alias: NewEntry): Promise<RegistrationEntry> {
    const [entry] = await this.tx('createJoinTokenWithAlias', async (c) => {
      await c.query(this.insertTokenSql(), this.tokenArgs(t));
      return this.insertEntries(c, [alias]);
    });
    this.entriesWritten(entriesChangeOf([entry as RegistrationEntry]));
    return entry as RegistrationEntry;
  }

  private parseJournal(body: string, instance: string): CaJournal {
    return parseStoredJson<CaJournal>(body, `a CA journal for ${instance}`);
  }

  async loadCaJournal(instance: string): Promise<CaJournal | undefined> {
    const r = await this.q<{ body: string }>('loadCaJournal', `SELECT body FROM ${this.s}.ca_journals WHERE instance = $1`, [instance]);
    const row = r.rows[0];
    return row ? this.parseJournal(row.body, instance) : undefined;
  }

  async saveCaJournal(instance: string, j: CaJournal): Promise<void> {
    await this.q(
      'saveCaJournal',
      `INSERT INTO ${this.s}.ca_journals (instance, body) VALUES ($1, $2) ON CONFLICT (instance) DO UPDATE SET body = EXCLUDED.body`,
      [instance, JSON.stringify(j)],
    );
  }

  async listCaJournals(): Promise<{ instance: string; journal: CaJournal }[]> {
    const r = await this.q<{ instance: string; body: string }>('listCaJournals', `SELECT instance, body FROM ${this.s}.ca_journals ORDER BY instance COLLATE "C"`);
    return r.rows.map((row) => ({ instance: row.instance, journal: this.parseJournal(row.body, row.instance) }));
  }

  async putSession(sess: StoredSession): Promise<void> {
    await this.q('putSession', `INSERT INTO ${this.s}.sessions (id, body, expires_at) VALUES ($1, $2, $3)`, [sess.id, JSON.stringify(sess), sess.expiresAt]);
  }

  async takeSession(id: string): Promise<StoredSession | undefined> {
    const r = await this.q<{ body: string }>('takeSession', `DELETE FROM ${this.s}.sessions WHERE id = $1 RETURNING body`, [id]);
    const row = r.rows[0];
    if (!row) return undefined;
    return parseStoredJson<StoredSession>(row.body, 'an attestation session');
  }

  async hasSession(id: string, now: Date): Promise<boolean> {
    const r = await this.q('hasSession', `SELECT 1 FROM ${this.s}.sessions WHERE id = $1 AND expires_at > $2`, [id, now.toISOString()]);
    return r.rows.length > 0;
  }

  async sweepSessions(now: Date): Promise<number> {
    await this.q('sweepSessions', `DELETE FROM ${this.s}.sessions WHERE expires_at <= $1`, [now.toISOString()]);
    const r = await this.q<{ n: string }>('countSessions', `SELECT COUNT(*) AS n FROM ${this.s}.sessions`);
    return Number(r.rows[0]?.n ?? 0);
  }

  async getPluginState(plugin: string, key: string): Promise<unknown | undefined> {
    const r = await this.q<{ value: string }>('getPluginState', `SELECT value FROM ${this.s}.plugin_state WHERE plugin = $1 AND key = $2`, [plugin, key]);
    const row = r.rows[0];
    return row ? pluginStateValue(row.value, plugin, key) : undefined;
  }

  async putPluginState(plugin: string, key: string, value: unknown): Promise<void> {
    await this.q(
      'putPluginState',
      `INSERT INTO ${this.s}.plugin_state (plugin, key, value) VALUES ($1, $2, $3)
       ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value`,
      [plugin, key, pluginStateText(value)],
    );
  }

  async compareAndSetPluginState(plugin: string, key: string, expected: unknown | undefined, next: unknown): Promise<boolean> {
    const text = pluginStateText(next);
    if (expected === undefined) {
      // Concurrent creators conflict on the primary key; exactly one inserts.
      const r = await this.q(
        'compareAndSetPluginState',
        `INSERT INTO ${this.s}.plugin_state (plugin, key, value) VALUES ($1, $2, $3) ON CONFLICT (plugin, key) DO NOTHING`,
        [plugin, key, text],
      );
      return (r.rowCount ?? 0) > 0;
    }
    const want = pluginStateExpectedText(expected);
    if (want === undefined) return false;
    // The row lock serialises concurrent swaps; a waiter re-checks `value = $4` against the winner's
    // committed value (READ COMMITTED) and updates nothing.
    const r = await this.q(
      'compareAndSetPluginState',
      `UPDATE ${this.s}.plugin_state SET value = $3 WHERE plugin = $1 AND key = $2 AND value = $4`,
      [plugin, key, text, want],
    );
    return (r.rowCount ?? 0) > 0;
  }

  // ------------------------------------------------------------ federation (schema versions 3 and 4)

  async putFederation(r: FederationRelationship, create: boolean, bundle?: FederatedBundleRecord): Promise<boolean> {
    const sql = create
      ? `INSERT INTO ${this.s}.federations (trust_domain, body, generation) VALUES ($1, $2, $3) ON CONFLICT (trust_domain) DO NOTHING`
      : `UPDATE ${this.s}.federations SET body = $2, generation = $3 WHERE trust_domain = $1`;
    const params = [r.trustDomain, federationBody(r), newFederationGeneration()];
    if (!bundle) return ((await this.q('putFederation', sql, params)).rowCount ?? 0) === 1;
    // The relationship row first (a refresh storing a bundle holds it FOR SHARE), then the bundle.
    return this.tx('putFederation', async (c) => {
      if (((await c.query(sql, params)).rowCount ?? 0) !== 1) return false;
      await c.query(
        `INSERT INTO ${this.s}.federated_bundles (trust_domain, bundle, sequence, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (trust_domain) DO UPDATE SET bundle = EXCLUDED.bundle, sequence = EXCLUDED.sequence, updated_at = EXCLUDED.updated_at`,
        [r.trustDomain, bundle.bundle, bundle.sequence, bundle.updatedAt],
      );
      return true;
    });
  }

  async getFederation(trustDomain: string): Promise<FederationRelationship | undefined> {
    const row = (await this.q<{ body: string; generation: string }>('getFederation', `SELECT body, generation FROM ${this.s}.federations WHERE trust_domain = $1`, [trustDomain])).rows[0];
    return row ? federationFromRow(row, `the federation relationship with ${trustDomain}`) : undefined;
  }

  async listFederations(): Promise<FederationRelationship[]> {
    const r = await this.q<{ body: string; generation: string }>('listFederations', `SELECT body, generation FROM ${this.s}.federations ORDER BY trust_domain COLLATE "C"`);
    return r.rows.map((row) => federationFromRow(row, 'a federation relationship'));
  }

  async deleteFederation(trustDomain: string): Promise<boolean> {
    // The bundle goes with it (ON DELETE CASCADE), in the same statement.
    return ((await this.q('deleteFederation', `DELETE FROM ${this.s}.federations WHERE trust_domain = $1`, [trustDomain])).rowCount ?? 0) === 1;
  }

  async saveFederatedBundle(b: FederatedBundleRecord, generation?: string): Promise<boolean> {
    // One statement. The relationship row is locked FOR SHARE: an update, re-anchor or delete that
    // committed after this statement's snapshot is waited for and the row checked again as it is
    // now (READ COMMITTED re-check), so a bundle fetched under an old generation is never stored;
    // one that starts later waits for this statement's commit and then has the last word.
    const r = await this.q(
      'saveFederatedBundle',
      `WITH rel AS (SELECT trust_domain FROM ${this.s}.federations WHERE trust_domain = $1 AND ($5::text IS NULL OR generation = $5::text) FOR SHARE)
       INSERT INTO ${this.s}.federated_bundles (trust_domain, bundle, sequence, updated_at)
       SELECT $1, $2, $3, $4 FROM rel
       ON CONFLICT (trust_domain) DO UPDATE SET bundle = EXCLUDED.bundle, sequence = EXCLUDED.sequence, updated_at = EXCLUDED.updated_at
       WHERE ${this.s}.federated_bundles.sequence <= EXCLUDED.sequence`,
      [b.trustDomain, b.bundle, b.sequence, b.updatedAt, generation ?? null],
    );
    return (r.rowCount ?? 0) === 1;
  }

  async getFederatedBundle(trustDomain: string): Promise<FederatedBundleRecord | undefined> {
    const r = await this.q<FederatedBundleColumns>('getFederatedBundle', `SELECT trust_domain, bundle, sequence, updated_at FROM ${this.s}.federated_bundles WHERE trust_domain = $1`, [trustDomain]);
    return r.rows[0] ? federatedBundleFromRow(r.rows[0], PG_COLUMNS) : undefined;
  }

  async listFederatedBundles(): Promise<FederatedBundleRecord[]> {
    const r = await this.q<FederatedBundleColumns>('listFederatedBundles', `SELECT trust_domain, bundle, sequence, updated_at FROM ${this.s}.federated_bundles ORDER BY trust_domain COLLATE "C"`);
    return r.rows.map((row) => federatedBundleFromRow(row, PG_COLUMNS));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.entryListeners.clear();
    this.entryInvalidListeners.clear();
    this.agentListeners.clear();
    this.stopListening();
    await this.pool.end().catch(() => undefined);
  }
}

/**
 * Apply pending migrations on a dedicated connection holding a session advisory lock keyed by
 * the schema name. The lock goes away with the connection, so a verifier that dies mid-way does
 * not block the others; each migration and its version bump commit together.
 */
async function migrate(url: string, quoted: string, schema: string, connectTimeout: number, timeout: number): Promise<void> {
  const client = new Client({
    connectionString: url,
    connectionTimeoutMillis: connectTimeout,
    statement_timeout: timeout,
    query_timeout: timeout + 5_000,
    application_name: 'sigil-verifier-migrate',
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (e) {
    await client.end().catch(() => undefined);
    throw postgresError(e, `connect to ${redactPostgresUrl(url)}`);
  }
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [`sigil.migrate.${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${quoted}.schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)`);
    await client.query(`INSERT INTO ${quoted}.schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING`);
    const version = Number((await client.query<{ version: number }>(`SELECT version FROM ${quoted}.schema_version WHERE id = 1`)).rows[0]?.version);
    if (!Number.isInteger(version) || version < 0) throw new SigilError('store.corrupt', `schema_version row in schema ${schema} is invalid`, { status: 500 });
    for (const step of pendingMigrations(version, MIGRATIONS)) {
      const v = step.version - 1;
      const sql = step.migration.replaceAll('${S}', quoted);
      await client.query('BEGIN');
      try {
        await client.query(sql);
        await client.query(`UPDATE ${quoted}.schema_version SET version = $1 WHERE id = 1`, [v + 1]);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined);
        const inner = postgresError(e, `migration ${v + 1}`);
        if (inner.status === 503) throw inner;
        throw new SigilError('store.migration_failed', `PostgreSQL migration to schema version ${v + 1} failed: ${inner.message}`, { status: 500, cause: e });
      }
    }
  } catch (e) {
    throw postgresError(e, 'migrate');
  } finally {
    // Ending the session releases the advisory lock.
    await client.end().catch(() => undefined);
  }
}
