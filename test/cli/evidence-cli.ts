/**
 * Runs the real `sigil` CLI as a child process for the `evidence-*` tests: exit code, stdout,
 * stderr, and stdout read as the one JSON object `--json` prints (when it is one).
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { cliArgv } from '../support/cli-argv.js';

const root = resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../..');

export interface EvidenceJson {
  ok: boolean;
  attestor: string;
  selectors: string[];
  claims: Record<string, unknown>;
  error?: { code: string; message: string };
}

export interface CliRun {
  code: number;
  out: string;
  err: string;
  /** stdout as the JSON object `--json` prints, or undefined when stdout is not one. */
  json: EvidenceJson | undefined;
}

export function sigil(args: string[]): Promise<CliRun> {
  const [cmd, ...pre] = cliArgv();
  return new Promise((res) => {
    execFile(cmd!, [...pre, ...args], { cwd: root, encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) => {
      let json: EvidenceJson | undefined;
      try {
        json = JSON.parse(stdout) as EvidenceJson;
      } catch {
        json = undefined;
      }
      res({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, out: stdout, err: stderr, json });
    });
  });
}
