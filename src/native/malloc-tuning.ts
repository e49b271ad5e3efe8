/**
 * The verifier's one C-library allocator setting (`mallocMmapThreshold`, docs/api.md "Memory per
 * connection"). Node's TLS layer gives every connection a 64 KiB read buffer from malloc on its first
 * read and keeps it for the connection's life, though a connection carrying small requests touches a
 * few KiB of it. Out of glibc's heap those buffers reuse pages that earlier allocations touched, so
 * most of each is resident; served by a mapping of its own, only the pages written are. glibc maps
 * an allocation of its own when it is at or above the mmap threshold and no free heap chunk fits it
 * (where the heap would otherwise grow). Its own threshold starts at 128 KiB and rises as large
 * blocks are freed, so it never covers these buffers; the verifier sets it to 64 KiB by default.
 * Larger blocks freed by the process's own work (SQLite's, on a verifier) are then unmapped rather
 * than left as touched free pages in the heap.
 */
import { SigilError, errorMessage } from '../errors.js';
import type { SysAddon } from './sys.js';

/** Node's TLS read buffer is 65,536 bytes (libuv's suggested read size): at this threshold it gets its own mapping. */
export const DEFAULT_MMAP_THRESHOLD = 65_536;
/** Below this, ordinary allocations would each become a system call. */
export const MIN_MMAP_THRESHOLD = 16_384;
/** Some glibc versions refuse thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit). */
export const MAX_MMAP_THRESHOLD = 33_554_432;

/** The config key's JSON Schema. */
export const mmapThresholdSchema = { type: 'integer', minimum: 0, maximum: MAX_MMAP_THRESHOLD, default: DEFAULT_MMAP_THRESHOLD } as const;

/** `value` as validated by mmapThresholdSchema, or config.invalid naming `where` (e.g. "verifier config"). */
export function checkMmapThreshold(value: number, where: string): number {
  if (value !== 0 && value < MIN_MMAP_THRESHOLD) {
    throw new SigilError('config.invalid', `${where}: /mallocMmapThreshold must be 0 (the C library decides) or at least ${MIN_MMAP_THRESHOLD} bytes: below that every small allocation would be a system call`);
  }
  return value;
}

export interface MmapThresholdOutcome {
  applied: boolean;
  /** How loud the start-up line should be: a warning only when the operator's choice could not be applied. */
  level: 'info' | 'warn';
  message: string;
}

/**
 * Applies `bytes` (0: leave the C library alone). The environment variable glibc reads at start
 * (`MALLOC_MMAP_THRESHOLD_`) wins over the config: whoever set it meant that process. `sys` is the
 * native addon's loader; without the addon the setting is skipped with a warning, not a failure.
 */
export function applyMallocMmapThreshold(bytes: number, env: NodeJS.ProcessEnv, sys: () => Pick<SysAddon, 'setMallocMmapThreshold'>): MmapThresholdOutcome {
  if (bytes === 0) return { applied: false, level: 'info', message: 'mallocMmapThreshold is 0: the C library keeps its own mmap threshold' };
  const fromEnv = env.MALLOC_MMAP_THRESHOLD_;
  if (fromEnv !== undefined && fromEnv !== '') {
    return { applied: false, level: 'info', message: `MALLOC_MMAP_THRESHOLD_=${fromEnv} is set in the environment: it is used instead of mallocMmapThreshold (${bytes})` };
  }
  let r: 'set' | 'refused' | 'not_glibc';
  try {
    r = sys().setMallocMmapThreshold(bytes);
  } catch (e) {
    return { applied: false, level: 'warn', message: `mallocMmapThreshold (${bytes}) not applied: ${errorMessage(e)}; large buffers then come from glibc's heap as before` };
  }
  if (r === 'set') return { applied: true, level: 'info', message: `allocations of ${bytes} bytes or more get mappings of their own (mallocMmapThreshold)` };
  if (r === 'not_glibc') return { applied: false, level: 'info', message: `mallocMmapThreshold (${bytes}) not applied: the C library is not glibc` };
  return { applied: false, level: 'warn', message: `mallocMmapThreshold (${bytes}) not applied: glibc refused the value` };
}
