// Runs the real CLI entry point from source (tests spawn it as a child process).
import { main } from '../../src/cli/main.js';

await main(process.argv);
