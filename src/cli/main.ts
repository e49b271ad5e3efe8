/** `sigil` command line (DESIGN §9). Exit 0 success, 1 failed/rejected (one-line reason), 2 usage error. */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { SigilError, errorMessage } from '../errors.js';
import { adminCall } from './admin-client.js';
import { registerAgentRun } from './agent-run.js';
import { registerFederationCommands } from './federation-commands.js';
import { registerEventLogCommand, registerNitroEvidence, registerSevEvidence, registerTdxEvidence, registerTpmEvidence } from './evidence-commands.js';
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, terminalText } from './output.js';
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

/** The package's version, from its package.json (two levels up from both src/cli and dist/cli). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new SigilError('cli.package_json_invalid', 'package.json has no version string');
  return pkg.version;
}

export function buildProgram(): Command {
  const program = new Command('sigil')
    .description('Sigil: SPIFFE identities earned by hardware-rooted, multi-factor attestation')
    .version(packageVersion())
    .showHelpAfterError(false);
  registerVerifierRun(program);
  const agent = program.command('agent').description('the node agent, and agents known to the verifier');
  registerAgentRun(agent);
  registerAgentAdminCommands(agent);
  registerEntryCommands(program);
  registerTokenCommands(program);
  registerBundleCommands(program);
  registerFederationCommands(program);
  registerMintCommands(program);
  registerSvidCommands(program);
  const evidence = program.command('evidence').description('offline evidence verification');
  const verify = evidence.command('verify').description('verify an evidence file offline');
  registerEventLogCommand(evidence);
  registerTpmEvidence(verify);
  registerNitroEvidence(verify);
  registerSevEvidence(verify);
  registerTdxEvidence(verify);
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

/**
 * A closed stdout or stderr (`sigil svid fetch | head -1`) ends the command quietly, as SIGPIPE
 * ends a C program, instead of an unhandled EPIPE with a stack trace: stdout closed → exit with the
 * exit code set so far (0 unless something already failed), since the reader chose to stop
 * reading; stderr closed → nothing more can be reported there, so its EPIPE is ignored. Any other
 * stream error is reported on stderr (when it still works) and exits 1. Installed once per process.
 */
let pipeGuardInstalled = false;
export function installClosedPipeGuard(): void {
  if (pipeGuardInstalled) return;
  pipeGuardInstalled = true;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT_OK);
    try {
      process.stderr.write(`sigil: cannot write to stdout: ${err.code ?? err.message}\n`);
    } catch {
      // stderr gone too: nothing left to tell
    }
    process.exit(EXIT_FAILED);
  });
  process.stderr.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') return;
    process.exitCode = EXIT_FAILED;
  });
}

export async function main(argv: string[]): Promise<void> {
  installClosedPipeGuard();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
        // Help asked for (--help, `sigil help`) exits 0; help shown because a command group was
        // given no subcommand (`sigil agent`) is a usage error.
        process.exitCode = e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
        return;
      }
      process.exitCode = EXIT_USAGE;
      return;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`sigil: ${terminalText(e.message)}\n`);
      process.exitCode = EXIT_USAGE;
      return;
    }
    if (e instanceof SigilError) {
      process.stderr.write(`sigil: ${terminalText(e.code)}: ${terminalText(e.message)}\n`);
      process.exitCode = EXIT_FAILED;
      return;
    }
    process.stderr.write(`sigil: internal error: ${terminalText(errorMessage(e))}\n`);
    process.exitCode = EXIT_FAILED;
  }
}
