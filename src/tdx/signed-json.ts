/**
 * Intel's signed JSON collateral (PCS `tcb` and `qe/identity` answers), pure.
 *
 * A PCS answer is `{"tcbInfo":{…},"signature":"<128 hex>"}` (or `enclaveIdentity`). The signature
 * (ECDSA P-256 with SHA-256, r ‖ s) covers the exact bytes of the inner object as received: this
 * module finds that byte span with a small JSON scanner and never re-serializes, so a document
 * whose signed text was reformatted or re-ordered does not verify.
 */
import { createHash, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';

export const SIGNED_JSON_MAX_BYTES = 1024 * 1024;

export interface SignedJson {
  /** The exact bytes of the signed member's value. */
  signedBytes: Buffer;
  /** Its parsed value. */
  value: unknown;
  /** r ‖ s, 64 bytes. */
  signature: Buffer;
}

function bad(what: string, msg: string): never {
  throw new SigilError('tdx.collateral_malformed', `${what}: ${msg}`);
}

/** A member name from the unverified document as quoted in a refusal (at most 64 characters). */
const shown = (k: string): string => JSON.stringify(k.length <= 64 ? k : `${k.slice(0, 64)}…`);

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);
/** Intel's documents nest 6 deep; JSON.parse is slow on deep nesting, so it is refused before parsing. */
export const SIGNED_JSON_MAX_DEPTH = 32;

/** Index just past the JSON value starting at `i` (strings, nesting; content is checked by JSON.parse). */
function skipValue(s: Buffer, i: number, what: string): number {
  let depth = 0;
  let inString = false;
  for (let p = i; p < s.length; p++) {
    const c = s[p]!;
    if (inString) {
      if (c === 0x5c) p++;
      else if (c === 0x22) {
        inString = false;
        if (depth === 0) return p + 1;
      }
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > SIGNED_JSON_MAX_DEPTH) bad(what, `nested more than ${SIGNED_JSON_MAX_DEPTH} deep at byte ${p}`);
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
      if (depth < 0) bad(what, `unbalanced bracket at byte ${p}`);
      if (depth === 0) return p + 1;
    } else if (depth === 0 && (c === 0x2c || WS.has(c))) return p;
  }
  if (depth === 0 && !inString) return s.length;
  bad(what, 'unterminated JSON value');
}

/**
 * Split a signed PCS document into the signed member's raw bytes and the signature. The top level
 * must be an object with exactly the members `member` and `signature`.
 */
export function splitSignedJson(input: Uint8Array, member: 'tcbInfo' | 'enclaveIdentity', what: string): SignedJson {
  const s = Buffer.from(input);
  if (s.length > SIGNED_JSON_MAX_BYTES) bad(what, `larger than ${SIGNED_JSON_MAX_BYTES} bytes`);
  // Scan the top-level members for their raw byte spans (and the nesting depth) before JSON.parse,
  // which then checks the content.
  const spans = new Map<string, [number, number]>();
  let i = 0;
  const ws = (): void => {
    while (i < s.length && WS.has(s[i]!)) i++;
  };
  ws();
  if (s[i] !== 0x7b) bad(what, 'top level is not an object');
  i++;
  for (;;) {
    ws();
    if (s[i] === 0x7d && spans.size === 0) break;
    if (s[i] !== 0x22) bad(what, `expected a member name at byte ${i}`);
    const keyEnd = skipValue(s, i, what);
    let key: string;
    try {
      key = JSON.parse(s.subarray(i, keyEnd).toString('utf8')) as string;
    } catch (e) {
      bad(what, `member name at byte ${i} is not a JSON string (${errorMessage(e)})`);
    }
    i = keyEnd;
    ws();
    if (s[i] !== 0x3a) bad(what, `expected ':' at byte ${i}`);
    i++;
    ws();
    const start = i;
    i = skipValue(s, i, what);
    if (spans.has(key)) bad(what, `member ${shown(key)} appears twice`);
    spans.set(key, [start, i]);
    ws();
    if (s[i] === 0x2c) {
      i++;
      continue;
    }
    if (s[i] === 0x7d) break;
    bad(what, `expected ',' or '}' at byte ${i}`);
  }
  i++;
  ws();
  if (i !== s.length) bad(what, 'bytes after the JSON object');
  let whole: unknown;
  try {
    whole = JSON.parse(s.toString('utf8'));
  } catch (e) {
    bad(what, `not JSON (${errorMessage(e)})`);
  }
  if (typeof whole !== 'object' || whole === null || Array.isArray(whole)) bad(what, 'top level is not an object');
  const keys = [...spans.keys()].sort();
  if (keys.length !== 2 || !spans.has(member) || !spans.has('signature')) bad(what, `top level must have exactly "${member}" and "signature", has ${keys.slice(0, 4).map(shown).join(', ')}${keys.length > 4 ? ` and ${keys.length - 4} more` : ''}`);
  const [a, b] = spans.get(member)!;
  const signedBytes = s.subarray(a, b);
  if (signedBytes[0] !== 0x7b) bad(what, `"${member}" is not an object`);
  const sigHex = (whole as Record<string, unknown>).signature;
  if (typeof sigHex !== 'string' || !/^[0-9a-fA-F]{128}$/.test(sigHex)) bad(what, '"signature" must be 128 hex digits (r ‖ s)');
  return { signedBytes, value: (whole as Record<string, unknown>)[member], signature: Buffer.from(sigHex, 'hex') };
}

/**
 * The signature verifies under `key` over the signed bytes as received. `memo(key, check)` may
 * remember a success (pki.ts memoVerified); `keyId` names the key in that memo.
 */
export function verifySignedJson(doc: SignedJson, key: KeyObject, what: string, memo?: { keyId: string; remember: (k: string, check: () => boolean) => boolean }): void {
  const check = (): boolean => {
    try {
      return cryptoVerify('sha256', doc.signedBytes, { key, dsaEncoding: 'ieee-p1363' }, doc.signature);
    } catch {
      return false;
    }
  };
  const ok = memo ? memo.remember(`json:${createHash('sha256').update(doc.signedBytes).digest('hex')}:${doc.signature.toString('hex')}:${memo.keyId}`, check) : check();
  if (!ok) throw new SigilError('tdx.collateral_signature_invalid', `${what} signature does not verify under the TCB Signing certificate`, { status: 403 });
}
