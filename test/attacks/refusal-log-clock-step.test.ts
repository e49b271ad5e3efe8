/**
 * The refusal log's rate limit runs on the verifier clock. After a step back of that clock the
 * window that was open looked like it began in the future, so every refusal of that code was
 * suppressed, unlogged, until the clock caught up (an hour for a one-hour step): a flood during
 * that time left no trace in the log.
 */
import type { FastifyRequest } from 'fastify';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { RefusalLog } from '../../src/verifier/http-common.js';

describe('refusal log after the verifier clock steps back', () => {
  it('logs again once a window has passed on the new clock', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (s: string) => lines.push(s) });
    let t = 1_800_000_000_000;
    const log = new RefusalLog(logger, undefined, { burst: 2, intervalMs: 10_000, now: () => t });
    const req = { url: '/v1/attest', method: 'POST', ip: '192.0.2.1' } as unknown as FastifyRequest;
    for (let i = 0; i < 5; i++) log.refused(req, 503, 'attest.busy', 'busy');
    expect(lines).toHaveLength(2);
    t -= 3_600_000;
    t += 10_000; // a whole window later on the stepped clock
    log.refused(req, 503, 'attest.busy', 'busy');
    expect(lines).toHaveLength(3);
    expect(JSON.parse(lines[2] as string)).toMatchObject({ code: 'attest.busy', suppressed: 3 });
  });
});
