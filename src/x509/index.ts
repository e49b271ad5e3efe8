/**
 * The X.509 toolkit: one home for certificates in Sigil.
 *
 * - der.ts      strict DER framing (reader, canonical-form walk) and the issuance encoders
 * - pem.ts      the one PEM splitter (strict; lax for files) and writer
 * - cert.ts     parseCertificate (one type, `ParsedCertificate`), CertCache (by DER hash), publicKeyOf
 * - ext.ts      the extensions every caller needs (basicConstraints, keyUsage, EKU, SAN, key ids)
 * - spki.ts     SubjectPublicKeyInfo inspection and import
 * - sigalg.ts   signature algorithm allowlist (ECDSA, RSA PKCS#1 v1.5, RSASSA-PSS on request)
 * - validity.ts the one validity check, time passed in
 * - chain.ts    the one chain verifier, LinkCache keyed by (child DER hash, issuer DER hash)
 * - crl.ts      CRLs
 * - errors.ts   the `x509.*` codes and `remapX509Error` for callers with codes of their own
 *
 * Everything here is pure: bytes, trust anchors and time in; typed results or SigilErrors out.
 */
export * from './cert.js';
export * from './chain.js';
export * from './crl.js';
export * from './errors.js';
export * from './pem.js';
export * from './sigalg.js';
export * from './validity.js';
export { Lru } from './lru.js';
