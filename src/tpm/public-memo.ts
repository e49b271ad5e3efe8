/**
 * Parsed TPM2B_PUBLIC areas by the base64 text the agent sent. A node presents the same EK and AK
 * public areas at every attestation, and decoding plus parsing them (and hashing the AK's Name)
 * cost about as much as the RSA operation of the credential challenge. A text is kept only after
 * it decoded (standard padded base64, within the size limit) and parsed cleanly, so a hit skips no
 * check: the same text always decodes to the same bytes. Bounded, least recently used first out;
 * texts longer than any valid area are never looked up.
 *
 * What the memo hands out is shared between attestations: the parsed area is frozen, and nothing
 * in src/tpm writes into its buffers (keys.ts and credential.ts copy before padding).
 */
import { SigilError } from '../errors.js';
import { decodeBase64 } from '../plugins/base64.js';
import { objectName, parseTpm2bPublic, qualifiedNameUnderEk, type TpmtPublic } from './structures.js';

/** Largest TPM2B_PUBLIC accepted from an agent, bytes (the hello's limit). */
export const PUBLIC_AREA_MAX_BYTES = 2048;
const MAX_TEXT = Math.ceil(PUBLIC_AREA_MAX_BYTES / 3) * 4;

export class MemoizedPublic {
  private nameBytes: Buffer | undefined;
  /** The last EK this area's Qualified Name under the endorsement hierarchy was computed for, and that name in base64. */
  private signer: { readonly ek: MemoizedPublic; readonly base64: string } | undefined;

  constructor(
    /** The parsed area (frozen). */
    readonly pub: TpmtPublic,
    /** The TPM2B_PUBLIC bytes as sent (shared: read only). */
    readonly bytes: Buffer,
  ) {}

  /** The object's Name (nameAlg ‖ H(public area)), computed once; a copy for the caller. */
  name(): Buffer {
    this.nameBytes ??= objectName(this.pub);
    return Buffer.from(this.nameBytes);
  }

  /**
   * base64 of this object's Qualified Name as a child of the endorsement primary key `ek`
   * (qualifiedNameUnderEk: four hashes), computed once per EK area (an AK is presented with the
   * same EK every time). Both areas are frozen parses of the texts they were memoized under, so
   * the same two objects always give the same name; an error is thrown again each time.
   */
  signerUnderEk(ek: MemoizedPublic): string {
    const s = this.signer;
    if (s !== undefined && s.ek === ek) return s.base64;
    this.nameBytes ??= objectName(this.pub);
    // qualifiedNameUnderEk only reads the name it is given.
    const base64 = qualifiedNameUnderEk(ek.pub, this.pub, this.nameBytes).toString('base64');
    this.signer = { ek, base64 };
    return base64;
  }
}

export class PublicAreaMemo {
  private readonly byText = new Map<string, MemoizedPublic>();

  constructor(readonly maxEntries = 4096) {}

  get size(): number {
    return this.byText.size;
  }

  /**
   * The public area in `text` (field `field` of a message; a bad one is a SigilError with `code`):
   * memoized when it decodes and parses, otherwise whatever decoding or parsing throws.
   */
  get(text: unknown, field: string, code: string): MemoizedPublic {
    if (typeof text !== 'string') throw new SigilError(code, `${field} must be a base64 string`, { status: 400 });
    if (text.length <= MAX_TEXT) {
      const hit = this.byText.get(text);
      if (hit !== undefined) {
        this.byText.delete(text);
        this.byText.set(text, hit);
        return hit;
      }
    }
    const bytes = decodeBase64(text, field, { code, maxBytes: PUBLIC_AREA_MAX_BYTES });
    const pub = parseTpm2bPublic(bytes);
    const m = new MemoizedPublic(Object.freeze(pub), bytes);
    this.byText.set(text, m);
    if (this.byText.size > this.maxEntries) this.byText.delete(this.byText.keys().next().value as string);
    return m;
  }
}
