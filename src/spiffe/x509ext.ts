/** The X.509 extension encoders and decoders live in the X.509 toolkit (src/x509/ext.ts); re-exported for existing importers. */
export * from '../x509/ext.js';
