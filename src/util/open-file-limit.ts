/**
 * The process's open-file limit (RLIMIT_NOFILE, soft), read from /proc/self/limits: Node has no
 * getrlimit. Every connection a server holds is a descriptor, so a connection cap above this limit
 * cannot be reached: connections past the limit fail at accept with EMFILE instead of being refused
 * cleanly by the cap. Pure parsing is separate from the read.
 */
import { readFileSync } from 'node:fs';

/** The soft "Max open files" value of a /proc/<pid>/limits text; undefined when unlimited or absent. */
export function parseOpenFileLimit(limits: string): number | undefined {
  const m = /^Max open files[ \t]+(\S+)[ \t]+(\S+)/m.exec(limits);
  if (!m || m[1] === 'unlimited') return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** This process's soft open-file limit, or undefined where /proc/self/limits cannot be read (not Linux) or says unlimited. */
export function openFileLimit(path = '/proc/self/limits'): number | undefined {
  try {
    return parseOpenFileLimit(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Descriptors the process needs besides its connections (datastore, log, admin socket, PostgreSQL
 * pool, CA files, libuv): a margin, not a count.
 */
export const DESCRIPTOR_MARGIN = 256;

/** A one-line warning when `maxConnections` plus the margin does not fit under `limit`, else undefined. */
export function connectionCapWarning(what: string, maxConnections: number, limit: number | undefined): string | undefined {
  if (limit === undefined || maxConnections + DESCRIPTOR_MARGIN <= limit) return undefined;
  return `${what} ${maxConnections} does not fit under the open-file limit ${limit} (with ${DESCRIPTOR_MARGIN} descriptors kept for the rest): connections past about ${Math.max(0, limit - DESCRIPTOR_MARGIN)} will fail with EMFILE instead of being refused by the cap; raise the limit (systemd LimitNOFILE=, ulimit -n) or lower ${what}`;
}
