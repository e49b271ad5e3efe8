/** PEM lives in the X.509 toolkit (src/x509/pem.ts); re-exported for existing importers. */
export { PEM_MAX_BYTES, certsToPem, derToPem, pemToDers } from '../x509/pem.js';
