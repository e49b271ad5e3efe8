/** Test helper: an attested join-token agent's record, for tests that drive the authorized-set cache directly. */
import type { AgentRecord } from '../../src/store/types.js';

/** The record of an agent attested with one join token (ID `id`, node selectors `selectors`), not banned, its SVID valid to 2030. */
export function joinTokenAgent(id: string, selectors: string[] = []): AgentRecord {
  return {
    id,
    attestors: ['join_token'],
    selectors,
    serial: '01',
    svidExpiresAt: '2030-01-01T00:00:00.000Z',
    attestedAt: '2026-01-01T00:00:00.000Z',
    banned: false,
    factorIds: [id],
  };
}
