/**
 * Row ↔ record mapping shared by the SQLite and PostgreSQL stores. Both hold the same logical
 * schema (column names and meaning); they differ only in how a column's value comes back from the
 * driver (a JSON array is text in SQLite and already decoded JSONB in PostgreSQL; a time is ISO
 * text in SQLite and a Date in PostgreSQL; a BIGINT is a string in node-postgres). Each store
 * passes a `ColumnDecoder` for its driver; everything else here is the same for both.
 */
import { randomUUID } from 'node:crypto';
import { SigilError } from '../errors.js';
import type { AgentRecord, EntriesChange, FederatedBundleRecord, FederationRelationship, JoinTokenRecord, NewEntry, RegistrationEntry } from './types.js';

/** How one driver returns column values of each logical type. */
export interface ColumnDecoder {
  /** A JSON array of strings (selectors, dns_names, attestors, factor_ids, federates_with). */
  list(v: unknown, column: string): string[];
  /** An integer column (x509_ttl, revision, sequence …). */
  int(v: unknown): number;
  /** A boolean column (admin, banned). */
  bool(v: unknown): boolean;
  /** A time column, as the ISO 8601 text the verifier writes. */
  time(v: unknown): string;
}

/** Columns of `entries`, as any driver returns them. */
export interface EntryColumns {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: unknown;
  x509_ttl: unknown;
  jwt_ttl: unknown;
  dns_names: unknown;
  hint: string;
  admin: unknown;
  expires_at: unknown;
  created_at: unknown;
  revision: unknown;
  federates_with: unknown;
}

/** Columns of `agents`. */
export interface AgentColumns {
  id: string;
  attestors: unknown;
  selectors: unknown;
  serial: string;
  svid_expires_at: unknown;
  attested_at: unknown;
  banned: unknown;
  factor_ids: unknown;
}

/** Columns of `join_tokens`. */
export interface TokenColumns {
  id: string;
  secret_hash: string;
  expires_at: unknown;
  used_at: unknown;
  spiffe_id: string | null;
  created_at: unknown;
}

/** Columns of `federated_bundles`. */
export interface FederatedBundleColumns {
  trust_domain: string;
  bundle: string;
  sequence: unknown;
  updated_at: unknown;
}

/**
 * The empty list that entries read through an EntryInterner share (most entries have no DNS names
 * and federate with nothing). Frozen: a caller that tried to change it would throw, not change
 * every entry.
 */
export const SHARED_EMPTY_LIST: string[] = Object.freeze([]) as unknown as string[];

/** Strings longer than this are not kept in an EntryInterner's value table. */
export const INTERN_MAX_LENGTH = 256;
/** Strings an EntryInterner's value table holds; when full it starts afresh. */
export const INTERN_MAX_VALUES = 16_384;

/**
 * One copy of each repeated string among the entries a verifier keeps in memory (issue 15: every
 * row a driver returns is a new copy of its parent ID, creation time and selectors, so 100,000
 * cached entries held some 700,000 duplicate strings). Strings are looked up by their content, so
 * only equal strings are merged.
 *
 * `values` (selectors, DNS names, trust domains, hints, times) lives as long as the store and is
 * bounded (INTERN_MAX_VALUES strings of at most INTERN_MAX_LENGTH characters). IDs (parent and SPIFFE
 * IDs) go through `ids`, a table made for one read and seeded with the parent IDs it asked for, so
 * the children of a parent share the caller's own string and nothing outlives the read.
 */
export class EntryInterner {
  private readonly ids: Map<string, string>;

  constructor(
    private readonly values: Map<string, string>,
    seedIds: readonly string[],
  ) {
    this.ids = new Map(seedIds.map((s) => [s, s]));
  }

  id(s: string): string {
    const t = this.ids.get(s);
    if (t !== undefined) return t;
    this.ids.set(s, s);
    return s;
  }

  value(s: string): string {
    if (s.length > INTERN_MAX_LENGTH) return s;
    const t = this.values.get(s);
    if (t !== undefined) return t;
    if (this.values.size >= INTERN_MAX_VALUES) this.values.clear();
    this.values.set(s, s);
    return s;
  }

  /** The list with its strings interned (in place: the list is the caller's fresh copy), or the shared empty list. */
  list(l: string[]): string[] {
    if (l.length === 0) return SHARED_EMPTY_LIST;
    for (let i = 0; i < l.length; i++) {
      const x = l[i];
      if (typeof x === 'string') l[i] = this.value(x);
    }
    return l;
  }
}

/** An entry record from its row; with `intern`, its repeated strings and empty lists are shared (EntryInterner). */
export function entryFromRow(r: EntryColumns, d: ColumnDecoder, intern?: EntryInterner): RegistrationEntry {
  if (intern === undefined) {
    return {
      id: r.id,
      spiffeId: r.spiffe_id,
      parentId: r.parent_id,
      selectors: d.list(r.selectors, 'selectors'),
      x509SvidTtl: d.int(r.x509_ttl),
      jwtSvidTtl: d.int(r.jwt_ttl),
      dnsNames: d.list(r.dns_names, 'dns_names'),
      hint: r.hint,
      admin: d.bool(r.admin),
      expiresAt: r.expires_at === null ? null : d.time(r.expires_at),
      federatesWith: d.list(r.federates_with, 'federates_with'),
      createdAt: d.time(r.created_at),
      revisionNumber: d.int(r.revision),
    };
  }
  return {
    id: r.id,
    spiffeId: intern.id(r.spiffe_id),
    parentId: intern.id(r.parent_id),
    selectors: intern.list(d.list(r.selectors, 'selectors')),
    x509SvidTtl: d.int(r.x509_ttl),
    jwtSvidTtl: d.int(r.jwt_ttl),
    dnsNames: intern.list(d.list(r.dns_names, 'dns_names')),
    hint: intern.value(r.hint),
    admin: d.bool(r.admin),
    expiresAt: r.expires_at === null ? null : intern.value(d.time(r.expires_at)),
    federatesWith: intern.list(d.list(r.federates_with, 'federates_with')),
    createdAt: intern.value(d.time(r.created_at)),
    revisionNumber: d.int(r.revision),
  };
}

/**
 * The agent IDs of every factor of an agent's attestation, own ID first. A record written before
 * schema version 2 (or a banned factor's placeholder) has none stored: its own ID stands alone.
 */
export function factorIdsOf(id: string, stored: string[]): string[] {
  if (stored.length === 0) return [id];
  // The own ID comes first: one copy of it, not two (held long-polls keep their agent's record).
  if (stored[0] === id) stored[0] = id;
  return stored;
}

export function agentFromRow(r: AgentColumns, d: ColumnDecoder): AgentRecord {
  return {
    id: r.id,
    attestors: d.list(r.attestors, 'attestors'),
    selectors: d.list(r.selectors, 'selectors'),
    serial: r.serial,
    svidExpiresAt: d.time(r.svid_expires_at),
    attestedAt: d.time(r.attested_at),
    banned: d.bool(r.banned),
    factorIds: factorIdsOf(r.id, d.list(r.factor_ids, 'factor_ids')),
  };
}

export function tokenFromRow(r: TokenColumns, d: ColumnDecoder): JoinTokenRecord {
  return {
    id: r.id,
    secretHash: r.secret_hash,
    expiresAt: d.time(r.expires_at),
    usedAt: r.used_at === null ? null : d.time(r.used_at),
    spiffeId: r.spiffe_id,
    createdAt: d.time(r.created_at),
  };
}

export function federatedBundleFromRow(r: FederatedBundleColumns, d: ColumnDecoder): FederatedBundleRecord {
  return { trustDomain: r.trust_domain, bundle: r.bundle, sequence: d.int(r.sequence), updatedAt: d.time(r.updated_at) };
}

/**
 * The entry a store writes for `e`: a fresh id unless one is given, selectors and federatesWith
 * sorted (the stored order is canonical, so equal entries compare equal), `revision` and
 * `createdAt` as the store assigns them.
 */
export function newEntryRecord(e: NewEntry, revision: number, createdAt: string): RegistrationEntry {
  return {
    id: e.id ?? randomUUID(),
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: [...e.selectors].sort(),
    x509SvidTtl: e.x509SvidTtl,
    jwtSvidTtl: e.jwtSvidTtl,
    dnsNames: [...e.dnsNames],
    hint: e.hint,
    admin: e.admin,
    expiresAt: e.expiresAt,
    federatesWith: [...(e.federatesWith ?? [])].sort(),
    createdAt,
    revisionNumber: revision,
  };
}

/** The change entry watchers are told about for entries written (or deleted) in one transaction. */
export function entriesChangeOf(written: readonly { parentId: string; selectors: string[]; revisionNumber: number }[]): EntriesChange {
  let lo = Infinity;
  let hi = -Infinity;
  for (const e of written) {
    lo = Math.min(lo, e.revisionNumber);
    hi = Math.max(hi, e.revisionNumber);
  }
  return { fromRevision: lo - 1, toRevision: hi, entries: written.map((e) => ({ parentId: e.parentId, selectors: e.selectors })) };
}

/**
 * Parse a JSON document the store keeps as text (CA journal, session, plugin state, federation
 * relationship). A value that is not JSON means the database was changed outside Sigil:
 * `store.corrupt`, naming `what`.
 */
export function parseStoredJson<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    // No cause: JSON.parse's message quotes the text, and stored state may hold secrets (a
    // third-party plugin's), which must not reach the logs through a stack.
    throw new SigilError('store.corrupt', `the datastore holds ${what} that is not valid JSON`, { status: 500 });
  }
}

/** A new federation relationship generation (FederationRelationship.generation): 128 random bits. */
export function newFederationGeneration(): string {
  return randomUUID();
}

/** The `body` column of a federation relationship: the record without its generation (a column of its own). */
export function federationBody(r: FederationRelationship): string {
  const { generation: _ignored, ...fields } = r;
  return JSON.stringify(fields);
}

/** A federation relationship from its `body` and `generation` columns. */
export function federationFromRow(r: { body: string; generation: string }, what: string): FederationRelationship {
  return { ...parseStoredJson<FederationRelationship>(r.body, what), generation: r.generation };
}
