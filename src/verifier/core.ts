import type { Logger } from 'pino';
import type { DataStore } from '../store/types.js';
import type { AttestationService } from './attestation.js';
import type { CertificateAuthority } from './ca.js';
import type { VerifierConfig } from './config.js';
import type { VerifierMetrics } from './metrics.js';

/** What the route modules share. */
export interface VerifierCore {
  config: VerifierConfig;
  store: DataStore;
  ca: CertificateAuthority;
  attestation: AttestationService;
  metrics: VerifierMetrics;
  logger: Logger;
  now: () => Date;
}
