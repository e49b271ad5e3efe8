/** `sigil federation create|list|show|update|delete|refresh` (docs/federation.md), over the verifier's admin socket. */
import type { Command } from 'commander';
import { SigilError, errorMessage } from '../errors.js';
import { readRegularFile } from '../util/config-file.js';
import type { RelationshipView } from '../federation/service.js';
import { adminCall } from './admin-client.js';
import { MAX_INPUT_FILE_BYTES, UsageError, terminalText as t } from './output.js';
import { adminSocketOf } from './verifier-commands.js';

interface Opts {
  trustDomain?: string;
  bundleEndpointUrl?: string;
  profile?: string;
  endpointSpiffeId?: string;
  trustBundle?: string;
  webCa?: string;
  json?: boolean;
  adminSocket?: string;
}

function readInput(path: string, what: string): string {
  try {
    return readRegularFile(path, MAX_INPUT_FILE_BYTES).toString('utf8');
  } catch (e) {
    throw new SigilError('cli.file_unreadable', `cannot read ${what} ${path}: ${errorMessage(e)}`);
  }
}

function fields(o: Opts): Record<string, unknown> {
  return {
    ...(o.bundleEndpointUrl !== undefined ? { bundleEndpointUrl: o.bundleEndpointUrl } : {}),
    ...(o.profile !== undefined ? { profile: o.profile } : {}),
    ...(o.endpointSpiffeId !== undefined ? { endpointSpiffeId: o.endpointSpiffeId } : {}),
    ...(o.trustBundle !== undefined ? { initialBundle: readInput(o.trustBundle, '--trust-bundle') } : {}),
    ...(o.webCa !== undefined ? { webCaPem: readInput(o.webCa, '--web-ca') } : {}),
  };
}

function describe(r: RelationshipView): string {
  // Every value is escaped: the refresh error quotes what a foreign bundle endpoint sent.
  const lines = [
    `Trust domain: ${t(r.trustDomain)}`,
    `Bundle endpoint: ${t(r.bundleEndpointUrl)} (${t(r.profile)}${r.endpointSpiffeId ? `, ${t(r.endpointSpiffeId)}` : ''})`,
    `Bundle: ${r.bundleSequence === null ? 'none yet' : `sequence ${t(r.bundleSequence)}, ${t(r.x509Authorities)} X.509 / ${t(r.jwtAuthorities)} JWT authorities, accepted ${t(r.bundleUpdatedAt)}`}`,
  ];
  if (r.declaredInConfig) lines.push('Declared in the verifier config (change it there; only --trust-bundle is taken at run time)');
  if (r.refresh.lastSuccessAt) lines.push(`Last refresh: ${t(r.refresh.lastSuccessAt)}`);
  if (r.refresh.lastError) lines.push(`Last error: ${t(r.refresh.lastError.code)}: ${t(r.refresh.lastError.message)} (${t(r.refresh.consecutiveFailures)} in a row)`);
  if (r.refresh.nextRefreshAt) lines.push(`Next refresh: ${t(r.refresh.nextRefreshAt)}`);
  return lines.join('\n');
}

function print(json: boolean | undefined, obj: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(obj)}\n` : `${text}\n`);
}

const path = (td: string) => `/v1/admin/federations/${encodeURIComponent(td)}`;

function withCommon(c: Command): Command {
  return c
    .option('--bundle-endpoint-url <url>', 'https URL of the foreign bundle endpoint')
    .option('--profile <profile>', 'https_web or https_spiffe')
    .option('--endpoint-spiffe-id <id>', 'https_spiffe: SPIFFE ID of the endpoint server')
    .option('--trust-bundle <file>', 'initial bundle of the foreign trust domain (SPIFFE JSON or PEM); required for https_spiffe')
    .option('--web-ca <file>', 'https_web: PEM roots to trust instead of the system roots')
    .option('--json', 'JSON output')
    .option('--admin-socket <path>', 'verifier admin socket (default $SIGIL_ADMIN_SOCKET or /run/sigil/admin.sock)');
}

export function registerFederationCommands(program: Command): void {
  const fed = program.command('federation').description('SPIFFE Federation relationships with other trust domains');
  withCommon(fed.command('create').description('federate with a foreign trust domain').requiredOption('--trust-domain <td>', 'the foreign trust domain')).action(async (o: Opts) => {
    if (!o.bundleEndpointUrl || !o.profile) throw new UsageError('federation create needs --bundle-endpoint-url and --profile');
    const r = await adminCall<RelationshipView>(adminSocketOf(o), 'POST', '/v1/admin/federations', { trustDomain: o.trustDomain, ...fields(o) });
    print(o.json, r, describe(r));
  });
  withCommon(fed.command('update').description('change a relationship').argument('<trust-domain>')).action(async (td: string, o: Opts) => {
    const body = fields(o);
    if (Object.keys(body).length === 0) throw new UsageError('federation update needs at least one of --bundle-endpoint-url, --profile, --endpoint-spiffe-id, --trust-bundle, --web-ca');
    const r = await adminCall<RelationshipView>(adminSocketOf(o), 'PATCH', path(td), body);
    print(o.json, r, describe(r));
  });
  fed
    .command('list')
    .description('list relationships')
    .option('--json', 'JSON output')
    .option('--admin-socket <path>', 'verifier admin socket')
    .action(async (o: Opts) => {
      const r = await adminCall<{ relationships: RelationshipView[] }>(adminSocketOf(o), 'GET', '/v1/admin/federations');
      print(o.json, r, r.relationships.map(describe).join('\n\n') || '(no federation relationships)');
    });
  fed
    .command('show')
    .description('show a relationship and its last good bundle')
    .argument('<trust-domain>')
    .option('--json', 'JSON output')
    .option('--admin-socket <path>', 'verifier admin socket')
    .action(async (td: string, o: Opts) => {
      const r = await adminCall<RelationshipView & { bundle: unknown }>(adminSocketOf(o), 'GET', path(td));
      print(o.json, r, `${describe(r)}\n${t(JSON.stringify(r.bundle, null, 2), true)}`);
    });
  fed
    .command('delete')
    .description('cut a relationship (its bundle is no longer given to agents)')
    .argument('<trust-domain>')
    .option('--admin-socket <path>', 'verifier admin socket')
    .action(async (td: string, o: Opts) => {
      await adminCall(adminSocketOf(o), 'DELETE', path(td));
      print(false, null, `deleted ${t(td)}`);
    });
  fed
    .command('refresh')
    .description('fetch the foreign bundle now')
    .argument('<trust-domain>')
    .option('--json', 'JSON output')
    .option('--admin-socket <path>', 'verifier admin socket')
    .action(async (td: string, o: Opts) => {
      const r = await adminCall<RelationshipView>(adminSocketOf(o), 'POST', `${path(td)}/refresh`);
      print(o.json, r, describe(r));
    });
}
