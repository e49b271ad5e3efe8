export { SpiffeId, parseTrustDomain, isValidSpiffeId, SPIFFE_ID_MAX_BYTES } from './id.js';
export {
  type KeyType,
  type JwsAlg,
  KEY_TYPES,
  RSA_MIN_BITS,
  RSA_MAX_BITS,
  isKeyType,
  generateKey,
  keyTypeOf,
  keyFamilyOf,
  jwsAlgFor,
  spkiDer,
  publicKeyOf,
  savePrivateKeyPkcs8,
  loadPrivateKeyPkcs8,
} from './keys.js';
export { parseCsr, createCsr, type ParsedCsr, CSR_MAX_BYTES } from './csr.js';
export {
  issueCaCertificate,
  issueX509Svid,
  verifyX509Svid,
  type IssueCaOptions,
  type IssueX509SvidOptions,
  type VerifiedX509Svid,
} from './x509svid.js';
export { parseCertificate, type ParsedCertificate, type ParsedExtension } from './cert.js';
export { certsToPem, pemToDers, derToPem } from './pem.js';
export {
  mintJwtSvid,
  mintJwtSvidSync,
  validateJwtSvid,
  decodeJwtSvidUnverified,
  JWT_SVID_ALGS,
  type JwtAuthority,
  type JwtSvidAlg,
  type MintJwtSvidOptions,
  type ValidateJwtSvidOptions,
  type ValidatedJwtSvid,
} from './jwtsvid.js';
export { SpiffeBundle, splitConcatenatedDer, type SpiffeBundleJwks } from './bundle.js';
export { KU } from './x509ext.js';
