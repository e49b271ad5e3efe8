/**
 * The `tpm` node attestor (DESIGN §2–4):
 *  hello     = { ekCert, ekIntermediates?, ekPub, akPub, imaTail? }        (agent → verifier)
 *  challenge = { credentialBlob, encryptedSecret, pcrSelection, imaFrom? } (verifier → agent)
 * `imaTail: true` says the agent can send an IMA tail; only then does the verifier offer `imaFrom`
 * (an agent that does not say so never sees the field, so verifiers can be upgraded first).
 *  response  = { secret, quote, signature, pcrValues: [{bank,index,value}], eventLog?, imaLog? } (agent → verifier)
 * The verifier proves the AK lives in the TPM holding the certified EK by credential
 * activation (MakeCredential to the AK Name under the EK), then checks a quote signed by
 * that AK over the session binding and the configured PCRs. An event log (firmware, and IMA's)
 * sent with the quote is trusted only as far as its replay reproduces the quoted PCRs.
 */
import { digest } from '../util/digest.js';
import { mkdir, readFile } from 'node:fs/promises';
import { replaceFileAtomicAsync } from '../util/atomic-file.js';
import { isAbsolute, join, resolve } from 'node:path';
import { SigilError, errorMessage, errorFields } from '../errors.js';
import { decodeBase64 } from '../plugins/base64.js';
import { validatePluginConfig } from '../plugins/validate.js';
import type {
  AgentPluginDeps,
  AttestorResult,
  JsonSchema,
  NodeAttestorAgent,
  NodeAttestorAgentPlugin,
  NodeAttestorVerifier,
  NodeAttestorVerifierPlugin,
  SessionInput,
  VerifierPluginDeps,
} from '../plugins/types.js';
import { HASHES, hashByName, type HashName } from './constants.js';
import { makeCredential } from './credential.js';
import { EK_LIMITS, EkCertVerifier, EkTrustStore, certKeyKind, certificatesFromBytes, checkEkPublicMatches, parseCertificate, type ParsedCert } from './ekcert.js';
import { spkiHash } from './keys.js';
import {
  DEFAULT_HASH_ALLOWLIST,
  checkAkPublic,
  checkCounters,
  checkEkPublic,
  constantTimeEqual,
  isCounterState,
  orderPcrValues,
  pcrDigest,
  verifyQuote,
  type PcrValue,
} from './quote.js';
import { encodePcrSelection, parseAttestAny, parsePcrSelection, parseTpm2bPublic, type PcrBankSelection, type PcrSelection } from './structures.js';
import { pcrHexOf, tpmClaims, tpmSelectors } from './verify.js';
import { EventLogCheckCache, EVENTLOG_DEFAULT_MAX_BYTES } from './eventlog/index.js';
import { poolRandomBytes } from './random.js';
import { PublicAreaMemo } from './public-memo.js';
import { LogDecoder, decodeLogB64 } from './log-text.js';
import { checkImaLog, compileExcludes, detectImaFormat, imaListResumesAt, isImaProgress, parseImaAllowlist, policyFingerprint, IMA_DEFAULT_MAX_BYTES, type ImaPolicy, type ImaProgress } from './ima/index.js';

const NAME = 'tpm';
const BANKS = ['sha1', 'sha256', 'sha384', 'sha512'] as const;

// ---------------------------------------------------------------- JSON helpers

function decodeB64(v: unknown, field: string, code: string, maxBytes: number): Buffer {
  return decodeBase64(v, field, { code, maxBytes });
}

/** An EK certificate of the hello (index -1) or one of its intermediates, as DER. */
function decodeHelloCert(text: string, index: number): Buffer {
  return decodeB64(text, index < 0 ? 'ekCert' : `ekIntermediates[${index}]`, 'tpm.bad_hello', EK_LIMITS.certBytes);
}

/** The same from the session state (written by begin from texts that decoded). */
function decodeStateCert(text: string, index: number): Buffer {
  return decodeB64(text, index < 0 ? 'session state ekCert' : `session state ekIntermediates[${index}]`, 'tpm.bad_state', EK_LIMITS.certBytes);
}

function strictObject(v: unknown, what: string, code: string, required: string[], optional: string[] = []): Record<string, unknown> {
  return strictObjectNamed(v, () => what, code, required, optional);
}

/** strictObject whose name is made only for an error message. */
function strictObjectNamed(v: unknown, what: () => string, code: string, required: string[], optional: string[] = []): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SigilError(code, `${what()} must be a JSON object`);
  const o = v as Record<string, unknown>;
  // The own enumerable keys, as Object.keys lists them, without making that list (a response has up to 97 objects).
  for (const k in o) if (Object.hasOwn(o, k) && !required.includes(k) && !optional.includes(k)) throw new SigilError(code, `${what()} has unknown field ${k}`);
  for (const k of required) if (o[k] === undefined) throw new SigilError(code, `${what()} lacks ${k}`);
  return o;
}

// ---------------------------------------------------------------- verifier

export interface TpmVerifierConfig {
  ekCa: string[];
  pcrs?: Partial<Record<(typeof BANKS)[number], number[]>>;
  hashAllowlist?: HashName[];
  eventLog?: { require?: boolean; unloggedPcrs?: number[] };
  ima?: { allowlist: string; excludes?: string[]; name: string; require?: boolean };
}

/** Measured boot settings of the verifier half (config keys `eventLog` and `ima`). */
export interface MeasuredBootConfig {
  requireEventLog: boolean;
  unloggedPcrs: number[];
  ima?: { allowlist: string; excludes: string[]; name: string; require: boolean };
}

const pcrList = { type: 'array', items: { type: 'integer', minimum: 0, maximum: 23 }, uniqueItems: true, maxItems: 24 };

export const tpmVerifierConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['ekCa'],
  properties: {
    ekCa: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
    pcrs: {
      type: 'object',
      additionalProperties: false,
      properties: { sha1: pcrList, sha256: pcrList, sha384: pcrList, sha512: pcrList },
    },
    hashAllowlist: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: ['sha256', 'sha384', 'sha512'] } },
    eventLog: {
      type: 'object',
      additionalProperties: false,
      properties: { require: { type: 'boolean' }, unloggedPcrs: pcrList },
    },
    ima: {
      type: 'object',
      additionalProperties: false,
      required: ['allowlist', 'name'],
      properties: {
        allowlist: { type: 'string', minLength: 1 },
        excludes: { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 256 },
        name: { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' },
        require: { type: 'boolean' },
      },
    },
  },
};

/** Validate the verifier config (the loader's validation: the schema, `tpm.config_invalid`), then derive what the verifier uses. */
export function parseVerifierConfig(config: unknown): { ekCa: string[]; selection: PcrBankSelection[]; hashAllowlist: HashName[]; measured: MeasuredBootConfig } {
  const c = validatePluginConfig<TpmVerifierConfig>(tpmVerifierConfigSchema, config, { namespace: 'tpm', what: 'plugin "tpm" config' });
  let selection: PcrBankSelection[] = [{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];
  if (c.pcrs !== undefined) {
    selection = [];
    for (const bank of BANKS) {
      const list = c.pcrs[bank];
      if (list !== undefined && list.length > 0) selection.push({ bank, pcrs: [...list].sort((a, b) => a - b) });
    }
  }
  const hashAllowlist: HashName[] = c.hashAllowlist ? [...c.hashAllowlist] : [...DEFAULT_HASH_ALLOWLIST];
  return { ekCa: c.ekCa, selection, hashAllowlist, measured: parseMeasuredBootConfig(c.eventLog, c.ima) };
}

/** The measured-boot keys of a validated config (the schema checked their shape; the IMA excludes must compile). */
function parseMeasuredBootConfig(eventLog: TpmVerifierConfig['eventLog'], ima: TpmVerifierConfig['ima']): MeasuredBootConfig {
  const out: MeasuredBootConfig = { requireEventLog: eventLog?.require === true, unloggedPcrs: eventLog?.unloggedPcrs ?? [10] };
  if (ima !== undefined) {
    compileExcludes(ima.excludes ?? []);
    out.ima = { allowlist: ima.allowlist, excludes: ima.excludes ?? [], name: ima.name, require: ima.require === true };
  }
  return out;
}

/** Reads the IMA allowlist named in the config, resolved against configDir. */
export async function loadImaPolicy(ima: NonNullable<MeasuredBootConfig['ima']>, configDir: string): Promise<ImaPolicy> {
  const file = isAbsolute(ima.allowlist) ? ima.allowlist : resolve(configDir, ima.allowlist);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new SigilError('tpm.config_invalid', `tpm: cannot read ima.allowlist file ${file}: ${errorMessage(e)}`, { cause: e });
  }
  return { name: ima.name, allow: parseImaAllowlist(text), excludes: compileExcludes(ima.excludes) };
}

/**
 * What begin() leaves for finish() (the verifier persists it with the session). It holds only
 * SHA-256 of the credential secret, so whoever can read the session store cannot answer the
 * challenge with it (version 1 held the secret itself), and, since version 3, the Qualified Name
 * the quote's signer must have (the AK as the EK's child). Older versions are refused: state lives
 * for one session, so the agent attests again.
 */
interface TpmSessionState {
  v: 3;
  /** base64 SHA-256 of the credential secret sealed to the EK/AK in the challenge. */
  secretHash: string;
  akPub: string;
  ekPubHash: string;
  ekCert: string;
  ekIntermediates: string[];
  /** base64 Qualified Name of the AK as the EK's child: the quote's qualifiedSigner must be it. */
  akSigner: string;
  /** The IMA progress offered in the challenge (the agent may then send only the entries after it). */
  ima?: ImaProgress;
}

const STATE_VERSION = 3;

function secretDigest(secret: Buffer): Buffer {
  return digest('sha256', secret);
}

function parseState(state: unknown): TpmSessionState {
  const oldV = typeof state === 'object' && state !== null && !Array.isArray(state) ? (state as Record<string, unknown>).v : undefined;
  if (oldV === 1) {
    throw new SigilError(
      'tpm.bad_state',
      'tpm session state is version 1 (it kept the credential secret in plain form); this verifier accepts only version 3 (secret digest and the AK\'s expected signer name): attest again',
    );
  }
  if (oldV === 2) {
    throw new SigilError(
      'tpm.bad_state',
      'tpm session state is version 2 (it does not name the AK\'s expected signer, the AK as the EK\'s child); this verifier accepts only version 3: attest again',
    );
  }
  const o = strictObject(state, 'tpm session state', 'tpm.bad_state', ['v', 'secretHash', 'akPub', 'ekPubHash', 'ekCert', 'ekIntermediates', 'akSigner'], ['ima']);
  if (o.ima !== undefined && !isImaProgress(o.ima)) throw new SigilError('tpm.bad_state', 'tpm session state ima progress is not one this verifier wrote');
  if (o.v !== STATE_VERSION || typeof o.secretHash !== 'string' || typeof o.akPub !== 'string' || typeof o.ekPubHash !== 'string' || typeof o.ekCert !== 'string') {
    throw new SigilError('tpm.bad_state', 'tpm session state is not one this verifier wrote');
  }
  if (typeof o.akSigner !== 'string' || !/^(?:[A-Za-z0-9+/]{46}==|[A-Za-z0-9+/]{67}=|[A-Za-z0-9+/]{88})$/.test(o.akSigner)) {
    throw new SigilError('tpm.bad_state', 'tpm session state akSigner is not a base64 Qualified Name');
  }
  if (!/^[A-Za-z0-9+/]{43}=$/.test(o.secretHash)) {
    throw new SigilError('tpm.bad_state', 'tpm session state secretHash is not a base64 SHA-256 digest');
  }
  if (!Array.isArray(o.ekIntermediates) || o.ekIntermediates.some((x) => typeof x !== 'string')) {
    throw new SigilError('tpm.bad_state', 'tpm session state is not one this verifier wrote');
  }
  return o as unknown as TpmSessionState;
}

const PCR_VALUE_FIELDS = ['bank', 'index', 'value'];

function parsePcrValuesJson(v: unknown): PcrValue[] {
  if (!Array.isArray(v)) throw new SigilError('tpm.bad_response', 'pcrValues must be an array');
  if (v.length > 24 * BANKS.length) throw new SigilError('tpm.bad_response', 'pcrValues has too many entries');
  const out: PcrValue[] = [];
  for (let i = 0; i < v.length; i++) {
    const e: unknown = v[i];
    // The entry's name is built only for a message (strictObjectNamed): a response has up to 96.
    const o = strictObjectNamed(e, () => `pcrValues[${i}]`, 'tpm.bad_response', PCR_VALUE_FIELDS);
    const h = typeof o.bank === 'string' ? hashByName(o.bank) : undefined;
    if (!h) throw new SigilError('tpm.bad_response', `pcrValues[${i}].bank is not sha1, sha256, sha384 or sha512`);
    if (!Number.isInteger(o.index) || (o.index as number) < 0 || (o.index as number) > 31) {
      throw new SigilError('tpm.bad_response', `pcrValues[${i}].index is not an integer 0..31`);
    }
    if (typeof o.value !== 'string' || !/^[0-9a-fA-F]*$/.test(o.value) || o.value.length !== h.size * 2) {
      throw new SigilError('tpm.bad_response', `pcrValues[${i}].value must be ${h.size * 2} hex digits`);
    }
    const value = Buffer.from(o.value, 'hex');
    out.push({ bank: h.name, index: o.index as number, value });
  }
  return out;
}

/** Reads the ekCa files (PEM bundles or DER) named in the config, resolved against configDir. */
export async function loadEkCaFiles(paths: string[], configDir: string): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const p of paths) {
    const file = isAbsolute(p) ? p : resolve(configDir, p);
    let data: Buffer;
    try {
      data = await readFile(file);
    } catch (e) {
      throw new SigilError('tpm.config_invalid', `tpm: cannot read ekCa file ${file}: ${errorMessage(e)}`, { cause: e });
    }
    try {
      out.push(...certificatesFromBytes(data, `ekCa file ${file}`));
    } catch (e) {
      throw new SigilError('tpm.config_invalid', `tpm: ekCa file ${file}: ${errorMessage(e)}`, { cause: e });
    }
  }
  return out;
}

export class TpmVerifier implements NodeAttestorVerifier {
  private readonly pcrSelectionWire: Buffer;
  /** The same selection parsed (read only), as every quote must carry it. */
  private readonly expectedSelection: PcrSelection[];
  /** Outcomes of event log checks (pure, keyed by log, quoted PCRs and unlogged PCRs). */
  private readonly eventLogChecks = new EventLogCheckCache();
  /** Decodes a log text the memo has not seen; its bytes are read only within the check. */
  private readonly eventLogDecoder = new LogDecoder('eventLog', EVENTLOG_DEFAULT_MAX_BYTES);
  /** EK and AK public areas by the text the agent sent (a node sends the same ones every time). */
  private readonly publics = new PublicAreaMemo();
  private imaFp: string | undefined;

  constructor(
    private readonly ek: EkCertVerifier,
    private readonly selection: PcrBankSelection[],
    private readonly hashAllowlist: HashName[],
    private readonly deps: Pick<VerifierPluginDeps, 'state'>,
    private readonly measured: MeasuredBootConfig & { imaPolicy?: ImaPolicy } = { requireEventLog: false, unloggedPcrs: [10] },
  ) {
    this.pcrSelectionWire = encodePcrSelection(selection);
    this.expectedSelection = parsePcrSelection(this.pcrSelectionWire);
  }

  /**
   * Sessions are limited per EK (DESIGN §10): the key is the EK public key's hash, which `begin`
   * then checks against the chain-verified EK certificate. Undefined for a hello `begin` refuses.
   */
  credentialKey(hello: unknown): string | undefined {
    const ekPub = (hello as { ekPub?: unknown } | null)?.ekPub;
    try {
      return spkiHash(this.publics.get(ekPub, 'ekPub', 'tpm.bad_hello').pub);
    } catch {
      return undefined;
    }
  }

  async begin(hello: unknown, session: SessionInput): Promise<{ challenge: unknown; state: unknown }> {
    const h = strictObject(hello, 'tpm hello', 'tpm.bad_hello', ['ekCert', 'ekPub', 'akPub'], ['ekIntermediates', 'imaTail']);
    if (h.imaTail !== undefined && h.imaTail !== true) throw new SigilError('tpm.bad_hello', 'tpm hello: imaTail must be true when present');
    // The certificates are decoded (strictly) only when this exact chain text was not verified
    // before (EkCertVerifier.verifyTexts); their types are checked here, first, as before.
    if (typeof h.ekCert !== 'string') throw new SigilError('tpm.bad_hello', 'ekCert must be a base64 string');
    const interTexts: string[] = [];
    if (h.ekIntermediates !== undefined) {
      if (!Array.isArray(h.ekIntermediates) || h.ekIntermediates.length > EK_LIMITS.intermediates) {
        throw new SigilError('tpm.bad_hello', `ekIntermediates must be an array of at most ${EK_LIMITS.intermediates} certificates`);
      }
      h.ekIntermediates.forEach((c, i) => {
        if (typeof c !== 'string') throw new SigilError('tpm.bad_hello', `ekIntermediates[${i}] must be a base64 string`);
        interTexts.push(c);
      });
    }
    const ekArea = this.publics.get(h.ekPub, 'ekPub', 'tpm.bad_hello');
    const ekPub = ekArea.pub;
    const akArea = this.publics.get(h.akPub, 'akPub', 'tpm.bad_hello');
    const ak = akArea.pub;
    checkEkPublic(ekPub);
    const chain = this.ek.cachedTexts(h.ekCert, interTexts, session.now) ?? (await this.ek.verifyTexts(h.ekCert, interTexts, session.now, decodeHelloCert));
    const leaf = chain.chain[0];
    if (!leaf) throw new SigilError('tpm.ek_untrusted', 'empty EK chain');
    checkEkPublicMatches(leaf, ekPub);
    checkAkPublic(ak);
    const secret = poolRandomBytes(32);
    const made = makeCredential(ekPub, akArea.name(), secret);
    const ekPubHash = spkiHash(ekPub);
    const ima = h.imaTail === true ? await this.imaProgress(ekPubHash) : undefined;
    const state: TpmSessionState = {
      v: STATE_VERSION,
      secretHash: secretDigest(secret).toString('base64'),
      // The texts as sent: each decoded cleanly (now or when its memo entry was made).
      akPub: h.akPub as string,
      ekPubHash,
      ekCert: h.ekCert,
      ekIntermediates: interTexts,
      akSigner: akArea.signerUnderEk(ekArea),
      ...(ima ? { ima } : {}),
    };
    // Only its digest is needed from here on (the buffer is its own memory: see random.ts).
    secret.fill(0);
    return {
      challenge: {
        credentialBlob: made.credentialBlob.toString('base64'),
        encryptedSecret: made.encryptedSecret.toString('base64'),
        pcrSelection: this.pcrSelectionWire.toString('base64'),
        ...(ima ? { imaFrom: { entries: ima.entries, bytes: ima.bytes, format: ima.format, lastTemplateHash: ima.lastTemplateHash } } : {}),
      },
      state,
    };
  }

  /**
   * The IMA progress stored for this EK when it can be used with this verifier's policy: offered
   * in the challenge. Unreadable or foreign state means no offer (the next check is full).
   */
  private async imaProgress(ekPubHash: string): Promise<ImaProgress | undefined> {
    let v: unknown;
    try {
      v = await this.deps.state.get(imaKey(ekPubHash));
    } catch {
      return undefined;
    }
    return isImaProgress(v) && v.policy === this.imaPolicyFp ? v : undefined;
  }

  private get imaPolicyFp(): string {
    this.imaFp ??= policyFingerprint(this.measured.imaPolicy);
    return this.imaFp;
  }

  async finish(response: unknown, state: unknown, session: SessionInput): Promise<AttestorResult> {
    const st = parseState(state);
    const r = strictObject(response, 'tpm response', 'tpm.bad_response', ['secret', 'quote', 'signature', 'pcrValues'], ['eventLog', 'imaLog', 'imaLogFrom']);
    const secret = decodeB64(r.secret, 'secret', 'tpm.bad_response', 64);
    const quoteBytes = decodeB64(r.quote, 'quote', 'tpm.bad_response', 2048);
    const sigBytes = decodeB64(r.signature, 'signature', 'tpm.bad_response', 1024);
    const pcrValues = parsePcrValuesJson(r.pcrValues);
    // The event log text is decoded by the memo only when it was not seen before (checkMeasuredBoot).
    if (r.eventLog !== undefined && typeof r.eventLog !== 'string') throw new SigilError('tpm.bad_response', 'eventLog must be a non-empty base64 string');
    const eventLogText = r.eventLog;
    const imaTail = r.imaLogFrom !== undefined;
    if (imaTail) {
      // Only the start this verifier offered is accepted: a tail from anywhere else would skip entries.
      const f = strictObject(r.imaLogFrom, 'imaLogFrom', 'tpm.bad_response', ['entries', 'bytes']);
      if (st.ima === undefined) throw new SigilError('tpm.ima_bad_start', 'tpm: the agent sent an IMA tail (imaLogFrom) but this session offered no starting point');
      if (f.entries !== st.ima.entries || f.bytes !== st.ima.bytes) {
        throw new SigilError('tpm.ima_bad_start', `tpm: imaLogFrom is not the starting point offered (entry ${st.ima.entries}, byte ${st.ima.bytes})`);
      }
      if (r.imaLog === undefined) throw new SigilError('tpm.bad_response', 'tpm response has imaLogFrom without imaLog');
    }
    const imaLogBytes = r.imaLog === undefined ? undefined : imaTail && r.imaLog === '' ? Buffer.alloc(0) : decodeLogB64(r.imaLog, 'imaLog', IMA_DEFAULT_MAX_BYTES);

    // Both sides are 32-byte digests: the comparison time says nothing about the stored value.
    if (!constantTimeEqual(secretDigest(secret), Buffer.from(st.secretHash, 'base64'))) {
      throw new SigilError('tpm.credential_mismatch', 'activated credential secret is wrong: the AK is not in the TPM holding the EK, or the response is replayed');
    }
    const akArea = this.publics.get(st.akPub, 'session state akPub', 'tpm.bad_state');
    const ak = akArea.pub;
    const quote = verifyQuote({
      ak,
      quote: quoteBytes,
      signature: sigBytes,
      qualifyingData: session.binding,
      expectedSelection: this.expectedSelection,
      pcrValues,
      hashAllowlist: this.hashAllowlist,
      expectedSigner: Buffer.from(st.akSigner, 'base64'),
    });
    // The EK chain was validated in begin(); this is a cache hit that re-checks validity times.
    const chain = this.ek.cachedTexts(st.ekCert, st.ekIntermediates, session.now) ?? (await this.ek.verifyTexts(st.ekCert, st.ekIntermediates, session.now, decodeStateCert));

    const key = counterKey(st.ekPubHash);
    let prevRaw: unknown;
    try {
      prevRaw = await this.deps.state.get(key);
    } catch (e) {
      throw new SigilError('tpm.state_unavailable', `tpm: reading the counter state failed: ${errorMessage(e)}`, { status: 503, cause: e });
    }
    // Fail closed: a stored value that is not counter state must not turn the rollback check off.
    if (prevRaw !== undefined && !isCounterState(prevRaw)) {
      throw new SigilError(
        'tpm.state_unavailable',
        `tpm: the stored counter state "${key}" is not { resetCount, restartCount, clock }; refusing rather than skipping the rollback check (evicting the agent deletes it)`,
        { status: 503 },
      );
    }
    const next = checkCounters(prevRaw, quote.attest.clockInfo);

    const input = { ekPubHash: st.ekPubHash, chain, pcrs: quote.pcrs, pcrHex: pcrHexOf(quote) };
    let measured: ReturnType<TpmVerifier['checkMeasuredBoot']>;
    try {
      measured = this.checkMeasuredBoot(quote.pcrs ?? [], eventLogText, imaLogBytes, st.ima, imaTail);
    } catch (e) {
      // The stored IMA progress did not fit this node's list: forget it, so the next challenge
      // offers nothing and the agent sends its whole list (checked from scratch).
      if (e instanceof SigilError && e.code === 'tpm.ima_full_log_required') await this.deps.state.put(imaKey(st.ekPubHash), null).catch(() => undefined);
      throw e;
    }
    // Stored by commit(), only once every factor of the session passed, and only if the stored
    // counters are still the ones checked here (compare-and-set on exactly what was read).
    pendingCounters.set(state as object, { key, expected: prevRaw, next, ...(measured.imaProgress ? { ima: { key: imaKey(st.ekPubHash), next: measured.imaProgress } } : {}) });
    // Built in place rather than by spreading (same keys, same order).
    const selectors = tpmSelectors(input);
    for (const s of measured.selectors) selectors.push(s);
    const claims = tpmClaims({ ...input, ak, akName: akArea.name(), quote });
    claims.akBoundToEk = true;
    Object.assign(claims, measured.claims);
    return { selectors, claims, agentIdSuffix: st.ekPubHash };
  }

  /**
   * Replays the event logs sent with the quote against the quoted (signature-checked) PCRs: a
   * mismatch refuses the attestation; matching logs add boot and IMA selectors.
   */
  private checkMeasuredBoot(
    pcrs: PcrValue[],
    eventLog: string | undefined,
    imaLog: Buffer | undefined,
    imaProgress?: ImaProgress,
    imaTail = false,
  ): { selectors: string[]; claims: Record<string, unknown>; imaProgress?: ImaProgress } {
    const m = this.measured;
    const selectors: string[] = [];
    const claims: Record<string, unknown> = {};
    if (eventLog === undefined && m.requireEventLog) throw new SigilError('tpm.eventlog_missing', 'tpm: the verifier requires an event log (eventLog.require) and the agent sent none');
    if (eventLog !== undefined) {
      const r = this.eventLogChecks.checkText(eventLog, (t) => this.eventLogDecoder.decode(t), pcrs, m.unloggedPcrs);
      selectors.push(...r.selectors);
      claims.eventLog = r.claims;
    }
    if (imaLog === undefined && m.ima?.require) throw new SigilError('tpm.ima_log_missing', 'tpm: the verifier requires an IMA log (ima.require) and the agent sent none');
    if (imaLog !== undefined) {
      const r = checkImaLog({ log: imaLog, pcrs, ...(m.imaPolicy ? { policy: m.imaPolicy } : {}), ...(imaProgress ? { progress: imaProgress } : {}), tail: imaTail });
      selectors.push(...r.selectors);
      claims.ima = { entries: r.covered, checked: r.entries.length, mode: r.mode, format: r.progress.format, pending: r.pending, ...(m.imaPolicy ? { policy: m.imaPolicy.name } : {}) };
      return { selectors, claims, imaProgress: r.progress };
    }
    return { selectors, claims };
  }

  /** The counters stored for the EK whose hash is the agent ID suffix; evicting the agent deletes them. */
  stateKeysForAgent(agentIdSuffix: string): string[] {
    return /^[0-9a-f]{64}$/.test(agentIdSuffix) ? [counterKey(agentIdSuffix), imaKey(agentIdSuffix)] : [];
  }

  async commit(state: unknown): Promise<void> {
    const pending = pendingCounters.get(state as object);
    if (!pending) throw new SigilError('tpm.bad_state', 'tpm: commit without a successful finish for this session', { status: 500 });
    pendingCounters.delete(state as object);
    let stored: boolean;
    try {
      stored = await this.deps.state.compareAndSet(pending.key, pending.expected, pending.next);
    } catch (e) {
      throw new SigilError('tpm.state_unavailable', `tpm: storing the counter state failed: ${errorMessage(e)}`, { status: 503, cause: e });
    }
    if (!stored) {
      // Another session for this EK stored its counters after this one checked them: accepting
      // both would let the older quote's counters overwrite the newer (or pass unchecked).
      throw new SigilError(
        'tpm.counter_race',
        'tpm: another attestation of this EK stored new counters while this session was being checked; attest again',
        { status: 409 },
      );
    }
    // The node's IMA progress, after its counters: losing it only makes the next check a full one.
    if (pending.ima) {
      try {
        await this.deps.state.put(pending.ima.key, pending.ima.next);
      } catch {
        // Not fatal: the attestation passed; the next one checks the whole list.
      }
    }
  }
}

/** Plugin state key of the counters of the EK with this public key hash (also the agent ID suffix). */
function counterKey(ekPubHash: string): string {
  return `counters:${ekPubHash}`;
}

/** Plugin state key of the IMA progress (entries checked, PCR 10 after them) of the EK with this public key hash. */
function imaKey(ekPubHash: string): string {
  return `ima:${ekPubHash}`;
}

/** Counter state checked in finish() (`expected`: the value read), written in commit(); keyed by the session's state object. */
const pendingCounters = new WeakMap<object, { key: string; expected: unknown; next: unknown; ima?: { key: string; next: ImaProgress } }>();

export const tpmVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: NAME,
  configSchema: tpmVerifierConfigSchema,
  async create(config: unknown, deps: VerifierPluginDeps): Promise<NodeAttestorVerifier> {
    const c = parseVerifierConfig(config);
    const ders = await loadEkCaFiles(c.ekCa, deps.configDir);
    let trust: EkTrustStore;
    try {
      trust = new EkTrustStore(ders);
    } catch (e) {
      throw new SigilError('tpm.config_invalid', `tpm: ekCa: ${errorMessage(e)}`, { cause: e });
    }
    const imaPolicy = c.measured.ima ? await loadImaPolicy(c.measured.ima, deps.configDir) : undefined;
    return new TpmVerifier(new EkCertVerifier(trust), c.selection, c.hashAllowlist, deps, { ...c.measured, ...(imaPolicy ? { imaPolicy } : {}) });
  },
};

// ---------------------------------------------------------------- agent

/** The native binding's TPM device (src/native/tpm.ts contract). */
export interface TpmDevice {
  readEkCertificate(): Promise<{ nvIndex: number; der: Buffer } | null>;
  getEkPublic(alg: 'rsa' | 'ecc-p256' | 'ecc-p384'): Promise<Buffer>;
  createAk(alg: 'rsa' | 'ecc'): Promise<{ public: Buffer; private: Buffer }>;
  loadAk(ak: { public: Buffer; private: Buffer }): Promise<{ name: Buffer }>;
  activateCredential(credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer>;
  quote(pcrSelection: Buffer, qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  pcrRead(pcrSelection: Buffer): Promise<{ bank: string; index: number; value: Buffer }[]>;
  close(): Promise<void>;
}

interface NativeTpmModule {
  openTpm(tcti: string): Promise<TpmDevice>;
}

/** Loads src/native/tpm.ts lazily so this module works (verifier side) without the native binding. */
export async function loadNativeTpm(): Promise<NativeTpmModule> {
  let mod: unknown;
  try {
    mod = await import('../native/tpm.js');
  } catch (e) {
    throw new SigilError(
      'tpm.native_unavailable',
      `tpm: the TPM binding module (src/native/tpm.ts → dist/native/tpm.js) could not be loaded: ${errorMessage(e)}`,
      { cause: e },
    );
  }
  const m = mod as Partial<NativeTpmModule>;
  if (typeof m.openTpm !== 'function') throw new SigilError('tpm.native_unavailable', 'tpm: the TPM binding module does not export openTpm()');
  return m as NativeTpmModule;
}

export interface TpmAgentConfig {
  tcti: string;
  akAlg?: 'rsa' | 'ecc';
  ekIntermediates?: string[];
  /** Firmware event log sent with the quote: a path, true (the default path; skipped when absent) or false. Default: true with a `device:` TCTI, else false. */
  eventLog?: string | boolean;
  /**
   * IMA runtime measurements sent with the quote: a path (binary or ASCII list, recognised by its
   * first byte), true (the binary list if the kernel has it, else the ASCII one) or false (default).
   */
  imaLog?: string | boolean;
}

export const DEFAULT_EVENT_LOG_PATH = '/sys/kernel/security/tpm0/binary_bios_measurements';
export const DEFAULT_IMA_LOG_PATH = '/sys/kernel/security/ima/ascii_runtime_measurements';
export const DEFAULT_IMA_BINARY_LOG_PATH = '/sys/kernel/security/ima/binary_runtime_measurements';

export const tpmAgentConfigSchema: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['tcti'],
  properties: {
    tcti: { type: 'string', minLength: 1 },
    akAlg: { enum: ['rsa', 'ecc'] },
    ekIntermediates: { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: EK_LIMITS.intermediates },
    eventLog: { anyOf: [{ type: 'boolean' }, { type: 'string', minLength: 1 }] },
    imaLog: { anyOf: [{ type: 'boolean' }, { type: 'string', minLength: 1 }] },
  },
};

function parseAgentConfig(config: unknown): TpmAgentConfig {
  const c = validatePluginConfig<TpmAgentConfig>(tpmAgentConfigSchema, config, { namespace: 'tpm', what: 'plugin "tpm" agent config' });
  const out: TpmAgentConfig = { tcti: c.tcti, akAlg: c.akAlg ?? 'rsa' };
  if (c.ekIntermediates) out.ekIntermediates = c.ekIntermediates;
  if (c.eventLog !== undefined) out.eventLog = c.eventLog;
  if (c.imaLog !== undefined) out.imaLog = c.imaLog;
  return out;
}

interface StoredAk {
  version: 1;
  alg: 'rsa' | 'ecc';
  ekPubHash: string;
  public: string;
  private: string;
}

function ekAlgFromCert(cert: ParsedCert): 'rsa' | 'ecc-p256' | 'ecc-p384' {
  const kind = certKeyKind(cert);
  if (kind === 'rsa' || kind === 'ecc-p256' || kind === 'ecc-p384') return kind;
  throw new SigilError('tpm.ek_unsupported', `tpm: EK certificate key (${kind}) is not RSA, ECC P-256 or ECC P-384`);
}

/**
 * TPM_RC_REFERENCE_H0..H6 and _S0..S6 (0x910..0x916, 0x918..0x91e, any TSS layer): a handle or
 * session the command names is not loaded — the AK (or a transient EK) was flushed behind the
 * agent, e.g. by `tpm2_flushcontext -t` on a TPM without a resource manager.
 */
export function isTpmObjectNotLoaded(e: unknown): boolean {
  if (!(e instanceof SigilError) || e.code !== 'tpm.device_error') return false;
  const rc = e.details?.rc;
  if (typeof rc !== 'number') return false;
  const base = rc & 0xffff;
  return (base >= 0x910 && base <= 0x916) || (base >= 0x918 && base <= 0x91e);
}

export class TpmAgent implements NodeAttestorAgent {
  private dev: TpmDevice | null = null;
  /** The AK loaded in the current device session (loaded once; repeated hellos reuse it). */
  private loadedAk: StoredAk | null = null;
  /** The EK the loaded AK lives under (to load it again after a flush). */
  private ekAlg: 'rsa' | 'ecc-p256' | 'ecc-p384' | null = null;

  constructor(
    private readonly config: TpmAgentConfig,
    private readonly deps: Pick<AgentPluginDeps, 'dataDir' | 'configDir' | 'logger'>,
    private readonly open: (tcti: string) => Promise<TpmDevice> = async (tcti) => (await loadNativeTpm()).openTpm(tcti),
  ) {}

  private async device(): Promise<TpmDevice> {
    this.dev ??= await this.open(this.config.tcti);
    return this.dev;
  }

  private akFile(): string {
    return join(this.deps.dataDir, 'tpm-ak.json');
  }

  private async readStoredAk(): Promise<StoredAk | null> {
    let text: string;
    try {
      text = await readFile(this.akFile(), 'utf8');
    } catch {
      return null;
    }
    try {
      const o = JSON.parse(text) as Partial<StoredAk>;
      if (o.version === 1 && (o.alg === 'rsa' || o.alg === 'ecc') && typeof o.ekPubHash === 'string' && typeof o.public === 'string' && typeof o.private === 'string') {
        return o as StoredAk;
      }
    } catch {
      // fall through: an unreadable file is replaced by a fresh AK
    }
    this.deps.logger.warn({ file: this.akFile() }, 'tpm: stored AK file is unreadable; creating a new AK');
    return null;
  }

  private async storeAk(ak: StoredAk): Promise<void> {
    await mkdir(this.deps.dataDir, { recursive: true, mode: 0o700 });
    await replaceFileAtomicAsync(this.akFile(), JSON.stringify(ak), 0o600);
  }

  async hello(): Promise<unknown> {
    const dev = await this.device();
    const cert = await dev.readEkCertificate();
    if (!cert) {
      throw new SigilError('tpm.ek_cert_missing', 'tpm: the TPM holds no EK certificate in NV (0x01c00002, 0x01c0000a, 0x01c00012..0x01c0001c)');
    }
    const ekCert = parseCertificate(cert.der, 'EK certificate from the TPM');
    const ekAlg = ekAlgFromCert(ekCert);
    const ekPubBytes = await dev.getEkPublic(ekAlg);
    const ekPubHash = spkiHash(parseTpm2bPublic(ekPubBytes));
    const akAlg = this.config.akAlg ?? 'rsa';
    let stored = this.loadedAk?.ekPubHash === ekPubHash ? this.loadedAk : await this.readStoredAk();
    let loaded = stored !== null && stored === this.loadedAk;
    if (!loaded && stored && stored.ekPubHash === ekPubHash && stored.alg === akAlg) {
      try {
        await dev.loadAk({ public: Buffer.from(stored.public, 'base64'), private: Buffer.from(stored.private, 'base64') });
        loaded = true;
      } catch (e) {
        this.deps.logger.warn(errorFields(e), 'tpm: stored AK could not be loaded; creating a new AK');
      }
    }
    if (!loaded || !stored) {
      const ak = await dev.createAk(akAlg);
      stored = { version: 1, alg: akAlg, ekPubHash, public: ak.public.toString('base64'), private: ak.private.toString('base64') };
      await dev.loadAk(ak);
      await this.storeAk(stored);
    }
    this.loadedAk = stored;
    this.ekAlg = ekAlg;
    const hello: Record<string, unknown> = { ekCert: ekCert.der.toString('base64'), ekPub: ekPubBytes.toString('base64'), akPub: stored.public };
    // Only an agent that sends an IMA log asks for the tail protocol, so an agent without one
    // still talks to verifiers that predate it.
    if (this.config.imaLog !== undefined && this.config.imaLog !== false) hello.imaTail = true;
    if (this.config.ekIntermediates?.length) {
      const ders: string[] = [];
      for (const p of this.config.ekIntermediates) {
        const file = isAbsolute(p) ? p : resolve(this.deps.configDir, p);
        let data: Buffer;
        try {
          data = await readFile(file);
        } catch (e) {
          throw new SigilError('tpm.config_invalid', `tpm: cannot read ekIntermediates file ${file}: ${errorMessage(e)}`, { cause: e });
        }
        for (const d of certificatesFromBytes(data, `ekIntermediates file ${file}`)) ders.push(d.toString('base64'));
      }
      hello.ekIntermediates = ders;
    }
    return hello;
  }

  async respond(challenge: unknown, session: { nonce: Buffer; binding: Buffer; csrSpki: Buffer }): Promise<unknown> {
    const c = strictObject(challenge, 'tpm challenge', 'tpm.bad_challenge', ['credentialBlob', 'encryptedSecret', 'pcrSelection'], ['imaFrom']);
    const blob = decodeB64(c.credentialBlob, 'credentialBlob', 'tpm.bad_challenge', 1024);
    const encSecret = decodeB64(c.encryptedSecret, 'encryptedSecret', 'tpm.bad_challenge', 1024);
    const selWire = decodeB64(c.pcrSelection, 'pcrSelection', 'tpm.bad_challenge', 256);
    const selection = parsePcrSelection(selWire);
    const secret = await this.withAk((dev) => dev.activateCredential(blob, encSecret));
    // PCRs may be extended between the quote and the read; retry until they agree.
    for (let attempt = 1; ; attempt++) {
      const q = await this.withAk((dev) => dev.quote(selWire, session.binding));
      const raw = await (await this.device()).pcrRead(selWire);
      const values: PcrValue[] = raw.map((v) => {
        const h = hashByName(v.bank);
        if (!h) throw new SigilError('tpm.device_error', `tpm: PCR read returned unknown bank ${v.bank}`);
        return { bank: h.name, index: v.index, value: v.value };
      });
      const attest = parseAttestAny(q.attest);
      const sig = q.signature;
      const hashAlg = sig.length >= 4 ? sig.readUInt16BE(2) : 0;
      const hash = HASHES.find((x) => x.alg === hashAlg)?.name;
      const consistent =
        attest.attested.kind === 'quote' && hash !== undefined && pcrDigest(hash, orderPcrValues(selection, values)).equals(attest.attested.pcrDigest);
      if (consistent || attempt >= 3) {
        // Read after the quote: the IMA list only grows, so it covers what the quote covers.
        // The kernel's log belongs to the kernel's TPM: by default only a device TCTI sends it.
        const eventLog = await this.readLog('eventLog', this.config.eventLog ?? this.config.tcti.startsWith('device:'), DEFAULT_EVENT_LOG_PATH);
        const imaSetting = this.config.imaLog ?? false;
        const imaLog =
          imaSetting === true
            ? ((await this.readLog('imaLog', true, DEFAULT_IMA_BINARY_LOG_PATH, true)) ?? (await this.readLog('imaLog', true, DEFAULT_IMA_LOG_PATH)))
            : await this.readLog('imaLog', imaSetting, DEFAULT_IMA_LOG_PATH);
        const ima = imaLog === undefined ? undefined : imaToSend(imaLog, c.imaFrom);
        return {
          secret: secret.toString('base64'),
          quote: q.attest.toString('base64'),
          signature: q.signature.toString('base64'),
          pcrValues: values.map((v) => ({ bank: v.bank, index: v.index, value: v.value.toString('hex') })),
          ...(eventLog ? { eventLog: eventLog.toString('base64') } : {}),
          ...(ima ? { imaLog: ima.bytes.toString('base64'), ...(ima.from ? { imaLogFrom: ima.from } : {}) } : {}),
        };
      }
      this.deps.logger.info({ attempt }, 'tpm: PCRs changed between quote and read; quoting again');
    }
  }

  /**
   * Run a TPM command that uses the loaded AK. When the TPM says an object or session it names is
   * not loaded (isTpmObjectNotLoaded), the AK was flushed behind the agent: reopen the device (which
   * also re-selects the EK, re-created from its template when it is not persistent), load the
   * stored AK again — the same key, so a credential made for its Name still activates — and retry
   * once. A second failure is reported as it is.
   */
  private async withAk<T>(op: (dev: TpmDevice) => Promise<T>): Promise<T> {
    try {
      return await op(await this.device());
    } catch (e) {
      const ak = this.loadedAk;
      const ekAlg = this.ekAlg;
      if (!isTpmObjectNotLoaded(e) || ak === null || ekAlg === null) throw e;
      this.deps.logger.warn({ rc: (e as SigilError).details?.rc }, 'tpm: the AK is no longer loaded in the TPM (flushed by another program?); loading it again and retrying once');
      const old = this.dev;
      this.dev = null;
      this.loadedAk = null;
      await old?.close().catch(() => undefined);
      const dev = await this.device();
      const ekPubHash = spkiHash(parseTpm2bPublic(await dev.getEkPublic(ekAlg)));
      if (ekPubHash !== ak.ekPubHash) throw new SigilError('tpm.device_error', 'tpm: after reopening the TPM its EK is another key than the one the AK was made under (TPM cleared?); attest again', { cause: e, status: 500 });
      await dev.loadAk({ public: Buffer.from(ak.public, 'base64'), private: Buffer.from(ak.private, 'base64') });
      this.loadedAk = ak;
      return op(dev);
    }
  }

  /**
   * A measurement log to send: none when disabled; with `true` the default path, silently absent
   * when the kernel does not provide it; a configured path must be readable.
   */
  private async readLog(key: 'eventLog' | 'imaLog', setting: string | boolean, defaultPath: string, quiet = false): Promise<Buffer | undefined> {
    if (setting === false) return undefined;
    const path = setting === true ? defaultPath : isAbsolute(setting) ? setting : resolve(this.deps.configDir, setting);
    try {
      return await readFile(path);
    } catch (e) {
      if (setting === true && (e as NodeJS.ErrnoException).code === 'ENOENT') {
        if (!quiet) this.deps.logger.info({ path }, `tpm: no ${key} at the default path; attesting without it`);
        return undefined;
      }
      throw new SigilError('tpm.eventlog_unreadable', `tpm: cannot read ${key} ${path}: ${errorMessage(e)}`, { cause: e });
    }
  }

  async close(): Promise<void> {
    const d = this.dev;
    this.dev = null;
    this.loadedAk = null;
    this.ekAlg = null;
    if (d) await d.close();
  }
}

/**
 * The IMA list to send: only the entries after the verifier's offered starting point when the
 * list still begins with the entries it checked (same form, an entry boundary at the offered
 * byte, the same last template hash), else the whole list. A malformed offer means the whole list.
 */
export function imaToSend(list: Buffer, offer: unknown): { bytes: Buffer; from?: { entries: number; bytes: number } } {
  if (typeof offer !== 'object' || offer === null || list.length === 0) return { bytes: list };
  const o = offer as { entries?: unknown; bytes?: unknown; format?: unknown; lastTemplateHash?: unknown };
  if (typeof o.entries !== 'number' || typeof o.bytes !== 'number' || typeof o.lastTemplateHash !== 'string' || (o.format !== 'ascii' && o.format !== 'binary')) return { bytes: list };
  let format: string;
  try {
    format = detectImaFormat(list);
  } catch {
    return { bytes: list };
  }
  if (format !== o.format || !imaListResumesAt(list, o.format, o.entries, o.bytes, o.lastTemplateHash)) return { bytes: list };
  return { bytes: list.subarray(o.bytes), from: { entries: o.entries, bytes: o.bytes } };
}

export const tpmAgentPlugin: NodeAttestorAgentPlugin = {
  name: NAME,
  configSchema: tpmAgentConfigSchema,
  create(config: unknown, deps: AgentPluginDeps): NodeAttestorAgent {
    return new TpmAgent(parseAgentConfig(config), deps);
  },
};
