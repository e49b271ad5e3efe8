import { SigilError, errorMessage } from '../errors.js';

/** Exit codes (DESIGN §9): 0 success, 1 rejected/failed, 2 usage error. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** Largest file the CLI reads from the command line (an IMA log of a long-running host is tens of MiB). */
export const MAX_INPUT_FILE_BYTES = 64 * 1024 * 1024;

/** C0 and C1 control characters, DEL, and the bidi embeddings, overrides and isolates. */
// eslint-disable-next-line no-control-regex
const UNSAFE_FOR_TERMINAL = /[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;
// eslint-disable-next-line no-control-regex
const UNSAFE_KEEP_NEWLINES = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  const n = c.charCodeAt(0);
  return n <= 0xff ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
}

/**
 * `v` as text safe to print on a terminal: every control character (an ESC sequence could rewrite
 * the screen, set the title or the clipboard; a newline could forge a line) shown as `\xNN` or
 * `\uNNNN`. For strings the CLI did not write itself: evidence, verifier answers, error messages.
 * `keepNewlines` for multi-line text the CLI built (pretty-printed JSON, whose strings are escaped).
 */
export function terminalText(v: unknown, keepNewlines = false): string {
  return String(v).replace(keepNewlines ? UNSAFE_KEEP_NEWLINES : UNSAFE_FOR_TERMINAL, escapeChar);
}

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
    process.stdout.write(`OK ${terminalText(outcome.attestor)}: evidence verified\n`);
    for (const s of outcome.selectors) process.stdout.write(`selector ${terminalText(s)}\n`);
    for (const [k, v] of Object.entries(outcome.claims)) {
      process.stdout.write(`claim ${terminalText(k)} = ${terminalText(typeof v === 'string' ? v : JSON.stringify(v))}\n`);
    }
  } else {
    process.stderr.write(`REJECTED ${terminalText(outcome.attestor)}: ${terminalText(outcome.error?.code)}: ${terminalText(outcome.error?.message)}\n`);
  }
  return outcome.ok ? EXIT_OK : EXIT_FAILED;
}

/** Turn a thrown error into a rejected outcome; non-SigilErrors get code `internal`. */
export function rejectedOutcome(attestor: string, e: unknown): EvidenceOutcome {
  const err = e instanceof SigilError ? { code: e.code, message: e.message } : { code: 'internal', message: errorMessage(e) };
  return { ok: false, attestor, selectors: [], claims: {}, error: err };
}
