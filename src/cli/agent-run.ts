/** `sigil agent run --config FILE` (DESIGN §9): runs the node agent until SIGTERM/SIGINT. */
import type { Command } from 'commander';
import { pino } from 'pino';
import { startAgent } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { errorFields } from '../errors.js';

export function registerAgentRun(agentCmd: Command): void {
  agentCmd
    .command('run')
    .description('run the node agent: attest this node, then serve the SPIFFE Workload API')
    .requiredOption('--config <file>', 'agent config (YAML or JSON)')
    .action(async (o: { config: string }) => {
      // Bad config, unusable plugins or dataDir fail here (exit 1 with a one-line reason via main);
      // an unreachable verifier does not: the agent keeps retrying with backoff and logs it.
      const cfg = loadAgentConfig(o.config);
      const logger = pino({ level: cfg.logLevel, base: { svc: 'sigil-agent' } });
      const agent = await startAgent(cfg, { logger });
      let stopping = false;
      const stop = (sig: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ sig }, 'shutting down');
        const force = setTimeout(() => process.exit(1), 15_000);
        force.unref();
        void agent.close().then(
          () => process.exit(0),
          (e: unknown) => {
            logger.error(errorFields(e), 'error during shutdown');
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      await new Promise(() => undefined);
    });
}
