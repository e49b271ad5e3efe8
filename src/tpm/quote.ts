/**
 * TPM2_Quote verification and AK checks (pure: bytes, expected values and
 * policy in; typed result or SigilError out).
 */
import { constants, timingSafeEqual, verify as cryptoVerify } from 'node:crypto';
import { digest } from '../util/digest.js';
import { SigilError } from '../errors.js';
import { TPM_ALG, TPM_ST, TPMA_OBJECT, algName, hashByAlg, hashByName, type HashName } from './constants.js';
import { eccCurve, padTo, publicToKeyObject } from './keys.js';
import {
  canonicalSelection,
  parseAttestAny,
  parseSignature,
  type ClockInfo,
  type PcrSelection,
  type TpmsAttest,
  type TpmtPublic,
  type TpmtSignature,
} from './structures.js';

export const DEFAULT_HASH_ALLOWLIST: readonly HashName[] = ['sha256', 'sha384', 'sha512'];

const STRONG_NAME_ALGS = new Set<number>([TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512]);

export interface PcrValue {
  bank: HashName;
  index: number;
  value: Buffer;
}

/** Attributes an AK must have: bit, error code, name (in the order they are checked). */
const AK_NEEDS: readonly (readonly [number, string, string])[] = [
  [TPMA_OBJECT.fixedTPM, 'tpm.ak_not_fixed_tpm', 'fixedTPM'],
  [TPMA_OBJECT.fixedParent, 'tpm.ak_not_fixed_parent', 'fixedParent'],
  [TPMA_OBJECT.sensitiveDataOrigin, 'tpm.ak_not_sensitive_data_origin', 'sensitiveDataOrigin'],
  [TPMA_OBJECT.restricted, 'tpm.ak_not_restricted', 'restricted'],
  [TPMA_OBJECT.sign, 'tpm.ak_not_signing', 'sign'],
];

/** Attributes an EK must have: bit, name. */
const EK_NEEDS: readonly (readonly [number, string])[] = [
  [TPMA_OBJECT.fixedTPM, 'fixedTPM'],
  [TPMA_OBJECT.fixedParent, 'fixedParent'],
  [TPMA_OBJECT.sensitiveDataOrigin, 'sensitiveDataOrigin'],
  [TPMA_OBJECT.restricted, 'restricted'],
  [TPMA_OBJECT.decrypt, 'decrypt'],
];

/** Attribute checks for an attestation key: restricted signing key that never leaves the TPM. */
export function checkAkPublic(ak: TpmtPublic): void {
  const a = ak.objectAttributes;
  for (const [bit, code, name] of AK_NEEDS) {
    if ((a & bit) === 0) throw new SigilError(code, `attestation key lacks the ${name} attribute (attributes 0x${a.toString(16)})`);
  }
  if ((a & TPMA_OBJECT.decrypt) !== 0) throw new SigilError('tpm.ak_decrypt_set', 'attestation key has the decrypt attribute set (must be a signing-only key)');
  if (!STRONG_NAME_ALGS.has(ak.nameAlg)) {
    throw new SigilError('tpm.ak_weak_name_alg', `attestation key nameAlg ${algName(ak.nameAlg)} is not sha256, sha384 or sha512`);
  }
  if (ak.type === 'rsa') {
    if (ak.keyBits < 2048) throw new SigilError('tpm.ak_weak_key', `attestation key is RSA-${ak.keyBits}, less than 2048 bits`);
    if (ak.scheme.scheme !== TPM_ALG.NULL && ak.scheme.scheme !== TPM_ALG.RSASSA && ak.scheme.scheme !== TPM_ALG.RSAPSS) {
      throw new SigilError('tpm.ak_weak_key', `attestation key scheme ${algName(ak.scheme.scheme)} is not a signature scheme`);
    }
  } else {
    const c = eccCurve(ak);
    if (c.size < 32) throw new SigilError('tpm.ak_weak_key', `attestation key curve ${c.jwk} is weaker than P-256`);
    if (ak.scheme.scheme !== TPM_ALG.NULL && ak.scheme.scheme !== TPM_ALG.ECDSA) {
      throw new SigilError('tpm.ak_weak_key', `attestation key scheme ${algName(ak.scheme.scheme)} is not ECDSA`);
    }
  }
  publicToKeyObject(ak);
}

/** Attribute checks for an endorsement key: restricted decryption key that never leaves the TPM. */
export function checkEkPublic(ek: TpmtPublic): void {
  const a = ek.objectAttributes;
  for (const [bit, name] of EK_NEEDS) {
    if ((a & bit) === 0) throw new SigilError('tpm.ek_attributes_invalid', `endorsement key lacks the ${name} attribute (attributes 0x${a.toString(16)})`);
  }
  if ((a & TPMA_OBJECT.sign) !== 0) throw new SigilError('tpm.ek_attributes_invalid', 'endorsement key has the sign attribute set');
  if (!STRONG_NAME_ALGS.has(ek.nameAlg)) {
    throw new SigilError('tpm.ek_unsupported', `endorsement key nameAlg ${algName(ek.nameAlg)} is not sha256, sha384 or sha512`);
  }
  if (ek.type === 'rsa' && ek.keyBits < 2048) throw new SigilError('tpm.ek_unsupported', `endorsement key is RSA-${ek.keyBits}, less than 2048 bits`);
  if (ek.type === 'ecc' && eccCurve(ek).size < 32) throw new SigilError('tpm.ek_unsupported', 'endorsement key curve is weaker than P-256');
  if (ek.symmetric.algorithm !== TPM_ALG.AES || ek.symmetric.mode !== TPM_ALG.CFB) {
    throw new SigilError('tpm.ek_unsupported', `endorsement key symmetric ${algName(ek.symmetric.algorithm)}/${algName(ek.symmetric.mode)} is not AES-CFB`);
  }
  publicToKeyObject(ek);
}

function checkSchemeConsistent(ak: TpmtPublic, sig: TpmtSignature, allow: readonly HashName[]): HashName {
  const h = hashByAlg(sig.hashAlg);
  if (!h) throw new SigilError('tpm.hash_not_allowed', `signature hash ${algName(sig.hashAlg)} is not supported`);
  if (!allow.includes(h.name)) throw new SigilError('tpm.hash_not_allowed', `signature hash ${h.name} is not in the allowlist (${allow.join(', ')})`);
  if (ak.type === 'rsa' && sig.sigAlg !== TPM_ALG.RSASSA && sig.sigAlg !== TPM_ALG.RSAPSS) {
    throw new SigilError('tpm.signature_scheme_mismatch', `signature algorithm ${algName(sig.sigAlg)} does not fit an RSA attestation key`);
  }
  if (ak.type === 'ecc' && sig.sigAlg !== TPM_ALG.ECDSA) {
    throw new SigilError('tpm.signature_scheme_mismatch', `signature algorithm ${algName(sig.sigAlg)} does not fit an ECC attestation key`);
  }
  if (ak.scheme.scheme !== TPM_ALG.NULL && (ak.scheme.scheme !== sig.sigAlg || ak.scheme.hashAlg !== sig.hashAlg)) {
    throw new SigilError(
      'tpm.signature_scheme_mismatch',
      `signature ${algName(sig.sigAlg)}/${algName(sig.hashAlg)} differs from the attestation key's scheme ${algName(ak.scheme.scheme)}/${algName(ak.scheme.hashAlg)}`,
    );
  }
  return h.name;
}

/** Verify a TPMT_SIGNATURE over `data` with the AK; throws `tpm.quote_signature_invalid`. */
export function verifyTpmSignature(ak: TpmtPublic, sig: TpmtSignature, hash: HashName, data: Buffer): void {
  const key = publicToKeyObject(ak);
  let ok = false;
  try {
    if (sig.sigAlg === TPM_ALG.ECDSA) {
      if (ak.type !== 'ecc') throw new Error('ECDSA signature for a non-ECC key');
      const size = eccCurve(ak).size;
      const rs = Buffer.concat([padTo(sig.r, size, 'signature r', 'tpm.malformed_signature'), padTo(sig.s, size, 'signature s', 'tpm.malformed_signature')]);
      ok = cryptoVerify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
    } else {
      if (ak.type !== 'rsa') throw new Error('RSA signature for a non-RSA key');
      if (sig.sig.length !== ak.modulus.length) {
        throw new SigilError('tpm.quote_signature_invalid', `RSA signature is ${sig.sig.length} bytes, the key needs ${ak.modulus.length}`);
      }
      // RSASSA-PSS as a TPM makes it (TPM 2.0 Part 1, RSASSA-PSS): MGF1 with the signature hash
      // and a salt as long as the digest (the largest the spec allows ≤ the hash size, which for
      // RSA ≥ 2048 is the digest size). Pinned, so no other salt length is accepted.
      ok =
        sig.sigAlg === TPM_ALG.RSASSA
          ? cryptoVerify(hash, data, { key, padding: constants.RSA_PKCS1_PADDING }, sig.sig)
          : cryptoVerify(hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, sig.sig);
    }
  } catch (e) {
    if (e instanceof SigilError) throw e;
    ok = false;
  }
  if (!ok) throw new SigilError('tpm.quote_signature_invalid', 'quote signature does not verify with the attestation key');
}

/** Constant-time equality for secrets and nonces (false on length mismatch). */
export function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) {
    timingSafeEqual(a, a);
    return false;
  }
  return timingSafeEqual(a, b);
}

/** Order `values` by `selection` (bank order, PCR index ascending); each selected PCR exactly once. */
export function orderPcrValues(selection: PcrSelection[], values: PcrValue[]): PcrValue[] {
  // Keyed by bank algorithm and index as one number (index ≤ 31): no key text per value.
  const map = new Map<number, PcrValue>();
  for (const v of values) {
    const h = hashByName(v.bank);
    if (!h) throw new SigilError('tpm.pcr_values_invalid', `PCR bank ${String(v.bank)} is not supported`);
    if (!Number.isInteger(v.index) || v.index < 0 || v.index > 31) throw new SigilError('tpm.pcr_values_invalid', `PCR index ${v.index} is out of range`);
    if (v.value.length !== h.size) throw new SigilError('tpm.pcr_values_invalid', `PCR ${v.bank}:${v.index} value is ${v.value.length} bytes, ${v.bank} needs ${h.size}`);
    const k = h.alg * 32 + v.index;
    if (map.has(k)) throw new SigilError('tpm.pcr_values_invalid', `PCR ${v.bank}:${v.index} is listed twice`);
    map.set(k, v);
  }
  const out: PcrValue[] = [];
  const seenBanks = new Set<number>();
  for (const s of selection) {
    if (seenBanks.has(s.hashAlg) && s.pcrs.length > 0) throw new SigilError('tpm.pcr_values_invalid', `PCR bank ${algName(s.hashAlg)} is selected twice`);
    seenBanks.add(s.hashAlg);
    const bank = hashByAlg(s.hashAlg)?.name;
    for (const i of s.pcrs) {
      // Values have indices 0..31 only, so no other index finds one (nor may it alias another bank's key).
      const k = s.hashAlg * 32 + i;
      const v = bank !== undefined && Number.isInteger(i) && i >= 0 && i <= 31 ? map.get(k) : undefined;
      if (!v) throw new SigilError('tpm.pcr_values_invalid', `no value for quoted PCR ${bank ?? s.hashAlg}:${i}`);
      out.push(v);
      map.delete(k);
    }
  }
  if (map.size > 0) throw new SigilError('tpm.pcr_values_invalid', `PCR values not in the quote's selection: ${[...map.values()].map((v) => `${v.bank}:${v.index}`).join(', ')}`);
  return out;
}

/** pcrDigest = H_hash(value₁ ‖ value₂ ‖ …) in selection order. */
export function pcrDigest(hash: HashName, ordered: PcrValue[]): Buffer {
  return digest(hash, ordered.length === 1 ? ordered[0]!.value : Buffer.concat(ordered.map((v) => v.value)));
}

export interface QuoteCheckInput {
  ak: TpmtPublic;
  /** TPMS_ATTEST or TPM2B_ATTEST bytes. */
  quote: Buffer;
  /** TPMT_SIGNATURE bytes. */
  signature: Buffer;
  /** Expected extraData (qualifyingData). */
  qualifyingData: Buffer;
  /** When given, the quote's PCR selection must equal this one. */
  expectedSelection?: PcrSelection[];
  /** When given, recompute the PCR digest from these values. */
  pcrValues?: PcrValue[];
  hashAllowlist?: readonly HashName[];
  /**
   * When given, the quote's qualifiedSigner must equal it: the AK's Qualified Name as a child of the
   * EK (`qualifiedNameUnderEk`), so the AK is in the endorsement hierarchy, where the TPM does not
   * obfuscate clockInfo.resetCount/restartCount and firmwareVersion.
   */
  expectedSigner?: Buffer;
}

export interface QuoteCheckResult {
  attest: TpmsAttest;
  pcrSelect: PcrSelection[];
  /** Values in selection order, verified against the digest (null when none were given). */
  pcrs: PcrValue[] | null;
  signatureHash: HashName;
}

/**
 * Verify a quote: structure, signature with the AK (scheme consistent with the AK, hash in the
 * allowlist), then extraData, PCR selection and PCR digest. The signature is checked before any
 * field of the quote is trusted.
 */
export function verifyQuote(input: QuoteCheckInput): QuoteCheckResult {
  let attest: TpmsAttest;
  try {
    attest = parseAttestAny(input.quote);
  } catch (e) {
    if (e instanceof SigilError) throw new SigilError('tpm.quote_malformed', e.message, { cause: e });
    throw e;
  }
  if (attest.type !== TPM_ST.ATTEST_QUOTE || attest.attested.kind !== 'quote') {
    throw new SigilError('tpm.quote_malformed', `attestation type 0x${attest.type.toString(16)} is not TPM_ST_ATTEST_QUOTE (0x8018)`);
  }
  const sig = parseSignature(input.signature);
  const hash = checkSchemeConsistent(input.ak, sig, input.hashAllowlist ?? DEFAULT_HASH_ALLOWLIST);
  verifyTpmSignature(input.ak, sig, hash, attest.raw);

  if (!constantTimeEqual(attest.extraData, input.qualifyingData)) {
    throw new SigilError('tpm.nonce_mismatch', 'quote extraData does not equal the expected qualifying data (session binding)');
  }
  if (input.expectedSigner && !attest.qualifiedSigner.equals(input.expectedSigner)) {
    throw new SigilError(
      'tpm.ak_not_under_ek',
      'quote qualifiedSigner is not the Qualified Name of the AK as a child of the EK: the AK was created elsewhere (another hierarchy), where the TPM obfuscates resetCount, restartCount and firmwareVersion',
    );
  }
  const pcrSelect = attest.attested.pcrSelect;
  if (input.expectedSelection && canonicalSelection(pcrSelect) !== canonicalSelection(input.expectedSelection)) {
    throw new SigilError(
      'tpm.pcr_selection_mismatch',
      `quoted PCR selection ${canonicalSelection(pcrSelect) || '(none)'} differs from the required ${canonicalSelection(input.expectedSelection) || '(none)'}`,
    );
  }
  let pcrs: PcrValue[] | null = null;
  if (input.pcrValues) {
    pcrs = orderPcrValues(pcrSelect, input.pcrValues);
    const d = pcrDigest(hash, pcrs);
    if (!constantTimeEqual(d, attest.attested.pcrDigest)) {
      throw new SigilError('tpm.pcr_digest_mismatch', 'PCR values do not hash to the quoted PCR digest');
    }
  }
  return { attest, pcrSelect, pcrs, signatureHash: hash };
}

// ---------------------------------------------------------------- counters

export interface CounterState {
  resetCount: number;
  restartCount: number;
  /** Clock in milliseconds, as a decimal string (u64). */
  clock: string;
}

export function isCounterState(v: unknown): v is CounterState {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    Number.isInteger(o.resetCount) &&
    Number.isInteger(o.restartCount) &&
    typeof o.clock === 'string' &&
    /^[0-9]{1,20}$/.test(o.clock)
  );
}

/**
 * Monotonicity of the TPM's clockInfo for one EK, against the last accepted quote:
 *  - resetCount must not decrease;
 *  - with the same resetCount, restartCount must not decrease;
 *  - with the same resetCount and restartCount, clock must not decrease.
 * A larger resetCount (TPM Reset) starts a new epoch in which restartCount and clock are free.
 */
export function checkCounters(prev: CounterState | undefined, cur: ClockInfo): CounterState {
  const next: CounterState = { resetCount: cur.resetCount, restartCount: cur.restartCount, clock: cur.clock.toString() };
  if (!prev) return next;
  if (cur.resetCount < prev.resetCount) rollback(`resetCount ${cur.resetCount} < last seen ${prev.resetCount}`);
  if (cur.resetCount === prev.resetCount) {
    if (cur.restartCount < prev.restartCount) rollback(`restartCount ${cur.restartCount} < last seen ${prev.restartCount} (same resetCount ${cur.resetCount})`);
    if (cur.restartCount === prev.restartCount && cur.clock < BigInt(prev.clock)) {
      rollback(`clock ${cur.clock} < last seen ${prev.clock} (same resetCount ${cur.resetCount} and restartCount ${cur.restartCount})`);
    }
  }
  return next;
}

function rollback(why: string): never {
  throw new SigilError('tpm.counter_rollback', `TPM clock went backwards: ${why}`);
}
