/**
 * The trust domain CA (DESIGN §6): X.509 CA and JWT signing keys with SPIRE's rotation rhythm.
 * A successor is prepared at half the active key's life (and published in the bundle at once, so
 * relying parties learn it before it signs anything) and activated at five sixths, but never less
 * than `publishLeadMs` (a sixth of ca.ttl, two bundle refresh hints) after it was published; the
 * old key stays in the bundle until it expires. Keys are PKCS#8 files (0600) in dataDir/keys; the
 * journal of slots lives in the datastore. Time comes from the injected clock, so rotation is
 * testable; `start()` runs each step at its exact time (`nextEventAt()`), looking at the clock
 * again at least every `MAX_TIMER_WAIT_MS` so that a wall-clock jump is noticed.
 */
import { randomUUID, createHash, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, errorMessage, errorFields } from '../errors.js';
import type { CaJournal, CaSlot, DataStore, JwtKeySlot } from '../store/types.js';
import { generateKey, loadPrivateKeyPkcs8, publicKeyOf, readSecretFile, savePrivateKeyPkcs8, spkiDer, type KeyType } from '../spiffe/keys.js';
import { issueCaCertificate, issueX509Svid, signingCertificateProblem } from '../spiffe/x509svid.js';
import { pemToDers } from '../x509/pem.js';
import { mintJwtSvid } from '../spiffe/jwtsvid.js';
import { SpiffeBundle } from '../spiffe/bundle.js';
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';

export interface CaOptions {
  /** This verifier's instance id: its journal in a shared datastore (each verifier has its own CA keys). */
  instance: string;
  trustDomain: string;
  dataDir: string;
  keyType: KeyType;
  jwtKeyType: KeyType;
  ttlSeconds: number;
  upstream?: { cert: string; key: string };
  now: () => Date;
  logger: Logger;
}

interface Upstream {
  key: KeyObject;
  /** Upstream signing certificate first, its chain after; the last one is the root published in the bundle. */
  chain: Buffer[];
  notAfter: Date;
}

/** Longest the rotation timer sleeps before reading the clock again (a wall-clock jump is noticed within this). */
export const MAX_TIMER_WAIT_MS = 5_000;
/** Longest interval between re-reads of the other verifiers' journals while the timer runs. */
export const MAX_PEER_REFRESH_MS = 10_000;

/** A rotation step that happened, as `advance` reports it. */
interface RotationEvent<S> {
  kind: 'made_active' | 'prepared' | 'activated' | 'dropped';
  slot: S;
  /** For `activated`: how long the new key had been published (ms). */
  publishedForMs?: number;
  /** For `prepared`: when it will be activated (ms since the epoch). */
  activatesAt?: number;
}

interface LoadedX509 {
  slot: CaSlot;
  key: KeyObject;
  certDer: Buffer;
  /** Certificates to send after the leaf: under an upstream CA, this CA then the upstream chain without the root; nothing for a self-signed CA. */
  chainTail: Buffer[];
}

interface LoadedJwt {
  slot: JwtKeySlot;
  key: KeyObject;
  publicKey: KeyObject;
}

export class CertificateAuthority {
  private journal: CaJournal = { x509: [], jwt: [], sequence: 0 };
  private x509Keys = new Map<string, LoadedX509>();
  private jwtKeys = new Map<string, LoadedJwt>();
  private upstream: Upstream | undefined;
  private readonly keysDir: string;
  private cachedBundle: SpiffeBundle | undefined;
  private listeners = new Set<() => void>();
  /** Journals of the other verifiers sharing the datastore (their CAs are in the bundle too). */
  private peers: { instance: string; journal: CaJournal }[] = [];
  private peersKey = '';
  private timer: NodeJS.Timeout | undefined;
  /** The timer's step under way, if any (stop() waits for it). */
  private stepping: Promise<void> | undefined;
  private stopped = false;
  private nextPeerRefresh = 0;
  /** When the verifier's own server SVID (the last one signed) reaches half its life; listeners are told then. */
  private serverSvidRefreshAt: number | undefined;

  constructor(
    private readonly store: DataStore,
    private readonly opts: CaOptions,
  ) {
    this.keysDir = join(opts.dataDir, 'keys');
  }

  /**
   * Subscribe to bundle/active-key changes (e.g. to refresh the TLS certificate). While the timer
   * runs (`start()`), listeners are also called when the last SVID signed for the verifier's own ID
   * (`spiffe://<td>/sigil/verifier`, its server certificate) reaches half its life, so that
   * certificate is replaced in time even when it lives only seconds (ca.ttl 60s).
   */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async init(): Promise<void> {
    mkdirSync(this.keysDir, { recursive: true, mode: 0o700 });
    if (this.opts.upstream) this.upstream = loadUpstream(this.opts.upstream, this.opts.now());
    const j = await this.store.loadCaJournal(this.opts.instance);
    if (j) {
      this.journal = { x509: j.x509, jwt: j.jwt, sequence: j.sequence ?? 0 };
      for (const slot of this.journal.x509) this.loadX509(slot);
      for (const slot of this.journal.jwt) this.loadJwt(slot);
    }
    if (this.upstream) this.journal.upstreamRoot = (this.upstream.chain[this.upstream.chain.length - 1] as Buffer).toString('base64');
    await this.rotate();
    await this.refreshPeers();
  }

  /**
   * Re-read the other verifiers' journals from the shared datastore. Returns true when what they
   * publish changed (then the bundle and the TLS trust list change too).
   */
  async refreshPeers(): Promise<boolean> {
    const all = await this.store.listCaJournals();
    const peers = all.filter((p) => p.instance !== this.opts.instance);
    const key = JSON.stringify(all.filter((p) => p.instance !== this.opts.instance).map((p) => [p.instance, p.journal.sequence]));
    if (key === this.peersKey) return false;
    this.peers = peers;
    this.peersKey = key;
    this.cachedBundle = undefined;
    this.notify();
    return true;
  }

  /** Tell listeners; they re-sign the server SVID, which sets its next refresh point again. */
  private notify(): void {
    this.serverSvidRefreshAt = undefined;
    for (const fn of this.listeners) fn();
  }

  private loadX509(slot: CaSlot): void {
    const path = join(this.keysDir, slot.keyFile);
    if (!existsSync(path)) {
      throw new SigilError('ca.key_missing', `CA key file ${path} for CA ${slot.id} is missing; restore dataDir/keys from backup or move dataDir aside to start a new CA`, { status: 500 });
    }
    const certDer = Buffer.from(slot.certDer, 'base64');
    // A self-signed CA is a root: relying parties have it in the bundle, so it is not sent in chains.
    const chainTail = slot.upstreamChain.length > 0 || this.upstream ? [certDer, ...slot.upstreamChain.map((c) => Buffer.from(c, 'base64'))] : [];
    this.x509Keys.set(slot.id, { slot, key: loadPrivateKeyPkcs8(path), certDer, chainTail });
  }

  private loadJwt(slot: JwtKeySlot): void {
    const path = join(this.keysDir, slot.keyFile);
    if (!existsSync(path)) {
      throw new SigilError('ca.key_missing', `JWT key file ${path} (kid ${slot.kid}) is missing`, { status: 500 });
    }
    this.jwtKeys.set(slot.kid, {
      slot,
      key: loadPrivateKeyPkcs8(path),
      publicKey: createPublicKey({ key: Buffer.from(slot.publicKey, 'base64'), format: 'der', type: 'spki' }),
    });
  }

  private newX509Slot(state: CaSlot['state']): CaSlot {
    const now = this.opts.now();
    const id = randomUUID();
    const kp = generateKey(this.opts.keyType);
    let notAfter = new Date(now.getTime() + this.opts.ttlSeconds * 1000);
    let certDer: Buffer;
    let upstreamChain: Buffer[] = [];
    const notBefore = new Date(now.getTime() - 30_000); // tolerate small clock skew at relying parties
    if (this.upstream) {
      if (this.upstream.notAfter.getTime() < notAfter.getTime()) notAfter = this.upstream.notAfter;
      if (notAfter.getTime() <= now.getTime()) {
        throw new SigilError('ca.upstream_expired', 'the upstream CA certificate has expired; install a new one (ca.upstream.cert)', { status: 500 });
      }
      certDer = issueCaCertificate({
        subjectKey: kp.publicKey,
        signerKey: this.upstream.key,
        issuerCertDer: this.upstream.chain[0],
        trustDomain: this.opts.trustDomain,
        commonName: `Sigil CA ${this.opts.trustDomain}`,
        notBefore,
        notAfter,
        pathLen: 0,
      });
      upstreamChain = this.upstream.chain.slice(0, -1);
    } else {
      certDer = issueCaCertificate({
        subjectKey: kp.publicKey,
        signerKey: kp.privateKey,
        trustDomain: this.opts.trustDomain,
        commonName: `Sigil CA ${this.opts.trustDomain}`,
        notBefore,
        notAfter,
        pathLen: 0,
      });
    }
    const keyFile = `x509-${id}.pem`;
    savePrivateKeyPkcs8(join(this.keysDir, keyFile), kp.privateKey);
    const slot: CaSlot = {
      id,
      keyType: this.opts.keyType,
      certDer: certDer.toString('base64'),
      upstreamChain: upstreamChain.map((c) => c.toString('base64')),
      keyFile,
      notBefore: now.toISOString(),
      notAfter: notAfter.toISOString(),
      state,
    };
    this.x509Keys.set(id, { slot, key: kp.privateKey, certDer, chainTail: this.upstream ? [certDer, ...upstreamChain] : [] });
    this.opts.logger.info({ caId: id, state, notAfter: slot.notAfter }, 'made X.509 CA');
    return slot;
  }

  private newJwtSlot(state: JwtKeySlot['state']): JwtKeySlot {
    const now = this.opts.now();
    const kp = generateKey(this.opts.jwtKeyType);
    const pub = spkiDer(kp.publicKey);
    const kid = createHash('sha256').update(pub).digest('base64url').slice(0, 32);
    const keyFile = `jwt-${kid}.pem`;
    savePrivateKeyPkcs8(join(this.keysDir, keyFile), kp.privateKey);
    let notAfter = new Date(now.getTime() + this.opts.ttlSeconds * 1000);
    if (this.upstream && this.upstream.notAfter.getTime() < notAfter.getTime()) notAfter = this.upstream.notAfter;
    const slot: JwtKeySlot = { kid, keyType: this.opts.jwtKeyType, keyFile, publicKey: pub.toString('base64'), notBefore: now.toISOString(), notAfter: notAfter.toISOString(), state };
    this.jwtKeys.set(kid, { slot, key: kp.privateKey, publicKey: kp.publicKey });
    this.opts.logger.info({ kid, state, notAfter: slot.notAfter }, 'made JWT signing key');
    return slot;
  }

  /**
   * Advance the rotation state machine to the injected clock's now. Returns true when anything
   * changed (the journal is then saved before returning, so a crash never loses a key in use).
   * Each preparation and activation is logged at info.
   */
  async rotate(): Promise<boolean> {
    const now = this.opts.now().getTime();
    const lead = this.publishLeadMs();
    const ex = advance(this.journal.x509, now, lead, (st) => this.newX509Slot(st), (s) => this.dropX509(s));
    const ej = advance(this.journal.jwt, now, lead, (st) => this.newJwtSlot(st), (s) => this.dropJwt(s));
    if (ex.length === 0 && ej.length === 0) return false;
    this.journal.sequence += 1;
    this.cachedBundle = undefined;
    await this.store.saveCaJournal(this.opts.instance, this.journal);
    this.logEvents('X.509 CA', ex, (s) => ({ caId: s.id }));
    this.logEvents('JWT signing key', ej, (s) => ({ kid: s.kid }));
    this.notify();
    return true;
  }

  private logEvents<S extends { notBefore: string; notAfter: string }>(what: string, events: RotationEvent<S>[], id: (s: S) => Record<string, string>): void {
    const log = this.opts.logger;
    for (const e of events) {
      const base = { ...id(e.slot), notAfter: e.slot.notAfter, sequence: this.journal.sequence };
      if (e.kind === 'prepared') {
        log.info({ ...base, activatesAt: new Date(e.activatesAt as number).toISOString() }, `prepared the successor ${what} (published in the bundle now)`);
      } else if (e.kind === 'activated') {
        const published = e.publishedForMs as number;
        if (published < this.publishLeadMs()) {
          // Only after downtime: the active key expired before its successor had been published long enough.
          log.warn({ ...base, publishedForMs: published, wantedMs: this.publishLeadMs() }, `activated the successor ${what} before agents could have fetched it (the previous one expired)`);
        } else {
          log.info({ ...base, publishedForMs: published }, `activated the successor ${what}`);
        }
      } else if (e.kind === 'made_active') {
        log.info(base, `made a new active ${what} (no usable one was held)`);
      }
    }
  }

  /**
   * How long a successor is published in the bundle before it may sign anything: a sixth of
   * ca.ttl, i.e. two bundle refresh hints, so every agent and every peer verifier refreshing at
   * the hint (see `refreshHintSeconds`) holds it first. The nominal gap (5/6 − 1/2 of the life) is
   * twice this.
   */
  publishLeadMs(): number {
    return (this.opts.ttlSeconds * 1000) / 6;
  }

  /** The bundle refresh hint: a twelfth of ca.ttl (5 s at the minimum 60s, 2 h at 24h). */
  refreshHintSeconds(): number {
    return Math.max(1, Math.floor(this.opts.ttlSeconds / 12));
  }

  /**
   * When the next rotation step is due (ms since the epoch): a preparation, an activation, a key
   * expiring, or (timer running) the verifier's server SVID reaching half life. `now` when a step
   * is already due.
   */
  nextEventAt(): number {
    const now = this.opts.now().getTime();
    const lead = this.publishLeadMs();
    let next = Math.min(dueAt(this.journal.x509, now, lead), dueAt(this.journal.jwt, now, lead));
    if (this.serverSvidRefreshAt !== undefined) next = Math.min(next, this.serverSvidRefreshAt);
    return Math.max(now, next);
  }

  /**
   * Run rotation steps at their exact times until `stop()`. Each wake-up runs `rotate()`, re-reads
   * the other verifiers' journals when due (every half refresh hint, at most `MAX_PEER_REFRESH_MS`) and tells listeners when the server SVID is due; errors are logged
   * and the timer goes on.
   */
  start(): void {
    if (this.timer || this.stopped) return;
    this.nextPeerRefresh = this.opts.now().getTime() + this.peerRefreshMs();
    this.arm();
  }

  /** Stops the timer; resolves once a step under way has ended (it must not run on into a closed datastore). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.stepping;
  }

  /** Half a refresh hint (at most 10 s): a peer's successor reaches agents within 1.5 hints < `publishLeadMs`. */
  private peerRefreshMs(): number {
    return Math.min(MAX_PEER_REFRESH_MS, (this.refreshHintSeconds() * 1000) / 2);
  }

  private arm(): void {
    if (this.stopped) return;
    const now = this.opts.now().getTime();
    const due = Math.min(this.nextEventAt(), this.nextPeerRefresh);
    const wait = Math.max(0, Math.min(due - now, MAX_TIMER_WAIT_MS));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.stepping = this.onTimer()
        .catch((e: unknown) => this.opts.logger.error(errorFields(e), 'CA rotation step failed; retrying'))
        .finally(() => {
          this.stepping = undefined;
          this.arm();
        });
    }, wait);
    this.timer.unref();
  }

  private async onTimer(): Promise<void> {
    if (this.stopped) return;
    const rotated = await this.rotate();
    const now = this.opts.now().getTime();
    // A clock that jumped back leaves the next refresh far ahead: never wait longer than the pace.
    if (now >= this.nextPeerRefresh || this.nextPeerRefresh - now > this.peerRefreshMs()) {
      this.nextPeerRefresh = now + this.peerRefreshMs();
      await this.refreshPeers();
    }
    if (!rotated && this.serverSvidRefreshAt !== undefined && now >= this.serverSvidRefreshAt) {
      this.notify();
    }
  }

  private dropX509(s: CaSlot): void {
    this.x509Keys.delete(s.id);
    rmSync(join(this.keysDir, s.keyFile), { force: true });
    this.opts.logger.info({ caId: s.id }, 'dropped expired X.509 CA');
  }

  private dropJwt(s: JwtKeySlot): void {
    this.jwtKeys.delete(s.kid);
    rmSync(join(this.keysDir, s.keyFile), { force: true });
    this.opts.logger.info({ kid: s.kid }, 'dropped expired JWT key');
  }

  private activeX509(): LoadedX509 {
    const slot = this.journal.x509.find((s) => s.state === 'active');
    const loaded = slot && this.x509Keys.get(slot.id);
    if (!loaded) throw new SigilError('ca.not_ready', 'no active X.509 CA', { status: 503 });
    return loaded;
  }

  private activeJwt(): LoadedJwt {
    const slot = this.journal.jwt.find((s) => s.state === 'active');
    const loaded = slot && this.jwtKeys.get(slot.kid);
    if (!loaded) throw new SigilError('ca.not_ready', 'no active JWT signing key', { status: 503 });
    return loaded;
  }

  ready(): boolean {
    return this.journal.x509.some((s) => s.state === 'active') && this.journal.jwt.some((s) => s.state === 'active');
  }

  /** Active CA's notAfter, so callers can clip SVID lifetimes. */
  activeNotAfter(): Date {
    return new Date(this.activeX509().slot.notAfter);
  }

  /** Sign an X.509-SVID; returns the chain to send (leaf first, then the CA and any upstream intermediates). */
  signX509Svid(subjectSpki: Buffer, spiffeId: string, ttlSeconds: number, dnsNames: string[] = []): { chain: Buffer[]; notAfter: Date } {
    const ca = this.activeX509();
    const now = this.opts.now();
    const caNotAfter = new Date(ca.slot.notAfter);
    let notAfter = new Date(now.getTime() + ttlSeconds * 1000);
    if (notAfter > caNotAfter) notAfter = caNotAfter;
    if (spiffeId === `spiffe://${this.opts.trustDomain}/sigil/verifier`) {
      const half = now.getTime() + (notAfter.getTime() - now.getTime()) / 2;
      this.serverSvidRefreshAt = Math.min(this.serverSvidRefreshAt ?? half, half);
    }
    const leaf = issueX509Svid({
      caCertDer: ca.certDer,
      caKey: ca.key,
      subjectSpki,
      spiffeId,
      notBefore: new Date(now.getTime() - 10_000),
      notAfter,
      dnsNames,
    });
    return { chain: [leaf, ...ca.chainTail], notAfter };
  }

  async mintJwtSvid(spiffeId: string, audience: string[], ttlSeconds: number): Promise<{ token: string; expiresAt: Date }> {
    const k = this.activeJwt();
    const now = this.opts.now();
    let expiresAt = new Date(now.getTime() + ttlSeconds * 1000);
    const keyNotAfter = new Date(k.slot.notAfter);
    if (expiresAt > keyNotAfter) expiresAt = keyNotAfter;
    const token = await mintJwtSvid({ privateKey: k.key, kid: k.slot.kid, spiffeId, audience, notAfter: expiresAt, now });
    return { token, expiresAt };
  }

  /** Every verifier's journal (this one's live copy), in instance order, so all verifiers publish the same bundle. */
  private allJournals(): CaJournal[] {
    return [{ instance: this.opts.instance, journal: this.journal }, ...this.peers]
      .sort((x, y) => (x.instance < y.instance ? -1 : x.instance > y.instance ? 1 : 0))
      .map((p) => p.journal);
  }

  /**
   * X.509 authorities relying parties must trust: for every verifier sharing the datastore, its
   * CAs (self-signed) or its upstream root; unexpired only, without duplicates.
   */
  x509Authorities(): Buffer[] {
    const now = this.opts.now().getTime();
    const seen = new Set<string>();
    const out: Buffer[] = [];
    for (const j of this.allJournals()) {
      const ders = j.upstreamRoot ? [j.upstreamRoot] : j.x509.filter((s) => Date.parse(s.notAfter) > now).map((s) => s.certDer);
      for (const d of ders) {
        if (seen.has(d)) continue;
        seen.add(d);
        out.push(Buffer.from(d, 'base64'));
      }
    }
    return out;
  }

  bundle(): SpiffeBundle {
    if (!this.cachedBundle) {
      const b = new SpiffeBundle(this.opts.trustDomain);
      b.x509Authorities = this.x509Authorities();
      const now = this.opts.now().getTime();
      const kids = new Set<string>();
      b.jwtAuthorities = this.allJournals()
        .flatMap((j) => j.jwt.filter((s) => Date.parse(s.notAfter) > now))
        .filter((s) => (kids.has(s.kid) ? false : (kids.add(s.kid), true)))
        .map((s) => ({ kid: s.kid, publicKey: this.jwtKeys.get(s.kid)?.publicKey ?? createPublicKey({ key: Buffer.from(s.publicKey, 'base64'), format: 'der', type: 'spki' }) }));
      b.sequence = this.allJournals().reduce((n, j) => n + (j.sequence ?? 0), 0);
      b.refreshHintSeconds = this.refreshHintSeconds();
      this.cachedBundle = b;
    }
    return this.cachedBundle;
  }

  /** The journal (for `sigil bundle show`/admin views and tests). */
  slots(): CaJournal {
    return structuredClone(this.journal);
  }
}

type Slot = { state: 'prepared' | 'active' | 'old'; notBefore: string; notAfter: string };

/**
 * When the prepared slot may become active: at five sixths of the active slot's life, but not
 * before it has been published for `leadMs` (slot notBefore = when it was made and published).
 */
function activationAt(active: Slot, prepared: Slot, leadMs: number): number {
  const start = Date.parse(active.notBefore);
  const life = Date.parse(active.notAfter) - start;
  return Math.max(start + (life * 5) / 6, Date.parse(prepared.notBefore) + leadMs);
}

/** When `advance` next has something to do for these slots (`now` if already due). */
function dueAt(slots: Slot[], now: number, leadMs: number): number {
  const active = slots.find((s) => s.state === 'active');
  if (!active) return now;
  const prepared = slots.find((s) => s.state === 'prepared');
  let next = Math.min(...slots.map((s) => Date.parse(s.notAfter)));
  if (prepared) next = Math.min(next, activationAt(active, prepared, leadMs));
  else {
    const start = Date.parse(active.notBefore);
    next = Math.min(next, start + (Date.parse(active.notAfter) - start) / 2);
  }
  return next;
}

/**
 * One rotation step for a list of slots. Rules, with L = the active slot's lifetime:
 * no usable active → make one active now (or promote the prepared one); at notBefore + L/2 with no
 * prepared → prepare one; at `activationAt` → prepared becomes active and active becomes old; drop
 * slots past notAfter. Returns what happened (empty: nothing changed).
 */
function advance<S extends Slot>(slots: S[], now: number, leadMs: number, make: (state: S['state']) => S, drop: (s: S) => void): RotationEvent<S>[] {
  const events: RotationEvent<S>[] = [];
  for (let i = slots.length - 1; i >= 0; i--) {
    const s = slots[i] as S;
    if (Date.parse(s.notAfter) <= now) {
      slots.splice(i, 1);
      drop(s);
      events.push({ kind: 'dropped', slot: s });
    }
  }
  let active = slots.find((s) => s.state === 'active');
  let prepared = slots.find((s) => s.state === 'prepared');
  if (!active) {
    if (prepared) {
      prepared.state = 'active';
      events.push({ kind: 'activated', slot: prepared, publishedForMs: now - Date.parse(prepared.notBefore) });
      active = prepared;
      prepared = undefined;
    } else {
      active = make('active');
      slots.push(active);
      events.push({ kind: 'made_active', slot: active });
    }
  }
  const start = Date.parse(active.notBefore);
  const life = Date.parse(active.notAfter) - start;
  if (!prepared && now >= start + life / 2) {
    prepared = make('prepared');
    slots.push(prepared);
    events.push({ kind: 'prepared', slot: prepared, activatesAt: Math.min(activationAt(active, prepared, leadMs), Date.parse(active.notAfter)) });
  }
  if (prepared && now >= activationAt(active, prepared, leadMs)) {
    active.state = 'old';
    prepared.state = 'active';
    events.push({ kind: 'activated', slot: prepared, publishedForMs: now - Date.parse(prepared.notBefore) });
  }
  return events;
}

function loadUpstream(u: { cert: string; key: string }, now: Date): Upstream {
  let chain: Buffer[];
  let key: KeyObject;
  try {
    chain = pemToDers(readFileSync(u.cert, 'utf8'));
  } catch (e) {
    throw new SigilError('ca.upstream_invalid', `ca.upstream.cert ${u.cert}: ${errorMessage(e)}`, { status: 500 });
  }
  if (chain.length === 0) throw new SigilError('ca.upstream_invalid', `ca.upstream.cert ${u.cert} holds no certificate`, { status: 500 });
  try {
    // Same check as the CA keys in dataDir (not accessible by group or others); any PEM form
    // createPrivateKey reads (PKCS#8, SEC1, PKCS#1) is taken.
    key = createPrivateKey(readSecretFile(u.key, 'ca.upstream.key'));
  } catch (e) {
    if (e instanceof SigilError && e.code === 'keys.file_permissions') throw e;
    const why = e instanceof SigilError ? e.message : `ca.upstream.key ${u.key}: ${errorMessage(e)}`;
    throw new SigilError('ca.upstream_invalid', why, { status: 500 });
  }
  const signer = new X509Certificate(chain[0] as Buffer);
  if (!signer.publicKey.equals(publicKeyOf(key))) {
    throw new SigilError('ca.upstream_invalid', `ca.upstream.key does not match the first certificate in ${u.cert}`, { status: 500 });
  }
  if (!signer.ca) throw new SigilError('ca.upstream_invalid', `ca.upstream.cert ${u.cert}: first certificate is not a CA (basicConstraints cA=false)`, { status: 500 });
  // The last certificate is published as the trust anchor; TLS (agent mTLS both ways) and relying
  // parties only accept a self-signed root there, so the file must hold the whole chain up to it.
  const certs = chain.map((d) => new X509Certificate(d));
  for (let i = 0; i < certs.length; i++) {
    const c = certs[i] as X509Certificate;
    const issuer = certs[i + 1] ?? c;
    if (!c.checkIssued(issuer) || !c.verify(issuer.publicKey)) {
      const what = i + 1 < certs.length ? `certificate ${i + 1} is not issued by certificate ${i + 2}` : 'the last certificate is not a self-signed root (append the chain up to the root)';
      throw new SigilError('ca.upstream_invalid', `ca.upstream.cert ${u.cert}: ${what}`, { status: 500 });
    }
    // The checks relying parties make of every signing certificate of an SVID chain (X509-SVID §4.3:
    // cA, keyUsage with keyCertSign, pathLen, validity, no unhandled critical extension): refused
    // now rather than in every agent and workload that verifies an SVID issued under it.
    let problem: string | undefined;
    try {
      problem = signingCertificateProblem(chain[i] as Buffer, now, i + 1);
    } catch (e) {
      problem = errorMessage(e);
    }
    if (problem !== undefined) {
      const code = problem.startsWith('x509svid.expired') ? 'ca.upstream_expired' : 'ca.upstream_invalid';
      throw new SigilError(code, `ca.upstream.cert ${u.cert}: certificate ${i + 1} cannot sign SVIDs (${problem})`, { status: 500 });
    }
  }
  return { key, chain, notAfter: new Date(signer.validTo) };
}
