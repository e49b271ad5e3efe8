/** The strict DER reader and writer live in the X.509 toolkit (src/x509/der.ts); re-exported for existing importers. */
export * from '../x509/der.js';
