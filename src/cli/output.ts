import { SigilError, errorMessage } from '../errors.js';

/** Exit codes (DESIGN §9): 0 success, 1 rejected/failed, 2 usage error. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** Thrown for bad command-line usage; main() maps it to exit code 2. */
export class UsageError extends SigilError {
  constructor(message: string) {
    super('cli.usage', message, { status: 400 });
  }
}

export interface EvidenceOutcome {
  ok: boolean;
  attestor: string;
  selectors: string[];
  claims: Record<string, unknown>;
  error?: { code: string; message: string };
}

/**
 * Print an evidence verification outcome and return the exit code.
 * With --json: exactly one JSON object on stdout. Without: a one-line verdict
 * (on stderr when rejected) followed by selectors and claims on success.
 */
export function printEvidenceOutcome(outcome: EvidenceOutcome, json: boolean): number {
  if (json) {
    process.stdout.write(JSON.stringify(outcome) + '\n');
  } else if (outcome.ok) {
    process.stdout.write(`OK ${outcome.attestor}: evidence verified\n`);
    for (const s of outcome.selectors) process.stdout.write(`selector ${s}\n`);
    for (const [k, v] of Object.entries(outcome.claims)) {
      process.stdout.write(`claim ${k} = ${typeof v === 'string' ? v : JSON.stringify(v)}\n`);
    }
  } else {
    process.stderr.write(`REJECTED ${outcome.attestor}: ${outcome.error?.code}: ${outcome.error?.message}\n`);
  }
  return outcome.ok ? EXIT_OK : EXIT_FAILED;
}

/** Turn a thrown error into a rejected outcome; non-SigilErrors get code `internal`. */
export function rejectedOutcome(attestor: string, e: unknown): EvidenceOutcome {
  const err = e instanceof SigilError ? { code: e.code, message: e.message } : { code: 'internal', message: errorMessage(e) };
  return { ok: false, attestor, selectors: [], claims: {}, error: err };
}
