// Runs a verifier from a config file in a child process (used by crash tests).
import { loadVerifierConfig } from '../../src/verifier/config.js';
import { startVerifier } from '../../src/verifier/server.js';

const v = await startVerifier(loadVerifierConfig(process.argv[2] as string));
process.stdout.write(`READY ${v.port}\n`);
process.once('SIGTERM', () => void v.close().then(() => process.exit(0)));
