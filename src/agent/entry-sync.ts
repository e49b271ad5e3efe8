/**
 * Keeps the SVID cache in step with the verifier. Two loops share the work:
 *
 * The long-poll (`GET /v1/entries/authorized?wait=N`, docs/api.md) is the entries sync while it is
 * healthy: the verifier holds it until this agent's authorized set changes (200 with the new set,
 * typically milliseconds after the admin write) or the wait is over (304). Either answer is a
 * completed sync: it names the verifier's bundle ETag, and the bundle (GET /v1/bundle) is fetched
 * when that is not the held bundle's; a new set is cached and its SVIDs issued at once. The wait
 * asked is min(longPollSeconds, the bundle's `spiffe_refresh_hint`), so a CA rotation's new bundle
 * ETag reaches the agent within one hint even when nothing else changes. The long-poll is healthy
 * from an answer "as designed" (a 200, or a 304 held at least LONG_POLL_HELD_MS — half the wait when
 * that is shorter) until the next answer is overdue (wait + min(LONG_POLL_MARGIN_MS, wait / 4)); it is not healthy
 * before the first such answer, after a failure or a refusal (`entries.long_poll_disabled`,
 * `entries.wait_limit`, `entries.agent_wait_limit`: asked again after LONG_POLL_RETRY_MS), or when
 * the verifier answers at once without holding (a verifier that does not know `wait`).
 *
 * The periodic cycle runs every `syncInterval` (2 s by default; never later than the bundle's refresh
 * hint, and earlier when an SVID's rotation point comes first) and
 *   1. only while the long-poll is not healthy: fetches the authorized entries (GET
 *      /v1/entries/authorized with If-None-Match, so an unchanged set costs a 304) and refreshes the
 *      bundle when the answer names another ETag (every cycle against a verifier that names none);
 *   2. fetches the foreign bundles of federated trust domains, when the node has entries that
 *      federate (and once more after the last of them went away, to drop those bundles);
 *   3. makes a P-256 key and CSR in the agent for every entry that has no SVID or whose SVID is due
 *      for rotation, and has them signed in batches of at most 500 (POST /v1/svid/x509), verifying
 *      every returned chain against the bundle before caching it.
 * So an agent whose set does not change sends one request per wait (20 s) on one keep-alive
 * connection, and a change reaches workloads in well under a second; when the long-poll fails the
 * entries are fetched again within one interval, as before it existed. Both kinds of request go
 * through the client's one connection pool, so they share one connection when not concurrent.
 *
 * Both loops can have an entries request in flight at once, so an answer is adopted only if the
 * revision held was not written (by the other loop's answer, or by a reset to no revision) since its
 * request was sent: otherwise an older set could replace a newer one. A dropped answer leaves the
 * revision as written, so the next request of either loop asks for whatever differs from it.
 *
 * The verifier publishes a successor CA two hints before it signs anything with it, so the agent
 * holds it in time however short ca.ttl is. Without a valid node SVID the bundle is still refreshed
 * every cycle (GET /v1/bundle needs no client certificate), so an agent waiting to attest again
 * keeps trusting the verifier across its CA rotations. When the verifier is unreachable the cache is
 * left as it is (still-valid SVIDs keep being served) and retries back off with full jitter.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { SigilError, asSigilError, errorMessage } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { parseCertificate } from '../spiffe/cert.js';
import { createCsr } from '../spiffe/csr.js';
import { spkiDer } from '../spiffe/keys.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { REATTEST_CODES, newP256Key, type NodeIdentity } from './node-attestation.js';
import type { SvidCache } from './svid-cache.js';
import type { TrustStore } from './trust.js';
import type { AuthorizedEntry, VerifierClient } from './verifier-client.js';
import { WakeableSleep } from './sleeper.js';

export const X509_BATCH = 500;
/** Seconds a long-poll asks the verifier to hold it (the verifier caps it at its longPoll.maxWait). */
export const LONG_POLL_SECONDS = 20;
/** Pause before a refused long-poll (or one a verifier keeps answering at once) is tried again, ms. */
export const LONG_POLL_RETRY_MS = 30_000;
/** A 304 held at least this long (or half the wait, if shorter) was held by the verifier as designed, ms. */
export const LONG_POLL_HELD_MS = 1000;
/**
 * The long-poll stops counting as the sync when its answer is later than the wait asked by this
 * much, ms — or by a quarter of the wait when that is less, so that with a short bundle refresh hint
 * (the wait) a stalled long-poll still hands the bundle refresh back to the cycle well within the two
 * hints the verifier leaves between publishing a CA and signing with it.
 */
export const LONG_POLL_MARGIN_MS = 5000;
/** The verifier's refusals of a long-poll (the plain sync still works). */
const LONG_POLL_REFUSALS = new Set(['entries.long_poll_disabled', 'entries.wait_limit', 'entries.agent_wait_limit']);

export interface EntrySyncOptions {
  trustDomain: string;
  client: VerifierClient;
  cache: SvidCache;
  node: NodeIdentity;
  trust: TrustStore;
  logger: Logger;
  now: () => Date;
  intervalMs: number;
  backoff?: BackoffOptions;
  /** Seconds each long-poll asks to be held at most (default LONG_POLL_SECONDS; shortened to the bundle's refresh hint); 0: no long-poll, periodic sync only. */
  longPollSeconds?: number;
  /** Fetch and adopt the foreign bundles the node's entries federate with (SPIFFE Federation; src/federation/). */
  federation?: () => Promise<void>;
}

export class EntrySync {
  /** Revision of the authorized set held (If-None-Match of the next entries request); written only through setRevision. */
  private revision: string | undefined;
  /** Writes of `revision`: an entries answer is adopted only if none happened since its request was sent. */
  private revisionWrites = 0;
  /** ETag of the bundle last fetched from the verifier, and the trust store's bundle it matched. */
  private bundleEtag: { etag: string; held: SpiffeBundle } | undefined;
  private agentId: string | undefined;
  private closed = false;
  private running: Promise<void> | undefined;
  private readonly sleeper = new WakeableSleep();
  private readonly backoff: Backoff;
  private cycleP: Promise<void> | undefined;
  private lastOk: Date | undefined;
  private lastError: SigilError | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly pushSleeper = new WakeableSleep();
  private readonly pushAbort = new AbortController();
  private pushing: Promise<void> | undefined;
  /** The long-poll waits for the first synced revision (woken by the cycle that sets it). */
  private pushIdle = false;
  private pushes = 0;
  /** Real-clock ms until which the long-poll carries the entries sync (0: it does not). */
  private pushHealthyUntil = 0;
  /** Entries fetched by the periodic cycle (while the long-poll was not healthy). */
  private fetches = 0;
  /** Whether the last set had entries that federate (foreign bundles are fetched while it did, and once after). */
  private federating = true;
  /** Whether the last set received has entries that federate. */
  private setFederates = false;

  constructor(private readonly o: EntrySyncOptions) {
    this.backoff = new Backoff(o.backoff);
  }

  /** How many changed sets the long-poll has delivered. */
  pushedChanges(): number {
    return this.pushes;
  }

  /** How many times the periodic cycle fetched the entries itself (the long-poll was not healthy). */
  periodicFetches(): number {
    return this.fetches;
  }

  /** Whether the held long-poll currently carries the entries sync. */
  longPollHealthy(): boolean {
    return Date.now() < this.pushHealthyUntil;
  }

  start(): void {
    this.unsubscribe = this.o.node.onIdentity((s) => {
      if (s.agentId !== this.agentId) {
        // A new agent ID (re-attested with another token or factor) may be authorized for other entries.
        this.agentId = s.agentId;
        this.setRevision(undefined);
        this.pushHealthyUntil = 0;
        this.wake();
      }
    });
    this.running = this.loop();
    if ((this.o.longPollSeconds ?? LONG_POLL_SECONDS) > 0) this.pushing = this.pushLoop();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    this.wake();
    this.pushAbort.abort();
    this.pushSleeper.wake();
    await this.running;
    await this.pushing;
  }

  /** Time of the last fully successful cycle. */
  lastSuccess(): Date | undefined {
    return this.lastOk;
  }

  error(): SigilError | undefined {
    return this.lastError;
  }

  /**
   * Run a cycle now (or join the one running) and wait for it. Errors propagate. The cycle fetches
   * the entries unless `fetch` is false (the long-poll just delivered them) or, by default, while
   * the long-poll is healthy.
   */
  syncNow(fetch: boolean = !this.longPollHealthy()): Promise<void> {
    if (!this.cycleP) this.cycleP = this.cycle(fetch).finally(() => (this.cycleP = undefined));
    return this.cycleP;
  }

  wake(): void {
    this.sleeper.wake();
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return this.sleeper.sleep(ms);
  }

  /** The sync interval, shortened to the bundle's refresh hint when that is shorter. */
  private interval(): number {
    const hint = this.o.trust.bundle().refreshHintSeconds;
    return hint !== undefined && hint > 0 ? Math.min(this.o.intervalMs, hint * 1000) : this.o.intervalMs;
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      // The pace is read after the work: the bundle just fetched may carry a shorter refresh hint.
      let delay: number | undefined;
      if (!this.o.node.current()) {
        try {
          await this.refreshBundle();
        } catch (e) {
          if (this.closed) break;
          const err = asSigilError(e, 'agent.sync_failed', 'bundle refresh');
          if (err.code === 'agent.verifier_untrusted') this.o.node.trustFailure(err);
          this.o.logger.debug({ code: err.code, reason: err.message }, 'bundle refresh without a node SVID failed');
        }
      } else {
        const generation = this.o.node.generation();
        try {
          await this.syncNow();
          this.backoff.reset();
          this.lastError = undefined;
          const next = this.o.cache.nextRotation();
          if (next) {
            const untilRotation = next.getTime() - this.o.now().getTime();
            // A rotation point already passed means its re-issue failed; retry at the normal pace.
            if (untilRotation > 0) delay = Math.min(this.interval(), untilRotation);
          }
        } catch (e) {
          if (this.closed) break;
          delay = this.onError(asSigilError(e, 'agent.sync_failed', 'entry sync'), generation);
        }
      }
      await this.sleep(delay ?? this.interval());
    }
  }

  /** The wait each long-poll asks: longPollSeconds, at most the bundle's refresh hint (at least 1 s). */
  private pushWaitSeconds(): number {
    const hint = this.o.trust.bundle().refreshHintSeconds;
    const w = this.o.longPollSeconds ?? LONG_POLL_SECONDS;
    return Math.max(1, Math.floor(hint !== undefined && hint > 0 ? Math.min(w, hint) : w));
  }

  /** The long-poll stops carrying the sync: the periodic cycle fetches the entries again. */
  private pushUnhealthy(): void {
    this.pushHealthyUntil = 0;
  }

  /** Hold a long-poll for changes of the authorized set; while it is answered as designed it is the entries sync. */
  private async pushLoop(): Promise<void> {
    let refusalLogged = false;
    let early = 0;
    while (!this.closed) {
      const revision = this.revision;
      const writes = this.revisionWrites;
      if (!this.o.node.current() || revision === undefined) {
        this.pushUnhealthy();
        this.pushIdle = true;
        await this.pushSleeper.sleep(this.interval());
        this.pushIdle = false;
        continue;
      }
      const waitSeconds = this.pushWaitSeconds();
      const started = Date.now();
      let pause = 0;
      try {
        const r = await this.o.client.waitEntries(revision, waitSeconds, this.pushAbort.signal);
        if (this.closed) break;
        const held = Date.now() - started;
        if (r.set !== undefined || held >= Math.min(LONG_POLL_HELD_MS, (waitSeconds * 1000) / 2)) {
          early = 0;
          // A completed sync: the bundle first (SVIDs of a new set are verified against it).
          await this.bundleAsNamed(r.bundleEtag);
          // Unless the revision was written while the poll was held: the periodic fetch adopted a set
          // (this answer may be older), or it was reset (a new agent ID). The next poll asks from it.
          if (this.revisionWrites === writes) {
            if (r.set !== undefined) await this.applyPushed(r.set);
            const next = this.pushWaitSeconds() * 1000;
            this.pushHealthyUntil = Date.now() + next + Math.min(LONG_POLL_MARGIN_MS, next / 4);
          }
        } else {
          // Answered at once without holding (a verifier that does not know `wait`): the periodic
          // sync carries on; asked again after an interval, after LONG_POLL_RETRY_MS if it repeats.
          this.pushUnhealthy();
          early++;
          pause = early > 1 ? LONG_POLL_RETRY_MS : this.interval();
          if (early === 2) this.o.logger.info({ retryInMs: LONG_POLL_RETRY_MS }, 'verifier answers the entries long-poll without holding it; entries are fetched every sync interval');
        }
      } catch (e) {
        this.pushUnhealthy();
        if (this.closed) break;
        const err = asSigilError(e, 'agent.sync_failed', 'entry long-poll');
        if (LONG_POLL_REFUSALS.has(err.code)) {
          if (!refusalLogged) this.o.logger.info({ code: err.code, reason: err.message, retryInMs: LONG_POLL_RETRY_MS }, 'verifier refused the entries long-poll; entries are fetched every sync interval');
          refusalLogged = true;
          pause = LONG_POLL_RETRY_MS;
        } else {
          // The periodic cycle, fetching again, meets (reports and acts on) the same failure; an
          // eviction, a ban or an untrusted verifier is acted on now rather than within an interval.
          this.o.logger.debug({ code: err.code, reason: err.message }, 'entries long-poll failed; entries are fetched every sync interval');
          if (REATTEST_CODES.has(err.code) || err.code === 'agent.banned' || err.code === 'agent.verifier_untrusted') this.wake();
          pause = this.interval();
        }
      }
      if (pause > 0) await this.pushSleeper.sleep(pause);
    }
  }

  private async applyPushed(r: { entries: AuthorizedEntry[]; revision: string }): Promise<void> {
    this.pushes++;
    if (this.adoptEntries(r.entries, 'authorized entries changed (pushed)')) this.o.cache.notify();
    this.setRevision(r.revision);
    try {
      // Issue the new entries' SVIDs now, without fetching the set just delivered.
      await this.syncNow(false);
      if (this.o.cache.dueForIssue(this.o.now()).length > 0) await this.syncNow(false);
    } catch (e) {
      this.o.logger.debug({ reason: errorMessage(e) }, 'sync after a pushed change failed; the periodic sync retries');
    }
  }

  /** Cache a new set (notifying Workload API streams when it differs); returns whether it did. */
  private adoptEntries(entries: AuthorizedEntry[], msg: string): boolean {
    this.setFederates = entries.some((e) => (e.federatesWith?.length ?? 0) > 0);
    this.federating ||= this.setFederates;
    if (!this.o.cache.setEntries(entries)) return false;
    this.o.logger.info({ entries: entries.length }, msg);
    return true;
  }

  /** Write the revision held; entries answers to requests sent before are dropped (see cycle and pushLoop). */
  private setRevision(revision: string | undefined): void {
    this.revision = revision;
    this.revisionWrites++;
  }

  /** Refresh the bundle when an entries answer names another ETag than the held bundle's (or none). */
  private async bundleAsNamed(bundleEtag: string | undefined): Promise<void> {
    if (bundleEtag === undefined || this.heldBundleEtag() !== bundleEtag) await this.refreshBundle();
  }

  private onError(err: SigilError, generation: number): number {
    const interval = this.interval();
    this.lastError = err;
    if (REATTEST_CODES.has(err.code)) {
      this.o.node.invalidate(err, generation);
      return interval;
    }
    if (err.code === 'agent.verifier_untrusted') {
      this.o.node.trustFailure(err);
      return interval;
    }
    if (err.code === 'svid.entry_not_authorized') {
      // The entry went away between listing and signing: fetch the full list again next cycle.
      this.setRevision(undefined);
      this.o.logger.info({ reason: err.message }, 'entry no longer authorized; refreshing entries');
      return interval;
    }
    const delay = Math.max(interval, this.backoff.next());
    const level = err.code === 'agent.verifier_unreachable' ? 'warn' : 'error';
    this.o.logger[level]({ code: err.code, reason: err.message, retryInMs: delay, failures: this.backoff.failures() }, 'entry sync failed; serving cached SVIDs');
    return delay;
  }

  private async cycle(fetch: boolean): Promise<void> {
    const { client, cache } = this.o;
    let changed = false;
    if (fetch) {
      for (;;) {
        this.fetches++;
        // 1. entries; the answer names the verifier's current bundle ETag
        const sent = this.revision;
        const writes = this.revisionWrites;
        const { set: r, bundleEtag } = await client.syncEntries(sent);
        // 2. bundle (TrustStore listeners rebuild the cache's bundle views and notify on change), fetched
        //    only when the named ETag is not that of the bundle held (or not named: an older verifier).
        //    The bundle is current before any SVID of this cycle is verified against it (step 3).
        await this.bundleAsNamed(bundleEtag);
        if (this.revisionWrites === writes) {
          if (r) {
            if (this.adoptEntries(r.entries, 'authorized entries changed')) changed = true;
            this.setRevision(r.revision);
            if (this.pushIdle) this.pushSleeper.wake();
          }
          break;
        }
        // The revision was written while this fetch was pending, and the answer is dropped: after a
        // set adopted from the long-poll it may be the older one and would put it back (if it is the
        // newer, the next long-poll, asking from the revision held, gets it); after a reset (a new
        // agent ID) it may be the previous agent's.
        this.o.logger.debug({ sent, held: this.revision }, 'entries fetched by the periodic sync dropped: the revision changed while the fetch was pending');
        // After a reset the full set is fetched again now: the long-poll waits for a revision, and the
        // wake() of the reset came while this cycle ran.
        if (this.revision !== undefined || this.closed || !this.o.node.current()) break;
      }
    }
    // 2b. foreign bundles of federated trust domains (every cycle while entries federate: they change
    //     without any entry change; once more after the last such entry went away, to drop them)
    if (this.federating && this.o.federation) {
      await this.o.federation();
      this.federating = this.setFederates;
    }
    // 3. X.509-SVIDs for new entries and rotations
    const due = cache.dueForIssue(this.o.now());
    try {
      for (let i = 0; i < due.length; i += X509_BATCH) {
        const n = await this.issue(due.slice(i, i + X509_BATCH));
        if (n > 0) {
          changed = false;
          cache.notify();
        }
      }
    } finally {
      if (changed) cache.notify();
    }
    this.lastOk = this.o.now();
  }

  /** ETag of the bundle last fetched, while the trust store still holds that very bundle (attestation and renewal adopt bundles too). */
  private heldBundleEtag(): string | undefined {
    return this.bundleEtag !== undefined && this.bundleEtag.held === this.o.trust.bundle() ? this.bundleEtag.etag : undefined;
  }

  /** Fetch the verifier's bundle; adopt it (and trust it for TLS) when it changed. */
  private async refreshBundle(): Promise<void> {
    const { client, trust } = this.o;
    // Conditional on the ETag of the bundle last adopted: an unchanged bundle is a 304.
    const held = this.heldBundleEtag();
    const r = await client.bundleIfChanged(held);
    if (r === undefined) return;
    this.bundleEtag = undefined;
    if (trust.update(r.jwks)) client.setTrust(trust.bundle().x509Authorities);
    if (r.etag !== undefined) this.bundleEtag = { etag: r.etag, held: trust.bundle() };
  }

  /** Make keys + CSRs for `batch`, have them signed, verify and cache. Returns how many were stored. */
  private async issue(batch: AuthorizedEntry[]): Promise<number> {
    const { client, cache, logger, trustDomain } = this.o;
    const keys = await Promise.all(batch.map(() => newP256Key()));
    const byEntry = new Map(batch.map((e, i) => [e.id, { entry: e, key: keys[i] as { privateKey: KeyObject; publicKey: KeyObject } }]));
    const issued = await client.signX509(batch.map((e, i) => ({ entryId: e.id, csr: createCsr(keys[i] as { privateKey: KeyObject }) })));
    const now = this.o.now();
    const authorities = this.o.trust.bundle().x509Authorities;
    let stored = 0;
    for (const s of issued) {
      const want = byEntry.get(s.entryId);
      if (!want) {
        logger.error({ entryId: s.entryId }, 'verifier returned an SVID for an entry not asked for; ignored');
        continue;
      }
      try {
        const v = verifyX509Svid(s.chain, (td) => (td === trustDomain ? authorities : undefined), now);
        if (v.spiffeId.toString() !== want.entry.spiffeId) throw new SigilError('agent.bad_svid', `SVID is for ${v.spiffeId.toString()}, entry is ${want.entry.spiffeId}`);
        const leaf = parseCertificate(v.leafDer);
        if (!leaf.spki.equals(spkiDer(want.key.publicKey))) throw new SigilError('agent.bad_svid', 'SVID does not carry the key the agent made');
        cache.putSvid(want.entry, s.chain, want.key.privateKey, leaf.notBefore, v.notAfter, now);
        stored++;
      } catch (e) {
        const err = asSigilError(e, 'agent.bad_svid', 'issued SVID');
        logger.error({ entryId: s.entryId, code: err.code, reason: err.message }, 'verifier issued an SVID that does not verify; not served');
      }
    }
    if (stored > 0) logger.debug({ count: stored }, 'X.509-SVIDs issued');
    return stored;
  }
}
