/**
 * `sigil evidence verify aws_nitro FILE [--at ISO] [--allow-debug] [--nonce HEX] [--root PEM] [--json]`
 *
 * Verifies a Nitro attestation document offline. Without --at the current time is used. maxAge is
 * not applied offline (there is no session to be fresh for); certificate validity is always checked
 * at the verification time. Without --root the built-in AWS Nitro Enclaves Root-G1 pin is used.
 */
import { SigilError, errorMessage } from '../errors.js';
import { readRegularFile } from '../util/config-file.js';
import { pemCertificateToDer, sha256Hex } from '../nitro/certs.js';
import { nitroClaims, nitroSelectors, verifyNitroDocument } from '../nitro/verify.js';
import { decodeEvidenceBytes, parseHexArg } from '../util/evidence-input.js';
import { parseAtTime } from './at-time.js';
import { EXIT_USAGE, MAX_INPUT_FILE_BYTES, printEvidenceOutcome, rejectedOutcome, UsageError } from './output.js';

const ATTESTOR = 'aws_nitro';

export interface NitroCliOptions {
  at?: string;
  allowDebug?: boolean;
  nonce?: string;
  root?: string;
  json?: boolean;
}

function readFileOrFail(path: string, what: string): Buffer {
  try {
    return readRegularFile(path, MAX_INPUT_FILE_BYTES);
  } catch (e) {
    throw new SigilError('input.unreadable', `cannot read ${what} ${path}: ${errorMessage(e)}`);
  }
}

/** Run the command; returns the exit code. Exported for in-process tests. */
export function runNitroEvidence(file: string, opts: NitroCliOptions): number {
  const json = opts.json === true;
  let at: Date;
  let nonce: Buffer | undefined;
  try {
    at = parseAtTime(opts.at);
    nonce = opts.nonce === undefined ? undefined : parseHexArg('--nonce', opts.nonce);
  } catch (e) {
    const msg = errorMessage(e);
    if (json) printEvidenceOutcome(rejectedOutcome(ATTESTOR, new UsageError(msg)), true);
    else process.stderr.write(`error: ${msg}\n`);
    return EXIT_USAGE;
  }
  try {
    const rootSha256 = opts.root === undefined ? undefined : sha256Hex(pemCertificateToDer(readFileOrFail(opts.root, '--root').toString('utf8'), `--root ${opts.root}`));
    const doc = decodeEvidenceBytes(readFileOrFail(file, 'evidence file'));
    const v = verifyNitroDocument(doc, {
      at,
      ...(rootSha256 === undefined ? {} : { rootSha256 }),
      allowDebug: opts.allowDebug === true,
      ...(nonce === undefined ? {} : { expectedNonce: nonce }),
    });
    return printEvidenceOutcome({ ok: true, attestor: ATTESTOR, selectors: nitroSelectors(v), claims: nitroClaims(v) }, json);
  } catch (e) {
    return printEvidenceOutcome(rejectedOutcome(ATTESTOR, e), json);
  }
}
