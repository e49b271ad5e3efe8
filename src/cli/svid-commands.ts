/**
 * `sigil svid fetch|jwt` (DESIGN §9): a Workload API client for the operator's shell and for
 * scripts, plus the Workload API probe behind `sigil healthcheck --socket`.
 * Socket: --socket, else SPIFFE_ENDPOINT_SOCKET (unix:///path or unix:/path), else /run/sigil/agent.sock.
 */
import { X509Certificate } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { SigilError, isSigilError, errorMessage } from '../errors.js';
import { certsToPem, derToPem } from '../spiffe/pem.js';
import { replaceFileAtomic } from '../util/atomic-file.js';
import { WorkloadApiClient, resolveWorkloadSocket, type FetchedX509Svid } from '../workload/client.js';
import { EXIT_FAILED, UsageError, terminalText } from './output.js';

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function timeoutArg(v: string): number {
  if (!/^\d{1,6}$/.test(v) || Number(v) < 1) throw new UsageError(`--timeout must be a whole number of seconds (1..999999), got "${v}"`);
  return Number(v) * 1000;
}

function notAfterOf(der: Buffer): string {
  try {
    return new Date(new X509Certificate(der).validTo).toISOString();
  } catch {
    return 'unknown';
  }
}

/**
 * Writes DIR/svid.pem (leaf first, then intermediates), DIR/key.pem (0600), DIR/bundle.pem, each
 * through util/atomic-file.ts: a new O_EXCL temp file renamed into place, so a file or symlink
 * planted in a directory others can write receives nothing.
 */
export function writeSvidFiles(dir: string, svid: FetchedX509Svid): string[] {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const files = [join(dir, 'svid.pem'), join(dir, 'key.pem'), join(dir, 'bundle.pem')] as const;
  replaceFileAtomic(files[1], derToPem(svid.keyPkcs8Der, 'PRIVATE KEY'), 0o600);
  replaceFileAtomic(files[0], certsToPem(svid.chain), 0o644);
  replaceFileAtomic(files[2], certsToPem(svid.bundle), 0o644);
  return [...files];
}

function failJson(e: unknown): void {
  const err = isSigilError(e) ? e.toJSON() : { code: 'internal', message: errorMessage(e) };
  process.stdout.write(JSON.stringify({ ok: false, error: err }) + '\n');
  process.exitCode = EXIT_FAILED;
}

export function registerSvidCommands(program: Command): void {
  const svid = program.command('svid').description('SPIFFE Workload API client: the SVIDs of the calling process');

  svid
    .command('fetch')
    .description('fetch this process\'s X.509-SVIDs from the Workload API')
    .option('--socket <path>', 'Workload API socket (unix:///path or a path; default $SPIFFE_ENDPOINT_SOCKET or /run/sigil/agent.sock)')
    .option('--write <dir>', 'write svid.pem (leaf first), key.pem (0600) and bundle.pem of the default SVID into DIR')
    .option('--json', 'print one JSON object')
    .option('--timeout <seconds>', 'give up after this long (default 10)', timeoutArg)
    .action(async (o: { socket?: string; write?: string; json?: boolean; timeout?: number }) => {
      const socket = resolveWorkloadSocket(o.socket);
      const client = new WorkloadApiClient(socket);
      try {
        const ctx = await client.fetchX509Context(o.timeout ?? 10_000);
        const first = ctx.svids[0]!;
        const written = o.write ? writeSvidFiles(o.write, first) : [];
        if (o.json) {
          process.stdout.write(
            JSON.stringify({
              ok: true,
              svids: ctx.svids.map((s) => ({
                spiffeId: s.spiffeId,
                hint: s.hint,
                expiresAt: notAfterOf(s.chain[0]!),
                chainLength: s.chain.length,
                bundleCertificates: s.bundle.length,
              })),
              federatedTrustDomains: [...ctx.federatedBundles.keys()],
              written,
            }) + '\n',
          );
          return;
        }
        ctx.svids.forEach((s, i) => {
          process.stdout.write(
            `SPIFFE ID: ${terminalText(s.spiffeId)}${i === 0 ? ' (default)' : ''}\n` +
              (s.hint ? `Hint: ${terminalText(s.hint)}\n` : '') +
              `Expires: ${notAfterOf(s.chain[0]!)}\nChain: ${s.chain.length} certificate(s); bundle: ${s.bundle.length} CA certificate(s)\n`,
          );
        });
        if (ctx.federatedBundles.size > 0) process.stdout.write(`Federated trust domains: ${terminalText([...ctx.federatedBundles.keys()].join(', '))}\n`);
        if (written.length > 0) process.stdout.write(`wrote ${written.join(', ')}\n`);
      } catch (e) {
        if (o.json) failJson(e);
        else throw e;
      } finally {
        client.close();
      }
    });

  svid
    .command('jwt')
    .description('fetch a JWT-SVID for an audience and print it')
    .option('--audience <aud>', 'audience (repeatable; at least one)', collect)
    .option('--spiffe-id <id>', 'the SPIFFE ID to fetch a token for (default: the default identity)')
    .option('--socket <path>', 'Workload API socket (unix:///path or a path; default $SPIFFE_ENDPOINT_SOCKET or /run/sigil/agent.sock)')
    .option('--timeout <seconds>', 'give up after this long (default 10)', timeoutArg)
    .action(async (o: { audience?: string[]; spiffeId?: string; socket?: string; timeout?: number }) => {
      if (!o.audience || o.audience.length === 0) throw new UsageError('--audience is required (repeatable)');
      const socket = resolveWorkloadSocket(o.socket);
      const client = new WorkloadApiClient(socket);
      try {
        const svids = await client.fetchJwtSvids(o.audience, o.spiffeId, o.timeout ?? 10_000);
        const pick = o.spiffeId ? svids.find((s) => s.spiffeId === o.spiffeId) : svids[0];
        if (!pick) throw new SigilError('workload_client.empty_response', `the Workload API returned no JWT-SVID for ${o.spiffeId ?? 'this process'}`);
        process.stdout.write(pick.token + '\n');
        if (!o.spiffeId && svids.length > 1) {
          process.stderr.write(`note: ${svids.length - 1} more identit${svids.length === 2 ? 'y' : 'ies'} available; choose one with --spiffe-id\n`);
        }
      } finally {
        client.close();
      }
    });
}

/**
 * Probe an agent's Workload API: connect and wait for the first FetchX509Bundles message (no
 * workload identity needed). Throws SigilError('workload_client.unhealthy', …) on failure.
 */
export async function workloadHealthcheck(socket: string, timeoutMs = 5000): Promise<void> {
  const path = resolveWorkloadSocket(socket);
  const client = new WorkloadApiClient(path);
  try {
    const bundles = await client.fetchX509Bundles(timeoutMs);
    if (bundles.size === 0) throw new SigilError('workload_client.unhealthy', `agent at ${path} returned no trust bundle`);
  } catch (e) {
    if (isSigilError(e) && e.code === 'workload_client.unhealthy') throw e;
    throw new SigilError('workload_client.unhealthy', `agent at ${path} is not healthy: ${errorMessage(e)}`, { cause: e });
  } finally {
    client.close();
  }
}
