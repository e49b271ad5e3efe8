/**
 * The agent's view of its trust domain's bundle.
 *
 * At first start the X.509 authorities come from the bootstrap `trustBundle` (PEM). Once the
 * verifier has been reached over TLS checked against that bundle, the verifier's own bundle
 * (SPIFFE JWKS, with JWT authorities) replaces it and is persisted in dataDir as `bundle.pem`
 * (X.509 authorities) and `bundle.json` (full JWKS), both written atomically, so a restart with the
 * verifier down still serves bundles and still trusts the verifier after CA rotations.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, errorMessage, errorFields } from '../errors.js';
import { SpiffeBundle } from '../spiffe/bundle.js';
import { readSmallFile, writeFileAtomic } from './files.js';

export class TrustStore {
  private current: SpiffeBundle;
  private canonical: string;
  private readonly listeners = new Set<(b: SpiffeBundle) => void>();
  private readonly pemPath: string;
  private readonly jsonPath: string;
  /** Whether the current bundle came from the verifier and is on disk (not just the bootstrap file). */
  private persisted = false;

  private constructor(
    private readonly trustDomain: string,
    dataDir: string,
    private readonly bootstrapPath: string,
    private readonly logger: Logger,
    initial: SpiffeBundle,
  ) {
    this.pemPath = join(dataDir, 'bundle.pem');
    this.jsonPath = join(dataDir, 'bundle.json');
    this.current = initial;
    this.canonical = JSON.stringify(initial.toJwks());
  }

  /**
   * Load the persisted bundle from dataDir, or else the bootstrap bundle. Fails (startup error) only
   * when neither is usable.
   */
  static load(opts: { trustDomain: string; dataDir: string; bootstrapPath: string; logger: Logger }): TrustStore {
    const { trustDomain, dataDir, bootstrapPath, logger } = opts;
    let persisted: SpiffeBundle | undefined;
    try {
      const json = readSmallFile(join(dataDir, 'bundle.json'));
      if (json) persisted = SpiffeBundle.fromJwks(trustDomain, json.toString('utf8'));
      if (!persisted || persisted.x509Authorities.length === 0) {
        const pem = readSmallFile(join(dataDir, 'bundle.pem'));
        if (pem) persisted = SpiffeBundle.fromPem(trustDomain, pem.toString('utf8'));
      }
    } catch (e) {
      logger.warn(errorFields(e), 'persisted bundle in dataDir is unusable; using the bootstrap trustBundle');
      persisted = undefined;
    }
    if (persisted && persisted.x509Authorities.length > 0) {
      const t = new TrustStore(trustDomain, dataDir, bootstrapPath, logger, persisted);
      t.persisted = true;
      return t;
    }
    return new TrustStore(trustDomain, dataDir, bootstrapPath, logger, TrustStore.readBootstrap(trustDomain, bootstrapPath));
  }

  /** The bootstrap trustBundle file (PEM certificates). Read fresh each time so an operator can replace it. */
  static readBootstrap(trustDomain: string, path: string): SpiffeBundle {
    let text: string;
    try {
      const b = readSmallFile(path, 4 * 1024 * 1024);
      if (!b) throw new Error('no such file');
      text = b.toString('utf8');
    } catch (e) {
      throw new SigilError('agent.trust_bundle_unreadable', `cannot read trustBundle ${path}: ${errorMessage(e)}`);
    }
    let b: SpiffeBundle;
    try {
      b = SpiffeBundle.fromPem(trustDomain, text);
    } catch (e) {
      throw new SigilError('agent.trust_bundle_invalid', `trustBundle ${path} is not PEM certificates: ${errorMessage(e)}`);
    }
    if (b.x509Authorities.length === 0) throw new SigilError('agent.trust_bundle_invalid', `trustBundle ${path} holds no certificates`);
    return b;
  }

  bundle(): SpiffeBundle {
    return this.current;
  }

  /** The bootstrap authorities (fallback when the verifier's CA no longer chains to the persisted bundle). */
  bootstrap(): SpiffeBundle {
    return TrustStore.readBootstrap(this.trustDomain, this.bootstrapPath);
  }

  /**
   * Adopt the bundle the verifier sent (JWKS object). Returns true when it differs from the current
   * one; then it is persisted and listeners are told. Throws `bundle.malformed` / `agent.bundle_empty`.
   */
  update(jwks: unknown): boolean {
    const b = SpiffeBundle.fromJwks(this.trustDomain, jwks);
    if (b.x509Authorities.length === 0) throw new SigilError('agent.bundle_empty', 'the verifier sent a bundle without X.509 authorities');
    const canonical = JSON.stringify(b.toJwks());
    if (canonical === this.canonical) {
      if (!this.persisted) {
        writeFileAtomic(this.jsonPath, `${canonical}\n`, 0o644);
        writeFileAtomic(this.pemPath, b.toPem(), 0o644);
        this.persisted = true;
      }
      return false;
    }
    writeFileAtomic(this.jsonPath, `${canonical}\n`, 0o644);
    writeFileAtomic(this.pemPath, b.toPem(), 0o644);
    this.persisted = true;
    this.current = b;
    this.canonical = canonical;
    this.logger.info({ sequence: b.sequence, x509Authorities: b.x509Authorities.length, jwtAuthorities: b.jwtAuthorities.length }, 'trust bundle updated');
    for (const l of this.listeners) {
      try {
        l(b);
      } catch (e) {
        this.logger.error(errorFields(e), 'bundle listener failed');
      }
    }
    return true;
  }

  onChange(l: (b: SpiffeBundle) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
}
