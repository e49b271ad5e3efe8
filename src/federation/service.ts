/**
 * The verifier's side of SPIFFE Federation: relationships with foreign trust domains (kept in the
 * datastore), and for each one a refresher that fetches the foreign bundle from its bundle
 * endpoint, checks it (validate.ts) and keeps it as the last good bundle.
 *
 * Refresh timing: after a good fetch, the bundle's `spiffe_refresh_hint` (clamped to
 * [minRefresh, maxRefresh]; `defaultRefresh` without a hint). After a failure, bounded exponential
 * back-off with full jitter: base 1 s doubling up to `maxBackoff`, and never longer than the next
 * regular refresh would be — so a foreign endpoint that is down is retried at least as often as it
 * asked to be polled. The last good bundle is never discarded by a failure: agents keep receiving
 * it, and it stays in the datastore across restarts (SQLite or PostgreSQL).
 *
 * Every write of a relationship gives it a new generation (the store's). A fetch carries the
 * generation it started with and its bundle is stored only while the relationship still has it, in
 * the statement that writes; a fetch running here when the operator updates, re-anchors or deletes
 * the relationship is also abandoned at once and a fresh one started. So a fetch authenticated with
 * the old anchors or made to the old endpoint never replaces what the operator gave.
 *
 * Every timer is clamped to MAX_TIMER_MS (src/util/timers.ts; Node fires a longer one after 1 ms),
 * whatever the foreign bundle's hint or the settings say.
 */
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { SigilError, asSigilError, errorFields } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import type { DataStore, FederatedBundleRecord, FederationRelationship } from '../store/types.js';
import { timerDelayMs } from '../util/timers.js';
import { fetchBundleDocument, type FetchOptions } from './fetch.js';
import { checkSuccessor, parseForeignBundle, parseInitialBundle, validateRelationship, type RelationshipInput, type ValidRelationship } from './validate.js';

export interface RefreshSettings {
  defaultSeconds: number;
  minSeconds: number;
  maxSeconds: number;
  backoffBaseMs: number;
  maxBackoffSeconds: number;
  timeoutMs: number;
}

export const REFRESH_DEFAULTS: RefreshSettings = { defaultSeconds: 300, minSeconds: 5, maxSeconds: 3600, backoffBaseMs: 1000, maxBackoffSeconds: 300, timeoutMs: 10_000 };

export interface RefreshStatus {
  lastAttemptAt?: string;
  lastSuccessAt?: string;
  lastError?: { code: string; message: string; at: string };
  consecutiveFailures: number;
  nextRefreshAt?: string;
}

export interface RelationshipView extends FederationRelationship {
  bundleSequence: number | null;
  bundleUpdatedAt: string | null;
  x509Authorities: number;
  jwtAuthorities: number;
  /** Declared in this verifier's config: its fields are changed there, not through the CLI. */
  declaredInConfig: boolean;
  refresh: RefreshStatus;
}

export interface FederationServiceOptions {
  store: DataStore;
  trustDomain: string;
  logger: Logger;
  registry: Registry;
  now: () => Date;
  refresh?: Partial<RefreshSettings>;
  /** Replaceable for tests; the default fetches over HTTPS (fetch.ts). */
  fetch?: (rel: ValidRelationship, o: FetchOptions) => Promise<Buffer>;
  random?: () => number;
}

type Fetcher = (rel: ValidRelationship, o: FetchOptions) => Promise<Buffer>;

/** `p`'s value, or undefined as soon as `signal` aborts (a replaced fetcher may not heed the signal itself). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.resolve(undefined);
  }
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = (): void => resolve(undefined);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function relOf(r: FederationRelationship): ValidRelationship {
  return {
    trustDomain: r.trustDomain,
    bundleEndpointUrl: r.bundleEndpointUrl,
    profile: r.profile,
    ...(r.endpointSpiffeId !== undefined ? { endpointSpiffeId: r.endpointSpiffeId } : {}),
    ...(r.webCaPem !== undefined ? { webCaPem: r.webCaPem } : {}),
  };
}

export class FederationService {
  private readonly settings: RefreshSettings;
  private readonly fetcher: Fetcher;
  private readonly random: () => number;
  private readonly status = new Map<string, RefreshStatus>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  /** The fetch running per trust domain; aborted (and forgotten) when the relationship is changed or deleted here. */
  private readonly inflight = new Map<string, { done: Promise<RelationshipView>; abort: AbortController }>();
  /** Trust domains whose relationship this verifier's config declares (declare()). */
  private readonly declared = new Set<string>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private running = false;
  private bundleCache: { at: number; byTd: Map<string, FederatedBundleRecord> } | undefined;
  private readonly metrics: { refreshes: Counter<'trust_domain' | 'result'>; changes: Counter<'trust_domain'>; sequence: Gauge<'trust_domain'>; age: Gauge<'trust_domain'> };

  constructor(private readonly o: FederationServiceOptions) {
    this.settings = { ...REFRESH_DEFAULTS, ...(o.refresh ?? {}) };
    this.fetcher = o.fetch ?? fetchBundleDocument;
    this.random = o.random ?? Math.random;
    const registers = [o.registry];
    this.metrics = {
      refreshes: new Counter({ name: 'sigil_federation_refreshes_total', help: 'Foreign bundle refreshes per trust domain and result (ok, unchanged, or the error code)', labelNames: ['trust_domain', 'result'], registers }),
      changes: new Counter({ name: 'sigil_federation_bundle_changes_total', help: 'Foreign bundles accepted with new content, per trust domain', labelNames: ['trust_domain'], registers }),
      sequence: new Gauge({ name: 'sigil_federation_bundle_sequence', help: 'spiffe_sequence of the last good foreign bundle', labelNames: ['trust_domain'], registers }),
      age: new Gauge({ name: 'sigil_federation_bundle_age_seconds', help: 'Seconds since the last good foreign bundle was accepted', labelNames: ['trust_domain'], registers }),
    };
  }

  // ------------------------------------------------------------------ lifecycle

  /** Schedule a refresh of every relationship now, and look for relationships added or removed by other verifiers every 10 s. */
  async start(): Promise<void> {
    this.running = true;
    await this.sweep();
    this.sweepTimer = setInterval(() => {
      this.sweep().catch((e) => this.o.logger.warn(errorFields(e), 'federation: listing relationships failed'));
    }, 10_000);
    this.sweepTimer.unref();
  }

  stop(): void {
    this.running = false;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private async sweep(): Promise<void> {
    const rels = await this.o.store.listFederations();
    const live = new Set(rels.map((r) => r.trustDomain));
    for (const td of [...this.timers.keys()]) {
      if (!live.has(td)) this.unschedule(td);
    }
    for (const r of rels) if (!this.timers.has(r.trustDomain) && !this.inflight.has(r.trustDomain)) this.schedule(r.trustDomain, 0);
    const now = this.o.now().getTime();
    for (const b of await this.o.store.listFederatedBundles()) this.metrics.age.set({ trust_domain: b.trustDomain }, Math.max(0, (now - Date.parse(b.updatedAt)) / 1000));
  }

  private schedule(td: string, delayMs: number): void {
    if (!this.running) return;
    this.unschedule(td);
    const st = this.statusOf(td);
    const delay = timerDelayMs(delayMs);
    st.nextRefreshAt = new Date(this.o.now().getTime() + delay).toISOString();
    const t = setTimeout(() => {
      this.timers.delete(td);
      this.refresh(td).catch(() => undefined);
    }, delay);
    t.unref();
    this.timers.set(td, t);
  }

  private unschedule(td: string): void {
    const t = this.timers.get(td);
    if (t) clearTimeout(t);
    this.timers.delete(td);
  }

  private statusOf(td: string): RefreshStatus {
    let s = this.status.get(td);
    if (!s) {
      s = { consecutiveFailures: 0 };
      this.status.set(td, s);
    }
    return s;
  }

  /** Seconds until the next regular refresh for a bundle with this hint. */
  private regularDelaySeconds(hint: number | undefined): number {
    const { defaultSeconds, minSeconds, maxSeconds } = this.settings;
    const s = hint !== undefined && hint > 0 ? hint : defaultSeconds;
    return Math.min(maxSeconds, Math.max(minSeconds, s));
  }

  /** Back-off after `failures` consecutive failures: full jitter, capped by maxBackoff and the regular delay. */
  backoffMs(failures: number, hint: number | undefined): number {
    const cap = Math.min(this.settings.maxBackoffSeconds, this.regularDelaySeconds(hint)) * 1000;
    const exp = Math.min(cap, this.settings.backoffBaseMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
    return Math.max(this.settings.backoffBaseMs / 2, Math.round(exp * (0.5 + this.random() * 0.5)));
  }

  // ------------------------------------------------------------------ relationships

  /** Create a relationship; `initialBundle` (JWKS or PEM text) is required for https_spiffe. */
  async create(input: RelationshipInput & { initialBundle?: unknown }): Promise<RelationshipView> {
    const rel = validateRelationship(input, this.o.trustDomain);
    let initial: SpiffeBundle | undefined;
    if (input.initialBundle !== undefined) initial = parseInitialBundle(rel.trustDomain, input.initialBundle);
    if (rel.profile === 'https_spiffe' && !initial) throw new SigilError('federation.initial_bundle_required', `profile https_spiffe needs an initial bundle of ${rel.trustDomain} to authenticate its bundle endpoint (--trust-bundle)`);
    const at = this.o.now().toISOString();
    const record: FederationRelationship = { ...rel, createdAt: at, updatedAt: at };
    // The relationship and its first bundle in one transaction.
    if (!(await this.o.store.putFederation(record, true, initial && this.bundleRecord(rel.trustDomain, initial)))) {
      throw new SigilError('federation.exists', `a relationship with ${rel.trustDomain} exists; use update`, { status: 409 });
    }
    if (initial) this.bundleStored(rel.trustDomain, initial, 'initial bundle');
    this.cancelFetch(rel.trustDomain);
    this.o.logger.info({ trustDomain: rel.trustDomain, url: rel.bundleEndpointUrl, profile: rel.profile }, 'federation relationship created');
    this.schedule(rel.trustDomain, 0);
    return this.view(record);
  }

  /**
   * Apply the relationships declared in the config, at start (docs/federation.md, "Config and CLI"):
   * each is created when absent (its `initialBundle` stored), or, when the datastore holds it with
   * other fields (changed through the CLI, or by a verifier with another config), updated to the
   * config's fields — the config wins, and the difference is logged. The stored bundle is kept; the
   * config's trust bundle is used only when none is stored. Two verifiers starting at once on one
   * datastore both succeed (a lost creation race becomes the comparison).
   */
  async declare(rels: readonly (ValidRelationship & { initialBundle?: string })[]): Promise<void> {
    for (const r of rels) {
      const { initialBundle, ...fields } = r;
      const rel = validateRelationship(fields, this.o.trustDomain);
      this.declared.add(rel.trustDomain);
      try {
        await this.create({ ...rel, ...(initialBundle !== undefined ? { initialBundle } : {}) });
        continue;
      } catch (e) {
        if (!(e instanceof SigilError) || e.code !== 'federation.exists') throw e;
      }
      const old = relOf(await this.must(rel.trustDomain));
      const differs = (['bundleEndpointUrl', 'profile', 'endpointSpiffeId', 'webCaPem'] as const).filter((k) => old[k] !== rel[k]);
      const noBundle = !(await this.o.store.getFederatedBundle(rel.trustDomain));
      if (differs.length === 0 && !(noBundle && initialBundle !== undefined)) continue;
      if (differs.length > 0) {
        this.o.logger.warn(
          { trustDomain: rel.trustDomain, fields: differs, datastore: Object.fromEntries(differs.map((k) => [k, k === 'webCaPem' ? (old[k] ? 'PEM' : null) : (old[k] ?? null)])) },
          'federation relationship in the datastore differs from the config; the config is applied',
        );
      }
      await this.applyUpdate(rel.trustDomain, {
        bundleEndpointUrl: rel.bundleEndpointUrl,
        profile: rel.profile,
        endpointSpiffeId: rel.endpointSpiffeId ?? null,
        webCaPem: rel.webCaPem ?? null,
        ...(noBundle && initialBundle !== undefined ? { initialBundle } : {}),
      });
    }
  }

  /**
   * Change a relationship's endpoint, profile, endpoint ID or web CA; an `initialBundle` replaces the
   * last good bundle (operator's word). A relationship declared in this verifier's config takes only
   * an `initialBundle` here: its other fields are the config's (`federation.declared_in_config`).
   */
  async update(td: string, patch: Partial<RelationshipInput> & { initialBundle?: unknown }): Promise<RelationshipView> {
    const name = this.name(td);
    if (this.declared.has(name)) {
      const fields = Object.keys(patch).filter((k) => k !== 'initialBundle' && k !== 'trustDomain');
      if (fields.length > 0) {
        throw new SigilError(
          'federation.declared_in_config',
          `the relationship with ${name} is declared in this verifier's config (federation.relationships); change ${fields.join(', ')} there and restart (only a new trust bundle can be given at run time)`,
          { status: 409 },
        );
      }
    }
    return this.applyUpdate(name, patch);
  }

  private async applyUpdate(td: string, patch: Partial<RelationshipInput> & { initialBundle?: unknown }): Promise<RelationshipView> {
    const old = await this.must(td);
    const merged: RelationshipInput = { ...relOf(old), ...patch, trustDomain: old.trustDomain };
    // A profile change drops the fields of the other profile unless they are given again.
    if (patch.profile !== undefined && patch.profile !== old.profile) {
      if (patch.endpointSpiffeId === undefined) delete merged.endpointSpiffeId;
      if (patch.webCaPem === undefined) delete merged.webCaPem;
    }
    for (const k of ['endpointSpiffeId', 'webCaPem'] as const) if (merged[k] === null) delete merged[k];
    const rel = validateRelationship(merged, this.o.trustDomain);
    let initial: SpiffeBundle | undefined;
    if (patch.initialBundle !== undefined) initial = parseInitialBundle(rel.trustDomain, patch.initialBundle);
    if (rel.profile === 'https_spiffe' && !initial && !(await this.o.store.getFederatedBundle(rel.trustDomain))) {
      throw new SigilError('federation.initial_bundle_required', `profile https_spiffe needs a bundle of ${rel.trustDomain} to authenticate its bundle endpoint (--trust-bundle)`);
    }
    const record: FederationRelationship = { ...rel, createdAt: old.createdAt, updatedAt: this.o.now().toISOString() };
    // A new generation for the relationship and, given one, the operator's bundle whatever its
    // sequence, in one transaction: a fetch begun before (here or on another verifier) cannot store
    // its answer after this.
    if (!(await this.o.store.putFederation(record, false, initial && this.bundleRecord(rel.trustDomain, initial)))) throw this.notFound(td);
    if (initial) this.bundleStored(rel.trustDomain, initial, 'bundle given by the operator');
    this.cancelFetch(rel.trustDomain);
    this.o.logger.info({ trustDomain: rel.trustDomain, url: rel.bundleEndpointUrl, profile: rel.profile }, 'federation relationship updated');
    this.statusOf(rel.trustDomain).consecutiveFailures = 0;
    this.schedule(rel.trustDomain, 0);
    return this.view(record);
  }

  /** Cut a relationship: the relationship and its bundle go; agents stop receiving the bundle at their next sync. */
  async delete(td: string): Promise<void> {
    const name = this.name(td);
    if (this.declared.has(name)) {
      throw new SigilError('federation.declared_in_config', `the relationship with ${name} is declared in this verifier's config (federation.relationships); remove it there and restart, then delete it`, { status: 409 });
    }
    if (!(await this.o.store.deleteFederation(name))) throw this.notFound(name);
    this.cancelFetch(name);
    this.unschedule(name);
    this.status.delete(name);
    this.bundleCache = undefined;
    for (const g of [this.metrics.sequence, this.metrics.age]) g.remove({ trust_domain: name });
    this.o.logger.info({ trustDomain: name }, 'federation relationship deleted');
  }

  async list(): Promise<RelationshipView[]> {
    return Promise.all((await this.o.store.listFederations()).map((r) => this.view(r)));
  }

  async show(td: string): Promise<RelationshipView & { bundle: unknown }> {
    const r = await this.must(td);
    const b = await this.o.store.getFederatedBundle(r.trustDomain);
    return { ...(await this.view(r)), bundle: b ? JSON.parse(b.bundle) : null };
  }

  /**
   * Fetch now (joining a fetch in progress); resolves the view, or rejects with the refusal (the last
   * good bundle stays). A fetch abandoned because the relationship changed meanwhile resolves as
   * the fresh fetch does.
   */
  refresh(td: string): Promise<RelationshipView> {
    const name = this.name(td);
    const running = this.inflight.get(name);
    if (running) return running.done;
    const abort = new AbortController();
    const entry = { abort, done: Promise.resolve() as unknown as Promise<RelationshipView> };
    entry.done = this.doRefresh(name, abort.signal).finally(() => {
      if (this.inflight.get(name) === entry) this.inflight.delete(name);
    });
    this.inflight.set(name, entry);
    return entry.done;
  }

  /** Abandon the fetch running for `td` here (its answer is dropped); the next refresh starts afresh. */
  private cancelFetch(td: string): void {
    const f = this.inflight.get(td);
    if (!f) return;
    this.inflight.delete(td);
    f.abort.abort(new SigilError('federation.refresh_superseded', `the relationship with ${td} changed while its bundle was being fetched`));
  }

  // ------------------------------------------------------------------ bundles for agents

  /**
   * The last good bundles (JWKS objects) of `trustDomains` that have one; the local trust domain and
   * unknown ones are left out. Read from the datastore at most once a second.
   */
  async bundlesFor(trustDomains: Iterable<string>): Promise<Record<string, unknown>> {
    const t = Date.now();
    if (!this.bundleCache || t - this.bundleCache.at > 1000) {
      const byTd = new Map((await this.o.store.listFederatedBundles()).map((b) => [b.trustDomain, b]));
      this.bundleCache = { at: t, byTd };
    }
    const out: Record<string, unknown> = {};
    for (const td of trustDomains) {
      if (td === this.o.trustDomain) continue;
      const b = this.bundleCache.byTd.get(td);
      if (b) out[td] = JSON.parse(b.bundle);
    }
    return out;
  }

  // ------------------------------------------------------------------ internals

  private name(td: string): string {
    return typeof td === 'string' && td.startsWith('spiffe://') ? td.slice('spiffe://'.length) : td;
  }

  private notFound(td: string): SigilError {
    return new SigilError('federation.not_found', `no federation relationship with ${td}`, { status: 404 });
  }

  private async must(td: string): Promise<FederationRelationship> {
    const r = await this.o.store.getFederation(this.name(td));
    if (!r) throw this.notFound(this.name(td));
    return r;
  }

  private async lastGood(td: string): Promise<SpiffeBundle | undefined> {
    const b = await this.o.store.getFederatedBundle(td);
    if (!b) return undefined;
    try {
      return parseForeignBundle(td, b.bundle);
    } catch (e) {
      this.o.logger.error({ trustDomain: td, ...errorFields(e) }, 'federation: the stored bundle no longer parses; treating it as absent');
      return undefined;
    }
  }

  private bundleRecord(td: string, b: SpiffeBundle): FederatedBundleRecord {
    return { trustDomain: td, bundle: JSON.stringify(b.toJwks()), sequence: b.sequence, updatedAt: this.o.now().toISOString() };
  }

  /** Account for a bundle just stored. */
  private bundleStored(td: string, b: SpiffeBundle, why: string): void {
    this.bundleCache = undefined;
    this.metrics.sequence.set({ trust_domain: td }, b.sequence);
    this.metrics.age.set({ trust_domain: td }, 0);
    this.o.logger.info({ trustDomain: td, sequence: b.sequence, x509Authorities: b.x509Authorities.length, jwtAuthorities: b.jwtAuthorities.length, why }, 'federated bundle updated');
  }

  /**
   * A fetch that lost to a change of the relationship (here: aborted; through another verifier: its
   * generation is gone from the store): its answer is dropped, at info, not counted as a failure,
   * and the fetch is made again with the relationship as it is now (joining one already started).
   */
  private superseded(td: string, signal: AbortSignal, generation: string | undefined): Promise<RelationshipView> {
    this.o.logger.info({ trustDomain: td, generation }, 'federation relationship changed while its bundle was being fetched; the fetched bundle is dropped');
    this.metrics.refreshes.inc({ trust_domain: td, result: 'superseded' });
    // Still registered as the running fetch when the change came from another verifier: a fresh
    // refresh must not join this one.
    if (!signal.aborted) this.cancelFetch(td);
    this.unschedule(td);
    return this.refresh(td);
  }

  private async doRefresh(td: string, signal: AbortSignal): Promise<RelationshipView> {
    const st = this.statusOf(td);
    const rel = await this.o.store.getFederation(td);
    if (signal.aborted) return this.superseded(td, signal, rel?.generation);
    if (!rel) {
      this.unschedule(td);
      throw this.notFound(td);
    }
    st.lastAttemptAt = this.o.now().toISOString();
    let last: SpiffeBundle | undefined;
    let next: SpiffeBundle | undefined;
    let changed = false;
    let wrote = false;
    let lost = false;
    try {
      last = await this.lastGood(td);
      const bytes = signal.aborted ? undefined : await untilAborted(this.fetcher(relOf(rel), { ...(last ? { trust: last } : {}), timeoutMs: this.settings.timeoutMs, signal }), signal);
      if (bytes !== undefined) {
        next = parseForeignBundle(td, bytes);
        changed = checkSuccessor(td, last, next);
        // Stored only while the relationship has the generation this fetch started with (the store checks it in the writing statement).
        if (changed) wrote = await this.o.store.saveFederatedBundle(this.bundleRecord(td, next), rel.generation);
        // Refused: a higher sequence is stored (another verifier was faster), or the relationship changed.
        if (changed && !wrote) lost = (await this.o.store.getFederation(td))?.generation !== rel.generation;
      }
    } catch (e) {
      if (signal.aborted) return this.superseded(td, signal, rel.generation);
      const err = asSigilError(e, 'federation.refresh_failed', `refresh of ${td}`);
      st.consecutiveFailures++;
      st.lastError = { code: err.code, message: err.message, at: this.o.now().toISOString() };
      this.metrics.refreshes.inc({ trust_domain: td, result: err.code });
      const delay = this.backoffMs(st.consecutiveFailures, last?.refreshHintSeconds);
      this.o.logger.warn({ trustDomain: td, code: err.code, reason: err.message, failures: st.consecutiveFailures, retryInMs: delay, lastGoodSequence: last?.sequence ?? null }, 'federated bundle refresh refused; keeping the last good bundle');
      this.schedule(td, delay);
      throw err;
    }
    if (next === undefined || lost || signal.aborted) return this.superseded(td, signal, rel.generation);
    if (changed) {
      if (wrote) {
        this.bundleStored(td, next, 'fetched from the bundle endpoint');
        this.metrics.changes.inc({ trust_domain: td });
      }
      this.metrics.refreshes.inc({ trust_domain: td, result: 'ok' });
    } else {
      this.metrics.refreshes.inc({ trust_domain: td, result: 'unchanged' });
      this.o.logger.debug({ trustDomain: td, sequence: next.sequence }, 'federated bundle unchanged');
    }
    st.lastSuccessAt = this.o.now().toISOString();
    st.consecutiveFailures = 0;
    delete st.lastError;
    this.schedule(td, this.regularDelaySeconds(next.refreshHintSeconds) * 1000);
    return this.view(rel);
  }

  private async view(r: FederationRelationship): Promise<RelationshipView> {
    const b = await this.o.store.getFederatedBundle(r.trustDomain);
    let x = 0;
    let j = 0;
    if (b) {
      const parsed = JSON.parse(b.bundle) as { keys?: { use?: string }[] };
      for (const k of parsed.keys ?? []) {
        if (k.use === 'x509-svid') x++;
        else if (k.use === 'jwt-svid') j++;
      }
    }
    // The generation is the datastore's fencing token, not part of the admin API.
    const { generation: _generation, ...fields } = r;
    return {
      ...fields,
      bundleSequence: b ? b.sequence : null,
      bundleUpdatedAt: b ? b.updatedAt : null,
      x509Authorities: x,
      jwtAuthorities: j,
      declaredInConfig: this.declared.has(r.trustDomain),
      refresh: { ...this.statusOf(r.trustDomain) },
    };
  }
}
