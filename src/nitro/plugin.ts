/**
 * aws_nitro node attestor (DESIGN §3–4).
 *
 * Protocol: hello `{}` (optionally `{ moduleId }`), challenge `{}`, response `{ document: base64 }`.
 * The agent half asks the Nitro Secure Module for an attestation document with
 * `nonce` = session binding and `public_key` = SPKI DER of the agent's CSR key; the verifier half
 * checks it at the session time with both bindings, its config's maxAge, allowDebug, root pin and
 * required PCRs.
 *
 * The agent reaches /dev/nsm through the native addon (`loadSys().nsmRequest`), loaded lazily so
 * this module loads on machines without it. That ioctl path can only run inside a Nitro enclave and
 * is not exercised by the test suite; the tests inject a transport that plays the NSM.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import type { AttestorResult, NodeAttestorAgentPlugin, NodeAttestorVerifierPlugin, SessionInput } from '../plugins/types.js';
import { decodeBase64 } from '../plugins/base64.js';
import { pluginConfigError, validatePluginConfig } from '../plugins/validate.js';
import { durationSchema, parseDuration } from '../util/duration.js';
import { AWS_NITRO_ROOT_G1_SHA256 } from './aws-root.js';
import { NitroCertCache, pemCertificateToDer, sha256Hex } from './certs.js';
import { MAX_DOCUMENT_BYTES } from './document.js';
import { decodeAttestationResponse, encodeAttestationRequest, NSM_RESPONSE_MAX_SIZE } from './nsm.js';
import { DEFAULT_MAX_AGE_SECONDS, nitroClaims, nitroSelectors, verifyNitroDocument } from './verify.js';

export const NITRO_ATTESTOR_NAME = 'aws_nitro';

/** Sends one NSM request and returns the raw response (the /dev/nsm ioctl, or a test double). */
export type NsmTransport = (request: Buffer) => Promise<Buffer>;

export interface NitroVerifierConfig {
  allowDebug?: boolean;
  maxAge?: string | number;
  rootCertSha256?: string;
  rootCert?: string;
  pcrs?: Record<string, string>;
}

const PCR_HEX = '^([0-9a-fA-F]{64}|[0-9a-fA-F]{96}|[0-9a-fA-F]{128})$';

export const nitroVerifierConfigSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    allowDebug: { type: 'boolean', default: false },
    maxAge: { ...durationSchema, default: '5m' },
    rootCertSha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$' },
    rootCert: { type: 'string', minLength: 1 },
    pcrs: {
      type: 'object',
      additionalProperties: false,
      patternProperties: { '^([0-9]|[12][0-9]|3[01])$': { type: 'string', pattern: PCR_HEX } },
    },
  },
} as const;

function configError(msg: string): SigilError {
  return pluginConfigError('nitro', `plugin "aws_nitro": ${msg}`);
}

interface ResolvedConfig {
  allowDebug: boolean;
  maxAgeSeconds: number;
  rootSha256: string;
  pcrs: Map<number, Buffer>;
}

function resolveConfig(raw: unknown, configDir: string): ResolvedConfig {
  const c = validatePluginConfig<NitroVerifierConfig>(nitroVerifierConfigSchema, raw, { namespace: 'nitro', what: 'plugin "aws_nitro" config' });
  const maxAgeSeconds = parseDuration(c.maxAge ?? DEFAULT_MAX_AGE_SECONDS, 'nodeAttestors.aws_nitro.maxAge');
  if (!(maxAgeSeconds > 0)) throw configError('maxAge must be greater than 0');
  let rootSha256 = (c.rootCertSha256 ?? AWS_NITRO_ROOT_G1_SHA256).toLowerCase();
  if (c.rootCert !== undefined) {
    const path = resolve(configDir, c.rootCert);
    let pem: string;
    try {
      pem = readFileSync(path, 'utf8');
    } catch (e) {
      throw configError(`rootCert: cannot read ${path}: ${errorMessage(e)}`);
    }
    const fromFile = sha256Hex(pemCertificateToDer(pem, `rootCert ${path}`));
    if (c.rootCertSha256 !== undefined && fromFile !== rootSha256) {
      throw configError(`rootCert ${path} has SHA-256 ${fromFile}, which is not rootCertSha256 ${rootSha256}`);
    }
    rootSha256 = fromFile;
  }
  const pcrs = new Map<number, Buffer>();
  for (const [k, v] of Object.entries(c.pcrs ?? {})) pcrs.set(Number(k), Buffer.from(v, 'hex'));
  return { allowDebug: c.allowDebug === true, maxAgeSeconds, rootSha256, pcrs };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype;
}

const MODULE_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

function parseHello(hello: unknown): { moduleId?: string } {
  if (!isPlainObject(hello)) throw new SigilError('nitro.bad_hello', 'aws_nitro hello must be an object: {} or { "moduleId": "…" }');
  for (const k of Object.keys(hello)) {
    if (k !== 'moduleId') throw new SigilError('nitro.bad_hello', `aws_nitro hello has unknown key "${k.slice(0, 64)}"`);
  }
  const m = hello.moduleId;
  if (m === undefined) return {};
  if (typeof m !== 'string' || !MODULE_ID_RE.test(m)) throw new SigilError('nitro.bad_hello', 'aws_nitro hello moduleId must be 1..128 characters of A-Z a-z 0-9 . _ -');
  return { moduleId: m };
}

function parseResponse(response: unknown): Buffer {
  if (!isPlainObject(response)) throw new SigilError('nitro.bad_response', 'aws_nitro response must be { "document": "<base64>" }');
  for (const k of Object.keys(response)) {
    if (k !== 'document') throw new SigilError('nitro.bad_response', `aws_nitro response has unknown key "${k.slice(0, 64)}"`);
  }
  return decodeBase64(response.document, 'aws_nitro response document', { code: 'nitro.bad_response', maxBytes: MAX_DOCUMENT_BYTES });
}

export const nitroVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: NITRO_ATTESTOR_NAME,
  configSchema: nitroVerifierConfigSchema,
  create(config, deps) {
    const cfg = resolveConfig(config, deps.configDir);
    const cache = new NitroCertCache(1024);
    return {
      async begin(hello: unknown, _session: SessionInput) {
        const h = parseHello(hello);
        return { challenge: {}, state: h };
      },
      async finish(response: unknown, state: unknown, session: SessionInput): Promise<AttestorResult> {
        const doc = parseResponse(response);
        const v = verifyNitroDocument(doc, {
          at: session.now,
          rootSha256: cfg.rootSha256,
          allowDebug: cfg.allowDebug,
          maxAgeSeconds: cfg.maxAgeSeconds,
          expectedNonce: session.binding,
          expectedPublicKey: session.csrSpki,
          expectedPcrs: cfg.pcrs,
          cache,
        });
        const announced = (state as { moduleId?: string } | null)?.moduleId;
        if (announced !== undefined && announced !== v.moduleId) {
          throw new SigilError('nitro.module_id_mismatch', `document module_id ${v.moduleId} is not the module announced in hello (${announced})`, { status: 401 });
        }
        return { selectors: nitroSelectors(v), claims: nitroClaims(v), agentIdSuffix: v.moduleId };
      },
    };
  },
};

/** The /dev/nsm transport through the native addon, imported on first use. */
export const nativeNsmTransport: NsmTransport = async (request) => {
  // Imported lazily so that this module (and the verifier half) loads on machines without the
  // native build; loadSys() reports exactly what is missing (SigilError native.unavailable).
  let sys: import('../native/sys.js').SysAddon;
  try {
    sys = (await import('../native/sys.js')).loadSys();
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError('nitro.nsm_unavailable', `cannot load the native addon for /dev/nsm: ${errorMessage(e)}`, { status: 500, cause: e });
  }
  return sys.nsmRequest(request, NSM_RESPONSE_MAX_SIZE);
};

/** Build the agent half with a given NSM transport (tests inject one that plays the NSM). */
export function makeNitroAgentPlugin(opts: { transport?: NsmTransport } = {}): NodeAttestorAgentPlugin {
  const transport = opts.transport ?? nativeNsmTransport;
  return {
    name: NITRO_ATTESTOR_NAME,
    configSchema: { type: 'object', additionalProperties: false, properties: {} },
    create() {
      return {
        async hello() {
          return {};
        },
        async respond(challenge, session) {
          if (!isPlainObject(challenge) || Object.keys(challenge).length !== 0) {
            throw new SigilError('nitro.bad_challenge', 'aws_nitro challenge must be {}');
          }
          const request = encodeAttestationRequest({ nonce: session.binding, publicKey: session.csrSpki, userData: null });
          let raw: Buffer;
          try {
            raw = await transport(request);
          } catch (e) {
            if (e instanceof SigilError) throw e;
            throw new SigilError('nitro.nsm_unavailable', `NSM request failed: ${errorMessage(e)}`, { status: 500, cause: e });
          }
          const document = decodeAttestationResponse(raw);
          return { document: document.toString('base64') };
        },
      };
    },
  };
}

export const nitroAgentPlugin: NodeAttestorAgentPlugin = makeNitroAgentPlugin();
