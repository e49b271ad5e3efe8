/** Operator commands that talk to the verifier (DESIGN §9): verifier run, entry, token, agent list/evict, bundle, x509/jwt mint. */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { createCsr } from '../spiffe/csr.js';
import { generateKey } from '../spiffe/keys.js';
import { certsToPem } from '../spiffe/x509svid.js';
import type { AgentRecord, RegistrationEntry } from '../store/types.js';
import { adminCall, DEFAULT_ADMIN_SOCKET } from './admin-client.js';
import { replaceFileAtomic } from '../util/atomic-file.js';
import { UsageError, terminalText } from './output.js';

export function adminSocketOf(opts: { adminSocket?: string }): string {
  return opts.adminSocket ?? process.env.SIGIL_ADMIN_SOCKET ?? DEFAULT_ADMIN_SOCKET;
}

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function intArg(name: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new UsageError(`${name} must be whole seconds`);
    return Number(v);
  };
}

const withSocket = (c: Command): Command => c.option('--admin-socket <path>', 'verifier admin socket (default $SIGIL_ADMIN_SOCKET or /run/sigil/admin.sock)');

/** `obj` as JSON, or `text` with its control characters (other than the line breaks) escaped: it quotes the verifier's records. */
function out(json: boolean, obj: unknown, text: string): void {
  const safe = terminalText(text, true);
  process.stdout.write(json ? JSON.stringify(obj) + '\n' : safe.endsWith('\n') ? safe : safe + '\n');
}

export function registerVerifierRun(program: Command): void {
  program
    .command('verifier')
    .description('the attestation verifier and CA')
    .command('run')
    .description('run the verifier')
    .requiredOption('--config <file>', 'verifier config (YAML or JSON)')
    .action(async (o: { config: string }) => {
      // Imported here so that other commands (the agent daemon above all) do not load the verifier.
      const { loadVerifierConfig } = await import('../verifier/config.js');
      const { startVerifier } = await import('../verifier/server.js');
      const cfg = loadVerifierConfig(o.config);
      const v = await startVerifier(cfg);
      const stop = async (sig: string) => {
        v.core.logger.info({ sig }, 'shutting down');
        await v.close();
        process.exit(0);
      };
      process.once('SIGTERM', () => void stop('SIGTERM'));
      process.once('SIGINT', () => void stop('SIGINT'));
      await new Promise(() => undefined);
    });
}

export function registerEntryCommands(program: Command): void {
  const entry = program.command('entry').description('registration entries');
  withSocket(
    entry
      .command('create')
      .description('create a registration entry')
      .requiredOption('--spiffe-id <id>', 'SPIFFE ID to issue')
      .requiredOption('--parent-id <id>', 'agent ID or node entry ID it is served under')
      .requiredOption('--selector <type:value>', 'selector (repeatable; all must match)', collect)
      .option('--x509-ttl <seconds>', 'X.509-SVID TTL', intArg('--x509-ttl'))
      .option('--jwt-ttl <seconds>', 'JWT-SVID TTL', intArg('--jwt-ttl'))
      .option('--dns <name>', 'DNS SAN (repeatable)', collect)
      .option('--hint <hint>', 'hint passed to workloads')
      .option('--admin', 'mark the entry as admin')
      .option('--federates-with <td>', 'foreign trust domain whose bundle the workloads receive (repeatable)', collect)
      .option('--json', 'print the entry as JSON'),
  ).action(async (o: { spiffeId: string; parentId: string; selector: string[]; x509Ttl?: number; jwtTtl?: number; dns?: string[]; hint?: string; admin?: boolean; federatesWith?: string[]; json?: boolean; adminSocket?: string }) => {
    const body = {
      spiffeId: o.spiffeId,
      parentId: o.parentId,
      selectors: o.selector,
      ...(o.x509Ttl !== undefined ? { x509SvidTtl: o.x509Ttl } : {}),
      ...(o.jwtTtl !== undefined ? { jwtSvidTtl: o.jwtTtl } : {}),
      ...(o.dns ? { dnsNames: o.dns } : {}),
      ...(o.hint !== undefined ? { hint: o.hint } : {}),
      ...(o.admin ? { admin: true } : {}),
      ...(o.federatesWith ? { federatesWith: o.federatesWith } : {}),
    };
    const e = await adminCall<RegistrationEntry>(adminSocketOf(o), 'POST', '/v1/admin/entries', body);
    out(o.json === true, e, `Entry ID: ${e.id}\nSPIFFE ID: ${e.spiffeId}\nParent ID: ${e.parentId}\nSelectors: ${e.selectors.join(', ')}`);
  });
  withSocket(entry.command('list').description('list registration entries').option('--json', 'JSON output').option('--parent-id <id>').option('--spiffe-id <id>')).action(
    async (o: { json?: boolean; adminSocket?: string; parentId?: string; spiffeId?: string }) => {
      const q = new URLSearchParams();
      if (o.parentId) q.set('parentId', o.parentId);
      if (o.spiffeId) q.set('spiffeId', o.spiffeId);
      const { entries } = await adminCall<{ entries: RegistrationEntry[] }>(adminSocketOf(o), 'GET', `/v1/admin/entries${q.size ? '?' + q.toString() : ''}`);
      const text = entries.map((e) => `${e.id}  ${e.spiffeId}  parent=${e.parentId}  ${e.selectors.join(',')}`).join('\n') || '(no entries)';
      out(o.json === true, { entries }, text);
    },
  );
  withSocket(entry.command('delete').description('delete a registration entry').argument('<id>', 'entry ID')).action(async (id: string, o: { adminSocket?: string }) => {
    await adminCall(adminSocketOf(o), 'DELETE', `/v1/admin/entries/${encodeURIComponent(id)}`);
    out(false, null, `deleted ${id}`);
  });
}

export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('join tokens');
  withSocket(
    token
      .command('generate')
      .description('make a single-use join token')
      .option('--ttl <seconds>', 'lifetime (default 600)', intArg('--ttl'))
      .option('--spiffe-id <id>', 'node alias: the agent that uses the token is also known as this ID')
      .option('--json', 'JSON output'),
  ).action(async (o: { ttl?: number; spiffeId?: string; json?: boolean; adminSocket?: string }) => {
    const t = await adminCall<{ token: string; tokenId: string; agentId: string; expiresAt: string; aliasEntryId?: string }>(adminSocketOf(o), 'POST', '/v1/admin/tokens', {
      ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
      ...(o.spiffeId ? { spiffeId: o.spiffeId } : {}),
    });
    out(o.json === true, t, `Token: ${t.token}\nAgent ID: ${t.agentId}\nExpires: ${t.expiresAt}${t.aliasEntryId ? `\nAlias entry: ${t.aliasEntryId}` : ''}`);
  });
}

export function registerAgentAdminCommands(agent: Command): void {
  withSocket(agent.command('list').description('list attested agents').option('--json', 'JSON output')).action(async (o: { json?: boolean; adminSocket?: string }) => {
    const { agents } = await adminCall<{ agents: AgentRecord[] }>(adminSocketOf(o), 'GET', '/v1/admin/agents');
    const text = agents.map((a) => `${a.id}  attestors=${a.attestors.join('+')}  svid-expires=${a.svidExpiresAt}${a.banned ? '  BANNED' : ''}`).join('\n') || '(no agents)';
    out(o.json === true, { agents }, text);
  });
  withSocket(
    agent
      .command('evict')
      .description(
        'evict an agent: it must attest again, as must every agent that presented <id> as a factor; the TPM counters ' +
          '(and other attestor state) of their factors are reset, so a node whose TPM was cleared can enrol again. ' +
          '--ban instead keeps <id> out: attestation with it and every agent that presented it as a factor are refused',
      )
      .argument('<id>', 'agent SPIFFE ID (its own, or that of a factor it attested with)')
      .option('--ban', 'keep it out (lift the ban later with evict without --ban)'),
  ).action(
    async (id: string, o: { ban?: boolean; adminSocket?: string }) => {
      await adminCall(adminSocketOf(o), 'POST', '/v1/admin/agents/evict', { id, ban: o.ban === true });
      out(false, null, `${o.ban ? 'banned' : 'evicted'} ${id}`);
    },
  );
}

export function registerBundleCommands(program: Command): void {
  const bundle = program.command('bundle').description('trust bundle');
  withSocket(bundle.command('show').description('print the trust bundle').option('--format <pem|spiffe>', 'pem (default) or spiffe (JWKS)', 'pem')).action(
    async (o: { format: string; adminSocket?: string }) => {
      if (o.format !== 'pem' && o.format !== 'spiffe') throw new UsageError('--format must be pem or spiffe');
      const r = await adminCall<unknown>(adminSocketOf(o), 'GET', `/v1/admin/bundle?format=${o.format}`);
      process.stdout.write(typeof r === 'string' ? r : JSON.stringify(r, null, 2) + '\n');
    },
  );
}

export function registerMintCommands(program: Command): void {
  withSocket(
    program
      .command('x509')
      .description('X.509-SVIDs')
      .command('mint')
      .description('mint an X.509-SVID (the key is made here and never sent)')
      .requiredOption('--spiffe-id <id>', 'SPIFFE ID')
      .option('--ttl <seconds>', 'lifetime', intArg('--ttl'))
      .option('--dns <name>', 'DNS SAN (repeatable)', collect)
      .option('--write <dir>', 'write svid.pem (leaf first), key.pem and bundle.pem into DIR'),
  ).action(async (o: { spiffeId: string; ttl?: number; dns?: string[]; write?: string; adminSocket?: string }) => {
    const key = generateKey('ec-p256');
    const csr = createCsr(key);
    const r = await adminCall<{ chain: string[]; bundlePem: string; expiresAt: string; spiffeId: string }>(adminSocketOf(o), 'POST', '/v1/admin/x509', {
      spiffeId: o.spiffeId,
      csr: csr.toString('base64'),
      ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
      ...(o.dns ? { dnsNames: o.dns } : {}),
    });
    const svidPem = certsToPem(r.chain.map((c) => Buffer.from(c, 'base64')));
    const keyPem = key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
    if (o.write) {
      mkdirSync(o.write, { recursive: true, mode: 0o755 });
      // New files renamed into place: an existing key.pem (0644, or another user's) is replaced, never written through.
      replaceFileAtomic(join(o.write, 'key.pem'), keyPem, 0o600);
      replaceFileAtomic(join(o.write, 'svid.pem'), svidPem, 0o644);
      replaceFileAtomic(join(o.write, 'bundle.pem'), r.bundlePem, 0o644);
      process.stdout.write(`wrote ${join(o.write, 'svid.pem')}, key.pem, bundle.pem (SPIFFE ID ${r.spiffeId}, expires ${r.expiresAt})\n`);
    } else {
      process.stdout.write(`SPIFFE ID: ${r.spiffeId}\nExpires: ${r.expiresAt}\n${svidPem}${keyPem}`);
    }
  });
  withSocket(
    program
      .command('jwt')
      .description('JWT-SVIDs')
      .command('mint')
      .description('mint a JWT-SVID and print it')
      .requiredOption('--spiffe-id <id>', 'SPIFFE ID')
      .requiredOption('--audience <aud>', 'audience (repeatable)', collect)
      .option('--ttl <seconds>', 'lifetime', intArg('--ttl')),
  ).action(async (o: { spiffeId: string; audience: string[]; ttl?: number; adminSocket?: string }) => {
    const r = await adminCall<{ token: string }>(adminSocketOf(o), 'POST', '/v1/admin/jwt', {
      spiffeId: o.spiffeId,
      audience: o.audience,
      ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
    });
    process.stdout.write(r.token + '\n');
  });
}
