/**
 * TPM2_MakeCredential in TypeScript (TPM 2.0 Library Part 1 "Credential Protection",
 * "Secret Sharing"; Part 3 TPM2_MakeCredential), so the verifier can challenge a TPM
 * without a TPM of its own.
 *
 *  seed:   RSA EK — random (digest size of the EK nameAlg), RSA-OAEP(hash = nameAlg,
 *          label "IDENTITY\0") → encrypted secret;
 *          ECC EK — ephemeral ECDH on the EK curve, seed = KDFe(nameAlg, Z, "IDENTITY",
 *          ephemeral x, EK x, digest bits), encrypted secret = TPMS_ECC_POINT(ephemeral).
 *  symKey  = KDFa(nameAlg, seed, "STORAGE", AK Name, "", EK symmetric key bits)
 *  encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(credential))
 *  hmacKey = KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits)
 *  outerHMAC = HMAC_nameAlg(hmacKey, encIdentity ‖ AK Name)
 *  credentialBlob = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) ‖ encIdentity)
 */
import { constants, createCipheriv, createECDH, createHmac, publicEncrypt } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import { TPM_ALG, algName, hashByAlg, type HashInfo } from './constants.js';
import { kdfa, kdfe } from './kdf.js';
import { poolRandomBytes } from './random.js';
import { eccCurve, padTo, publicToKeyObject } from './keys.js';
import { encodeDigest2b, encodeEccPoint, encodeEncryptedSecret, encodeIdObject, type TpmtPublic } from './structures.js';

export interface MadeCredential {
  /** TPM2B_ID_OBJECT wire bytes (with size prefix). */
  credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET wire bytes (with size prefix). */
  encryptedSecret: Buffer;
}

const IDENTITY = 'IDENTITY';
/** The RSA-OAEP label, the IV of the credential's AES-CFB and an empty context: constants, read only. */
const OAEP_LABEL = Buffer.from(`${IDENTITY}\0`, 'latin1');
const ZERO_IV = Buffer.alloc(16);
const EMPTY = Buffer.alloc(0);

function ekHash(ek: TpmtPublic): HashInfo {
  const h = hashByAlg(ek.nameAlg);
  if (!h) throw new SigilError('tpm.ek_unsupported', `EK nameAlg ${algName(ek.nameAlg)} is not supported for credential protection`);
  return h;
}

function cipherName(ek: TpmtPublic): string {
  const s = ek.symmetric;
  if (s.algorithm !== TPM_ALG.AES || s.mode !== TPM_ALG.CFB) {
    throw new SigilError('tpm.ek_unsupported', `EK symmetric ${algName(s.algorithm)}/${algName(s.mode)} is not supported (AES-CFB only)`);
  }
  return `aes-${s.keyBits}-cfb`;
}

function makeSeed(ek: TpmtPublic, h: HashInfo): { seed: Buffer; secret: Buffer } {
  if (ek.type === 'rsa') {
    const seed = poolRandomBytes(h.size);
    const key = publicToKeyObject(ek);
    try {
      const secret = publicEncrypt(
        { key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: h.name, oaepLabel: OAEP_LABEL },
        seed,
      );
      return { seed, secret };
    } catch (e) {
      throw new SigilError('tpm.ek_unsupported', `RSA-OAEP(${h.name}) encryption to the EK failed: ${errorMessage(e)}`, { cause: e });
    }
  }
  const curve = eccCurve(ek);
  const ekX = padTo(ek.x, curve.size, 'EK x coordinate');
  const ekY = padTo(ek.y, curve.size, 'EK y coordinate');
  const ecdh = createECDH(curve.node);
  ecdh.generateKeys();
  let z: Buffer;
  try {
    z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), ekX, ekY]));
  } catch (e) {
    throw new SigilError('tpm.malformed_public', `EK public point is not on ${curve.jwk}`, { cause: e });
  }
  const pub = ecdh.getPublicKey(); // 04 ‖ x ‖ y, each curve.size bytes
  const ephX = pub.subarray(1, 1 + curve.size);
  const ephY = pub.subarray(1 + curve.size);
  // partyVInfo is the EK's x exactly as stored in its public area.
  const seed = kdfe(h.name, padTo(z, curve.size, 'ECDH Z'), IDENTITY, ephX, ek.x, h.size * 8);
  return { seed, secret: encodeEccPoint(Buffer.from(ephX), Buffer.from(ephY)) };
}

/**
 * Protect `credential` for the object named `akName` so that only the TPM holding
 * the private part of `ek` (with that object loaded) can recover it with
 * TPM2_ActivateCredential.
 */
export function makeCredential(ek: TpmtPublic, akName: Buffer, credential: Buffer): MadeCredential {
  const h = ekHash(ek);
  const cipher = cipherName(ek);
  if (credential.length === 0 || credential.length > h.size) {
    throw new SigilError('tpm.credential_invalid', `credential must be 1..${h.size} bytes for an EK with nameAlg ${h.name}`);
  }
  const { seed, secret } = makeSeed(ek, h);
  const symKey = kdfa(h.name, seed, 'STORAGE', akName, EMPTY, ek.symmetric.keyBits);
  const c = createCipheriv(cipher, symKey, ZERO_IV);
  const encIdentity = Buffer.concat([c.update(encodeDigest2b(credential)), c.final()]);
  const hmacKey = kdfa(h.name, seed, 'INTEGRITY', EMPTY, EMPTY, h.size * 8);
  const outerHmac = createHmac(h.name, hmacKey).update(encIdentity).update(akName).digest();
  // The seed and the keys made from it protect the credential: gone once the blob is made.
  seed.fill(0);
  symKey.fill(0);
  hmacKey.fill(0);
  return { credentialBlob: encodeIdObject(outerHmac, encIdentity), encryptedSecret: encodeEncryptedSecret(secret) };
}
