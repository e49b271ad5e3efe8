/** SubjectPublicKeyInfo handling lives in the X.509 toolkit (src/x509/spki.ts); re-exported for existing importers. */
export * from '../x509/spki.js';
