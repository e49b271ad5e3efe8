/**
 * SQLite datastore (better-sqlite3, WAL). Schema changes are versioned migrations applied in one
 * transaction.
 *
 * Durability: a write is acknowledged (its promise resolves) only once the write-ahead log that
 * holds it is on disk, so an acknowledged write survives a crash, kill -9 or power loss. SQLite
 * commits with `synchronous = NORMAL` (the commit writes the log without waiting for the disk) and
 * the log is then flushed with `fdatasync` on libuv's thread pool (wal-sync.ts): the flush no
 * longer holds the event loop (2–3 ms per write here, 50 writes a second stalled every request for
 * a tenth of the time), and writes that commit while a flush is under way share the next one. A
 * committed write is visible to this process's reads and change watchers before its flush ends;
 * after a power loss, a change that was never acknowledged may have been served meanwhile. A failed
 * flush is final: from then on every write is refused (`store.sync_failed`) and ping() fails, until
 * a restart recovers from what the disk holds (wal-sync.ts says why).
 */
import Database from 'better-sqlite3';
import { chmodSync, closeSync, constants as fsc, openSync, realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { WalCheckpointer } from './wal-checkpointer.js';
import { WalSync, type FileSync } from './wal-sync.js';
import { SigilError, errorMessage } from '../errors.js';
import { makeDirs } from '../util/private-dir.js';
import { pendingMigrations } from './migrations.js';
import { evictedPluginStateKeys, pluginStateExpectedText, pluginStateText, pluginStateValue } from './plugin-state.js';
import {
  type AgentColumns,
  type ColumnDecoder,
  type FederatedBundleColumns,
  type TokenColumns,
  EntryInterner,
  agentFromRow,
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

/** Migrations, in order; index + 1 = schema version. Never edit a shipped migration: add a new one. */
const MIGRATIONS: string[] = [
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   INSERT INTO meta (key, value) VALUES ('entries_revision', '0');
   CREATE TABLE entries (
     id TEXT PRIMARY KEY,
     spiffe_id TEXT NOT NULL,
     parent_id TEXT NOT NULL,
     selectors TEXT NOT NULL,
     x509_ttl INTEGER NOT NULL DEFAULT 0,
     jwt_ttl INTEGER NOT NULL DEFAULT 0,
     dns_names TEXT NOT NULL DEFAULT '[]',
     hint TEXT NOT NULL DEFAULT '',
     admin INTEGER NOT NULL DEFAULT 0,
     expires_at TEXT,
     created_at TEXT NOT NULL,
     revision INTEGER NOT NULL
   );
   CREATE INDEX entries_parent ON entries(parent_id);
   CREATE INDEX entries_spiffe ON entries(spiffe_id);
   CREATE TABLE agents (
     id TEXT PRIMARY KEY,
     attestors TEXT NOT NULL,
     selectors TEXT NOT NULL,
     serial TEXT NOT NULL,
     svid_expires_at TEXT NOT NULL,
     attested_at TEXT NOT NULL,
     banned INTEGER NOT NULL DEFAULT 0
   );
   CREATE TABLE join_tokens (
     id TEXT PRIMARY KEY,
     secret_hash TEXT NOT NULL UNIQUE,
     expires_at TEXT NOT NULL,
     used_at TEXT,
     spiffe_id TEXT,
     created_at TEXT NOT NULL
   );
   CREATE TABLE ca_journals (instance TEXT PRIMARY KEY, body TEXT NOT NULL);
   CREATE TABLE sessions (id TEXT PRIMARY KEY, body TEXT NOT NULL, expires_at TEXT NOT NULL);
   CREATE INDEX sessions_expiry ON sessions(expires_at);
   CREATE TABLE plugin_state (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key));`,
  // 2: the agent ID of every factor of the attestation (JSON array, own ID first). Existing agents
  // are known by their own ID only until they attest again.
  `ALTER TABLE agents ADD COLUMN factor_ids TEXT NOT NULL DEFAULT '[]';
   UPDATE agents SET factor_ids = json_array(id);`,
  // 3: SPIFFE Federation — entries' federatesWith, relationships and their last good bundles.
  `ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
   CREATE TABLE federations (trust_domain TEXT PRIMARY KEY, body TEXT NOT NULL);
   CREATE TABLE federated_bundles (trust_domain TEXT PRIMARY KEY REFERENCES federations(trust_domain) ON DELETE CASCADE, bundle TEXT NOT NULL, sequence INTEGER NOT NULL, updated_at TEXT NOT NULL);`,
  // 4: a relationship's generation, new on every write of it: a fetched bundle is stored only while
  // the relationship still has the generation its fetch started with. Existing relationships get a
  // random one.
  `ALTER TABLE federations ADD COLUMN generation TEXT NOT NULL DEFAULT '';
   UPDATE federations SET generation = lower(hex(randomblob(16)));`,
];

/** Schema version this build creates (SQLite `user_version`). */
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

/** An `entries` row as SQLite binds and returns it. */
interface EntryRow {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: string;
  x509_ttl: number;
  jwt_ttl: number;
  dns_names: string;
  hint: string;
  admin: number;
  expires_at: string | null;
  created_at: string;
  revision: number;
  federates_with: string;
}

/** SQLite returns JSON arrays as text, integers as numbers, booleans as 0/1, times as ISO text. */
const SQLITE_COLUMNS: ColumnDecoder = {
  list: (v, column) => parseStoredJson<string[]>(v as string, `a ${column} column`),
  int: (v) => v as number,
  bool: (v) => v === 1,
  time: (v) => v as string,
};

/** The files SQLite keeps for a database in WAL mode (and the rollback journal of an older one). */
const DB_FILE_SUFFIXES = ['', '-wal', '-shm', '-journal'];

/**
 * Make the database files readable by their owner only: the main file is created 0600 before SQLite
 * opens it (SQLite then creates -wal and -shm with the main file's permissions), and existing files
 * with group/other bits (made by an older Sigil, 0644) are chmod'ed 0600.
 */
function makeDbFilesPrivate(path: string): void {
  try {
    makeDirs(dirname(path), 0o700);
    closeSync(openSync(path, fsc.O_RDWR | fsc.O_CREAT, 0o600));
  } catch (e) {
    throw new SigilError('store.open_failed', `cannot create the SQLite datastore ${path}: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  for (const suffix of DB_FILE_SUFFIXES) {
    const file = path + suffix;
    let mode: number;
    try {
      mode = statSync(file).mode;
    } catch {
      continue;
    }
    if ((mode & 0o077) === 0) continue;
    try {
      chmodSync(file, 0o600);
    } catch (e) {
      throw new SigilError('store.open_failed', `${file} is readable by other users and cannot be made 0600: ${errorMessage(e)}`, { status: 500, cause: e });
    }
  }
}

export class SqliteStore implements DataStore {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly stmt: Record<string, Database.Statement>;
  private readonly entryListeners = new Set<(change: EntriesChange) => void>();
  private readonly agentListeners = new Set<AgentsListener>();
  /** Flushes the write-ahead log before a write is acknowledged (none for an in-memory database). */
  private readonly wal: WalSync | undefined;

  /** Copies the log into the database file on a worker thread (none for an in-memory database). */
  private readonly checkpointer: WalCheckpointer | undefined;

  /**
   * `opts.sync` replaces the flush of the log (tests: to hold or fail it); `checkpointIntervalMs`
   * and `checkpointBacklogFrames` tune the log's checkpoints (wal-checkpointer.ts; tests);
   * `onWarning` hears of what the store recovered from on its own (the checkpoint worker failing).
   */
  constructor(path: string, opts: { sync?: FileSync; checkpointIntervalMs?: number; checkpointBacklogFrames?: number; onWarning?: (message: string) => void } = {}) {
    const onDisk = path !== ':memory:' && path !== '';
    if (onDisk) makeDbFilesPrivate(path);
    let opened: Database.Database | undefined;
    try {
      this.db = opened = new Database(path);
      this.db.pragma('journal_mode = WAL');
      // The commit writes the log; WalSync flushes it before the write is acknowledged. Before the
      // migrations, which are flushed the same way (synchronously: the constructor cannot wait).
      this.db.pragma(onDisk ? 'synchronous = NORMAL' : 'synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('busy_timeout = 5000');
      // SQLite names the log after the database file's real path (it resolves symbolic links), so
      // a symlinked sigil.db has its log next to the link's target: flush that file.
      const real = onDisk ? realpathSync(path) : '';
      this.wal = onDisk ? new WalSync(`${real}-wal`, opts.sync, () => this.refuseWrites()) : undefined;
      this.migrate();
      this.wal?.flushNow();
      if (onDisk) {
        // No checkpoint inside a commit on the event loop: a worker thread makes them.
        this.db.pragma('wal_autocheckpoint = 0');
        // A log that grew under a burst of writes is cut back to 16 MiB when it restarts.
        this.db.pragma(`journal_size_limit = ${16 * 1024 * 1024}`);
        this.checkpointer = new WalCheckpointer(real, {
          ...(opts.checkpointIntervalMs !== undefined ? { intervalMs: opts.checkpointIntervalMs } : {}),
          ...(opts.checkpointBacklogFrames !== undefined ? { backlogFrames: opts.checkpointBacklogFrames } : {}),
          onBacklog: () => {
            if (this.db.open && !this.wal?.refusal) this.db.pragma('wal_checkpoint(PASSIVE)');
          },
          onFailure: (e) => {
            if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000');
            opts.onWarning?.(`${errorMessage(e)}; SQLite checkpoints inside commits again`);
          },
        });
      }
    } catch (e) {
      // Nothing stays open behind a store that was never made.
      this.wal?.closeFd();
      if (opened?.open) opened.close();
      if (e instanceof SigilError) throw e;
      throw new SigilError('store.open_failed', `cannot open SQLite datastore at ${path}: ${errorMessage(e)}`, { status: 500, cause: e });
    }
    const db = this.db;
    this.stmt = {
      insertEntry: db.prepare(
        `INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, hint, admin, expires_at, created_at, revision, federates_with)
         VALUES (@id, @spiffe_id, @parent_id, @selectors, @x509_ttl, @jwt_ttl, @dns_names, @hint, @admin, @expires_at, @created_at, @revision, @federates_with)`,
      ),
      getEntry: db.prepare('SELECT * FROM entries WHERE id = ?'),
      deleteEntry: db.prepare('DELETE FROM entries WHERE id = ?'),
      bumpRevision: db.prepare(`UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'entries_revision' RETURNING CAST(value AS INTEGER) AS v`),
      revision: db.prepare(`SELECT CAST(value AS INTEGER) AS v FROM meta WHERE key = 'entries_revision'`),
      countEntries: db.prepare('SELECT COUNT(*) AS n FROM entries'),
      countAgents: db.prepare('SELECT COUNT(*) AS n FROM agents'),
      upsertAgent: db.prepare(
        `INSERT INTO agents (id, attestors, selectors, serial, svid_expires_at, attested_at, banned, factor_ids)
         VALUES (@id, @attestors, @selectors, @serial, @svid_expires_at, @attested_at, @banned, @factor_ids)
         ON CONFLICT(id) DO UPDATE SET attestors = excluded.attestors, selectors = excluded.selectors, serial = excluded.serial,
           svid_expires_at = excluded.svid_expires_at, attested_at = excluded.attested_at, banned = excluded.banned,
           factor_ids = excluded.factor_ids
         WHERE agents.banned = 0`,
      ),
      getAgent: db.prepare('SELECT * FROM agents WHERE id = ?'),
      listAgents: db.prepare('SELECT * FROM agents ORDER BY id'),
      // The agent and every agent that presented it as a factor.
      deleteAgents: db.prepare(
        `DELETE FROM agents WHERE id = @id OR EXISTS (SELECT 1 FROM json_each(agents.factor_ids) f WHERE f.value = @id)
         RETURNING id, factor_ids`,
      ),
      banAgent: db.prepare(`UPDATE agents SET banned = 1, serial = '' WHERE id = ? RETURNING id, factor_ids`),
      // A ban of an ID that has no record of its own but is a factor of some agent.
      banFactor: db.prepare(
        `INSERT INTO agents (id, attestors, selectors, serial, svid_expires_at, attested_at, banned, factor_ids)
         SELECT @id, '[]', '[]', '', @now, @now, 1, json_array(@id)
         WHERE EXISTS (SELECT 1 FROM agents a, json_each(a.factor_ids) f WHERE f.value = @id)
         RETURNING id, factor_ids`,
      ),
      renewAgent: db.prepare(
        `UPDATE agents SET serial = @serial, svid_expires_at = @svid_expires_at
         WHERE id = @id AND serial = @expected AND banned = 0
           AND NOT EXISTS (SELECT 1 FROM json_each(agents.factor_ids) f JOIN agents b ON b.id = f.value WHERE b.banned = 1)`,
      ),
      deleteState: db.prepare('DELETE FROM plugin_state WHERE plugin = ? AND key = ?'),
      insertToken: db.prepare(
        'INSERT INTO join_tokens (id, secret_hash, expires_at, used_at, spiffe_id, created_at) VALUES (@id, @secret_hash, @expires_at, NULL, @spiffe_id, @created_at)',
      ),
      tokenByHash: db.prepare('SELECT * FROM join_tokens WHERE secret_hash = ?'),
      useToken: db.prepare('UPDATE join_tokens SET used_at = @now WHERE secret_hash = @hash AND used_at IS NULL AND expires_at > @now RETURNING *'),
      loadJournal: db.prepare('SELECT body FROM ca_journals WHERE instance = ?'),
      saveJournal: db.prepare('INSERT INTO ca_journals (instance, body) VALUES (?, ?) ON CONFLICT(instance) DO UPDATE SET body = excluded.body'),
      listJournals: db.prepare('SELECT instance, body FROM ca_journals ORDER BY instance'),
      putSession: db.prepare('INSERT INTO sessions (id, body, expires_at) VALUES (?, ?, ?)'),
      takeSession: db.prepare('DELETE FROM sessions WHERE id = ? RETURNING body'),
      hasSession: db.prepare('SELECT 1 AS one FROM sessions WHERE id = ? AND expires_at > ?'),
      sweepSessions: db.prepare('DELETE FROM sessions WHERE expires_at <= ?'),
      countSessions: db.prepare('SELECT COUNT(*) AS n FROM sessions'),
      getState: db.prepare('SELECT value FROM plugin_state WHERE plugin = ? AND key = ?'),
      putState: db.prepare('INSERT INTO plugin_state (plugin, key, value) VALUES (?, ?, ?) ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value'),
      createStateIfAbsent: db.prepare('INSERT INTO plugin_state (plugin, key, value) VALUES (?, ?, ?) ON CONFLICT(plugin, key) DO NOTHING'),
      swapState: db.prepare('UPDATE plugin_state SET value = ? WHERE plugin = ? AND key = ? AND value = ?'),
    };
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (const step of pendingMigrations(version, MIGRATIONS)) {
      this.db.transaction(() => {
        this.db.exec(step.migration);
        this.db.pragma(`user_version = ${step.version}`);
      })();
    }
  }

  async ping(): Promise<void> {
    // After a failed flush the datastore is not ready: it refuses writes until a restart.
    const refused = this.wal?.refusal;
    if (refused) throw refused;
    this.db.prepare('SELECT 1').get();
  }

  /**
   * A flush failed (wal-sync.ts): from now on no transaction may commit. Each write method refuses
   * first with `store.sync_failed` (writable()); `query_only` makes SQLite itself refuse any write
   * that check would miss. Reads go on; closing still checkpoints what the log holds.
   */
  private refuseWrites(): void {
    if (this.db.open) this.db.pragma('query_only = ON');
    // Nothing more is copied into the database file from a log the disk may not hold.
    void this.checkpointer?.close();
  }

  /** Throws `store.sync_failed` once a flush has failed (see refuseWrites). */
  private writable(): void {
    const refused = this.wal?.refusal;
    if (refused) throw refused;
  }

  private insertEntryRow(e: NewEntry): RegistrationEntry {
    const rev = (this.stmt.bumpRevision!.get() as { v: number }).v;
    const entry = newEntryRecord(e, rev, new Date().toISOString());
    const row: EntryRow = {
      id: entry.id,
      spiffe_id: entry.spiffeId,
      parent_id: entry.parentId,
      selectors: JSON.stringify(entry.selectors),
      x509_ttl: entry.x509SvidTtl,
      jwt_ttl: entry.jwtSvidTtl,
      dns_names: JSON.stringify(entry.dnsNames),
      hint: entry.hint,
      admin: entry.admin ? 1 : 0,
      expires_at: entry.expiresAt,
      created_at: entry.createdAt,
      revision: entry.revisionNumber,
      federates_with: JSON.stringify(entry.federatesWith),
    };
    try {
      this.stmt.insertEntry!.run(row);
    } catch (err) {
      if (String(err).includes('UNIQUE')) throw new SigilError('entry.exists', `an entry with id ${row.id} already exists`, { status: 409 });
      throw err;
    }
    return entry;
  }

  /** Tell the entry watchers about entries written by a transaction that has just committed. */
  private entriesWritten(written: { parentId: string; selectors: string[]; revisionNumber: number }[]): void {
    if (written.length === 0 || this.entryListeners.size === 0) return;
    const change = entriesChangeOf(written);
    for (const l of this.entryListeners) l(change);
  }

  watchEntries(listener: (change: EntriesChange) => void): EntriesWatch {
    // Only this process writes the file (one verifier per SQLite datastore), and its writes are
    // reported synchronously after their commit; the revision itself is one indexed read.
    this.entryListeners.add(listener);
    return { currentRevision: () => undefined, close: () => void this.entryListeners.delete(listener) };
  }

  watchAgents(listener: AgentsListener): AgentsWatch {
    // This process's writes, reported after their commit. No `live`: nothing stops a second process
    // from opening the same file, and its writes would not be reported, so agent records are not
    // kept between calls on SQLite (each is one indexed read here, ~11 µs).
    this.agentListeners.add(listener);
    return { close: () => void this.agentListeners.delete(listener) };
  }

  /** Resolves once every write committed before the call is on disk (see the file header). */
  private durable(): Promise<void> {
    if (!this.wal) return Promise.resolve();
    this.checkpointer?.wrote();
    return this.wal.flush();
  }

  async createEntry(e: NewEntry): Promise<RegistrationEntry> {
    this.writable();
    const out = this.db.transaction(() => this.insertEntryRow(e))();
    this.entriesWritten([out]);
    await this.durable();
    return out;
  }

  async createEntries(es: NewEntry[]): Promise<RegistrationEntry[]> {
    this.writable();
    const out = this.db.transaction(() => es.map((e) => this.insertEntryRow(e)))();
    this.entriesWritten(out);
    await this.durable();
    return out;
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    const r = this.stmt.getEntry!.get(id) as EntryRow | undefined;
    return r ? entryFromRow(r, SQLITE_COLUMNS) : undefined;
  }

  async deleteEntry(id: string): Promise<boolean> {
    this.writable();
    const gone = this.db.transaction(() => {
      const row = this.stmt.getEntry!.get(id) as EntryRow | undefined;
      if (!row || this.stmt.deleteEntry!.run(id).changes === 0) return undefined;
      const rev = (this.stmt.bumpRevision!.get() as { v: number }).v;
      return { parentId: row.parent_id, selectors: SQLITE_COLUMNS.list(row.selectors, 'selectors'), revisionNumber: rev };
    })();
    if (!gone) return false;
    this.entriesWritten([gone]);
    await this.durable();
    return true;
  }

  async listEntries(opts: { parentId?: string; spiffeId?: string; limit?: number; offset?: number } = {}): Promise<RegistrationEntry[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.parentId !== undefined) {
      where.push('parent_id = ?');
      args.push(opts.parentId);
    }
    if (opts.spiffeId !== undefined) {
      where.push('spiffe_id = ?');
      args.push(opts.spiffeId);
    }
    const sql = `SELECT * FROM entries ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at, id LIMIT ? OFFSET ?`;
    args.push(opts.limit ?? -1, opts.offset ?? 0);
    return (this.db.prepare(sql).all(...args) as EntryRow[]).map((r) => entryFromRow(r, SQLITE_COLUMNS));
  }

  async entriesByParents(parentIds: string[]): Promise<RegistrationEntry[]> {
    if (parentIds.length === 0) return [];
    const out: RegistrationEntry[] = [];
    // The verifier keeps these entries (its authorized-set cache): one copy of each repeated string.
    const intern = new EntryInterner(this.internedValues, parentIds);
    // Chunk to stay under SQLite's bound-parameter limit.
    for (let i = 0; i < parentIds.length; i += 500) {
      const chunk = parentIds.slice(i, i + 500);
      const rows = this.inStatement(chunk.length).all(...chunk) as EntryRow[];
      for (const r of rows) out.push(entryFromRow(r, SQLITE_COLUMNS, intern));
    }
    return out;
  }

  /** Selectors, times and other values shared by the entries entriesByParents returns (EntryInterner). */
  private readonly internedValues = new Map<string, string>();

  private inCache = new Map<number, Database.Statement>();
  private inStatement(n: number): Database.Statement {
    let st = this.inCache.get(n);
    if (!st) {
      st = this.db.prepare(`SELECT * FROM entries WHERE parent_id IN (${Array.from({ length: n }, () => '?').join(',')})`);
      if (this.inCache.size < 64) this.inCache.set(n, st);
    }
    return st;
  }

  async entriesRevision(): Promise<number> {
    return (this.stmt.revision!.get() as { v: number }).v;
  }

  async countEntries(): Promise<number> {
    return (this.stmt.countEntries!.get() as { n: number }).n;
  }

  async countAgents(): Promise<number> {
    return (this.stmt.countAgents!.get() as { n: number }).n;
  }

  async upsertAgent(a: AgentRecord): Promise<boolean> {
    this.writable();
    // One statement: SQLite runs it under its write lock, so a ban committed by another connection
    // is either seen by the WHERE (nothing written) or lands after this write (and then stands).
    const r = this.stmt.upsertAgent!.run({
      id: a.id,
      attestors: JSON.stringify(a.attestors),
      selectors: JSON.stringify(a.selectors),
      serial: a.serial,
      svid_expires_at: a.svidExpiresAt,
      attested_at: a.attestedAt,
      banned: a.banned ? 1 : 0,
      factor_ids: JSON.stringify(a.factorIds),
    });
    if (r.changes === 0) return false;
    for (const l of this.agentListeners) l.written?.(a.id);
    await this.durable();
    return true;
  }

  async getAgent(id: string): Promise<AgentRecord | undefined> {
    const r = this.stmt.getAgent!.get(id) as AgentColumns | undefined;
    return r ? agentFromRow(r, SQLITE_COLUMNS) : undefined;
  }

  async listAgents(): Promise<AgentRecord[]> {
    return (this.stmt.listAgents!.all() as AgentColumns[]).map((r) => agentFromRow(r, SQLITE_COLUMNS));
  }

  async evictAgent(id: string, ban: boolean, pluginState?: (agentId: string) => PluginStateKey[]): Promise<boolean> {
    this.writable();
    const changed = this.db.transaction(() => {
      type Hit = { id: string; factor_ids: string };
      let hits: Hit[];
      if (!ban) hits = this.stmt.deleteAgents!.all({ id }) as Hit[];
      else {
        const banned = (this.stmt.banAgent!.get(id) ?? this.stmt.banFactor!.get({ id, now: new Date().toISOString() })) as Hit | undefined;
        hits = banned ? [banned] : [];
      }
      if (ban && hits.length === 0) return false;
      let changed = hits.length > 0;
      if (pluginState) {
        const factors = hits.map((h) => ({ factorIds: factorIdsOf(h.id, SQLITE_COLUMNS.list(h.factor_ids, 'factor_ids')) }));
        for (const k of evictedPluginStateKeys(factors, id, ban, pluginState)) {
          if (this.stmt.deleteState!.run(k.plugin, k.key).changes > 0) changed = true;
        }
      }
      return changed;
    })();
    if (!changed) return false;
    for (const l of this.agentListeners) l.changed(id);
    await this.durable();
    return true;
  }

  async renewAgentSvid(id: string, expectedSerial: string, serial: string, svidExpiresAt: string): Promise<boolean> {
    this.writable();
    if (this.stmt.renewAgent!.run({ id, expected: expectedSerial, serial, svid_expires_at: svidExpiresAt }).changes === 0) return false;
    for (const l of this.agentListeners) l.written?.(id);
    await this.durable();
    return true;
  }

  async createJoinToken(t: JoinTokenRecord): Promise<void> {
    this.writable();
    this.stmt.insertToken!.run({ id: t.id, secret_hash: t.secretHash, expires_at: t.expiresAt, spiffe_id: t.spiffeId, created_at: t.createdAt });
    await this.durable();
  }

  async getJoinTokenByHash(secretHash: string): Promise<JoinTokenRecord | undefined> {
    const r = this.stmt.tokenByHash!.get(secretHash) as TokenColumns | undefined;
    return r ? tokenFromRow(r, SQLITE_COLUMNS) : undefined;
  }

  async useJoinToken(secretHash: string, now: Date): Promise<JoinTokenRecord | undefined> {
    this.writable();
    const r = this.stmt.useToken!.get({ hash: secretHash, now: now.toISOString() }) as TokenColumns | undefined;
    if (!r) return undefined;
    await this.durable();
    return tokenFromRow(r, SQLITE_COLUMNS);
  }

  async createJoinTokenWithAlias(t: JoinTokenRecord, alias: NewEntry): Promise<RegistrationEntry> {
    this.writable();
    const out = this.db.transaction(() => {
      this.stmt.insertToken!.run({ id: t.id, secret_hash: t.secretHash, expires_at: t.expiresAt, spiffe_id: t.spiffeId, created_at: t.createdAt });
      return this.insertEntryRow(alias);
    })();
    this.entriesWritten([out]);
    await this.durable();
    return out;
  }

  async loadCaJournal(instance: string): Promise<CaJournal | undefined> {
    const r = this.stmt.loadJournal!.get(instance) as { body: string } | undefined;
    return r ? parseStoredJson<CaJournal>(r.body, `a CA journal for ${instance}`) : undefined;
  }

  async saveCaJournal(instance: string, j: CaJournal): Promise<void> {
    this.writable();
    this.stmt.saveJournal!.run(instance, JSON.stringify(j));
    await this.durable();
  }

  async listCaJournals(): Promise<{ instance: string; journal: CaJournal }[]> {
    return (this.stmt.listJournals!.all() as { instance: string; body: string }[]).map((r) => ({ instance: r.instance, journal: parseStoredJson<CaJournal>(r.body, `a CA journal for ${r.instance}`) }));
  }

  async putSession(sess: StoredSession): Promise<void> {
    this.writable();
    this.stmt.putSession!.run(sess.id, JSON.stringify(sess), sess.expiresAt);
    await this.durable();
  }

  async takeSession(id: string): Promise<StoredSession | undefined> {
    this.writable();
    const r = this.stmt.takeSession!.get(id) as { body: string } | undefined;
    if (!r) return undefined;
    // Taken once: the removal is on disk before the session is used.
    await this.durable();
    return parseStoredJson<StoredSession>(r.body, 'an attestation session');
  }

  async hasSession(id: string, now: Date): Promise<boolean> {
    return this.stmt.hasSession!.get(id, now.toISOString()) !== undefined;
  }

  async sweepSessions(now: Date): Promise<number> {
    this.writable();
    if (this.stmt.sweepSessions!.run(now.toISOString()).changes > 0) await this.durable();
    return (this.stmt.countSessions!.get() as { n: number }).n;
  }

  async getPluginState(plugin: string, key: string): Promise<unknown | undefined> {
    const r = this.stmt.getState!.get(plugin, key) as { value: string } | undefined;
    return r ? pluginStateValue(r.value, plugin, key) : undefined;
  }

  async putPluginState(plugin: string, key: string, value: unknown): Promise<void> {
    this.writable();
    this.stmt.putState!.run(plugin, key, pluginStateText(value));
    await this.durable();
  }

  async compareAndSetPluginState(plugin: string, key: string, expected: unknown | undefined, next: unknown): Promise<boolean> {
    this.writable();
    const text = pluginStateText(next);
    // One statement each: SQLite runs it under its write lock, so the comparison and the write
    // cannot be separated by another connection's write.
    let written: boolean;
    if (expected === undefined) written = this.stmt.createStateIfAbsent!.run(plugin, key, text).changes > 0;
    else {
      const want = pluginStateExpectedText(expected);
      if (want === undefined) return false; // not a JSON value: nothing stored can equal it
      written = this.stmt.swapState!.run(text, plugin, key, want).changes > 0;
    }
    if (written) await this.durable();
    return written;
  }

  // ------------------------------------------------------------ federation (schema versions 3 and 4)

  async putFederation(r: FederationRelationship, create: boolean, bundle?: FederatedBundleRecord): Promise<boolean> {
    this.writable();
    const sql = create
      ? 'INSERT INTO federations (trust_domain, body, generation) VALUES (@td, @body, @gen) ON CONFLICT(trust_domain) DO NOTHING'
      : 'UPDATE federations SET body = @body, generation = @gen WHERE trust_domain = @td';
    const wrote = this.db.transaction(() => {
      if (this.db.prepare(sql).run({ td: r.trustDomain, body: federationBody(r), gen: newFederationGeneration() }).changes !== 1) return false;
      if (bundle) {
        this.db
          .prepare(
            `INSERT INTO federated_bundles (trust_domain, bundle, sequence, updated_at) VALUES (@td, @bundle, @seq, @at)
             ON CONFLICT(trust_domain) DO UPDATE SET bundle = excluded.bundle, sequence = excluded.sequence, updated_at = excluded.updated_at`,
          )
          .run({ td: r.trustDomain, bundle: bundle.bundle, seq: bundle.sequence, at: bundle.updatedAt });
      }
      return true;
    })();
    if (!wrote) return false;
    await this.durable();
    return true;
  }

  async getFederation(trustDomain: string): Promise<FederationRelationship | undefined> {
    const row = this.db.prepare('SELECT body, generation FROM federations WHERE trust_domain = ?').get(trustDomain) as { body: string; generation: string } | undefined;
    return row ? federationFromRow(row, `the federation relationship with ${trustDomain}`) : undefined;
  }

  async listFederations(): Promise<FederationRelationship[]> {
    return (this.db.prepare('SELECT body, generation FROM federations ORDER BY trust_domain').all() as { body: string; generation: string }[]).map((r) => federationFromRow(r, 'a federation relationship'));
  }

  async deleteFederation(trustDomain: string): Promise<boolean> {
    this.writable();
    const gone = this.db.transaction(() => {
      this.db.prepare('DELETE FROM federated_bundles WHERE trust_domain = ?').run(trustDomain);
      return this.db.prepare('DELETE FROM federations WHERE trust_domain = ?').run(trustDomain).changes === 1;
    })();
    if (gone) await this.durable();
    return gone;
  }

  async saveFederatedBundle(b: FederatedBundleRecord, generation?: string): Promise<boolean> {
    this.writable();
    // One statement: SQLite has one writer, so the relationship (and its generation) checked here is
    // the one the write lands on.
    const r = this.db
      .prepare(
        `INSERT INTO federated_bundles (trust_domain, bundle, sequence, updated_at)
         SELECT @td, @bundle, @seq, @at WHERE EXISTS (SELECT 1 FROM federations WHERE trust_domain = @td AND (@gen IS NULL OR generation = @gen))
         ON CONFLICT(trust_domain) DO UPDATE SET bundle = excluded.bundle, sequence = excluded.sequence, updated_at = excluded.updated_at
         WHERE federated_bundles.sequence <= excluded.sequence`,
      )
      .run({ td: b.trustDomain, bundle: b.bundle, seq: b.sequence, at: b.updatedAt, gen: generation ?? null });
    if (r.changes !== 1) return false;
    await this.durable();
    return true;
  }

  async getFederatedBundle(trustDomain: string): Promise<FederatedBundleRecord | undefined> {
    const row = this.db.prepare('SELECT trust_domain, bundle, sequence, updated_at FROM federated_bundles WHERE trust_domain = ?').get(trustDomain) as FederatedBundleColumns | undefined;
    return row ? federatedBundleFromRow(row, SQLITE_COLUMNS) : undefined;
  }

  async listFederatedBundles(): Promise<FederatedBundleRecord[]> {
    return (this.db.prepare('SELECT trust_domain, bundle, sequence, updated_at FROM federated_bundles ORDER BY trust_domain').all() as FederatedBundleColumns[]).map((r) => federatedBundleFromRow(r, SQLITE_COLUMNS));
  }

  async close(): Promise<void> {
    this.entryListeners.clear();
    this.agentListeners.clear();
    // Writes still waiting for their flush get it before the log's descriptor is closed (a write may
    // commit while one runs and queue another: wait until none is left); with none, the database is
    // closed before this returns its promise, as callers that do not wait expect. The descriptor and
    // the database are closed together, with no await between, so no flush can start in between.
    // The checkpoint worker's connection closes first, so that this one is the last and its close
    // checkpoints the whole log.
    const ending = this.checkpointer?.close();
    if (ending) await ending;
    for (let busy = this.wal?.idle(); busy; busy = this.wal?.idle()) await busy;
    this.wal?.closeFd();
    if (this.db.open) this.db.close();
  }
}
