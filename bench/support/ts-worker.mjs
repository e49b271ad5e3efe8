// Starts a TypeScript module as a worker thread under tsx (workerData.entry: its file URL). Node 20
// does not pass the main thread's tsx loader on to workers, so each registers it itself.
import { register } from 'tsx/esm/api';
import { workerData } from 'node:worker_threads';

register();
await import(workerData.entry);
