/** `sigil` command line (DESIGN §9). Exit 0 success, 1 failed/rejected (one-line reason), 2 usage error. */
import { Command, CommanderError } from 'commander';
import { SigilError } from '../errors.js';
import { adminCall } from './admin-client.js';
import { registerAgentRun } from './agent-run.js';
import { registerNitroEvidence, registerSevEvidence, registerTpmEvidence } from './evidence-commands.js';
import { EXIT_FAILED, EXIT_USAGE, UsageError } from './output.js';
import { registerSvidCommands, workloadHealthcheck } from './svid-commands.js';
import {
  adminSocketOf,
  registerAgentAdminCommands,
  registerBundleCommands,
  registerEntryCommands,
  registerMintCommands,
  registerTokenCommands,
  registerVerifierRun,
} from './verifier-commands.js';

export function buildProgram(): Command {
  const program = new Command('sigil')
    .description('Sigil: SPIFFE identities earned by hardware-rooted, multi-factor attestation')
    .version('0.1.0')
    .showHelpAfterError(false);
  registerVerifierRun(program);
  const agent = program.command('agent').description('the node agent, and agents known to the verifier');
  registerAgentRun(agent);
  registerAgentAdminCommands(agent);
  registerEntryCommands(program);
  registerTokenCommands(program);
  registerBundleCommands(program);
  registerMintCommands(program);
  registerSvidCommands(program);
  const evidence = program.command('evidence').description('offline evidence verification');
  const verify = evidence.command('verify').description('verify an evidence file offline');
  registerTpmEvidence(verify);
  registerNitroEvidence(verify);
  registerSevEvidence(verify);
  program
    .command('healthcheck')
    .description('check a running agent (--socket: its Workload API) or verifier (its admin socket)')
    .option('--socket <path>', 'agent Workload API socket (unix:///path or a path)')
    .option('--admin-socket <path>', 'verifier admin socket')
    .action(async (o: { socket?: string; adminSocket?: string }) => {
      if (o.socket) {
        await workloadHealthcheck(o.socket);
        process.stdout.write('agent healthy\n');
        return;
      }
      await adminCall(adminSocketOf(o), 'GET', '/readyz', undefined, 5000);
      process.stdout.write('verifier ready\n');
    });
  // Usage errors exit 2 everywhere, including in subcommands.
  const applyExit = (c: Command) => {
    c.exitOverride();
    c.configureOutput({ writeErr: (s) => process.stderr.write(s) });
    for (const sub of c.commands) applyExit(sub);
  };
  applyExit(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
        process.exitCode = 0;
        return;
      }
      process.exitCode = EXIT_USAGE;
      return;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`sigil: ${e.message}\n`);
      process.exitCode = EXIT_USAGE;
      return;
    }
    if (e instanceof SigilError) {
      process.stderr.write(`sigil: ${e.code}: ${e.message}\n`);
      process.exitCode = EXIT_FAILED;
      return;
    }
    process.stderr.write(`sigil: internal error: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = EXIT_FAILED;
  }
}
