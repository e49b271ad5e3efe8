/**
 * Admission bookkeeping (src/agent/workload-api/limits.ts Admission): connections taken and given
 * back per uid keep the counts admit() decides on, so a uid that closed its connections gets its
 * share back and root's reserve holds.
 */
import { describe, expect, it } from 'vitest';
import { Admission, connectionLimits } from '../../src/agent/workload-api/limits.js';

describe('Admission', () => {
  it('holds each uid to its share and gives it back on release', () => {
    const a = new Admission(connectionLimits({ maxConnections: 16, maxConnectionsPerUid: 4, reservedConnections: 2 }));
    for (let i = 0; i < 4; i++) expect(a.take(1000)).toBeUndefined();
    expect(a.take(1000)?.code).toBe('workload_api.uid_connection_limit');
    expect(a.held).toBe(4);
    a.release(1000);
    expect(a.held).toBe(3);
    expect(a.take(1000)).toBeUndefined();
    expect(a.take(1001)).toBeUndefined();
  });

  it('keeps the reserve for root when the other uids fill their pool, and frees it when they leave', () => {
    const a = new Admission(connectionLimits({ maxConnections: 16, maxConnectionsPerUid: 4, reservedConnections: 2 }));
    // Other uids may hold 14 (16 − 2 reserved for root); small uids keep the last 2 of those.
    const taken: number[] = [];
    for (let uid = 1; uid <= 3; uid++) {
      for (let i = 0; i < 4; i++) {
        expect(a.take(uid)).toBeUndefined();
        taken.push(uid);
      }
    }
    // 12 held: the shared part (16 − 2·2) is full, so only a uid holding fewer than small (1) gets one.
    expect(a.take(1)?.code).toBe('workload_api.uid_connection_limit');
    expect(a.take(50)).toBeUndefined();
    expect(a.take(50)?.message).toMatch(/kept for uids holding fewer than 1/);
    expect(a.take(51)).toBeUndefined();
    // 14 held by other uids: the rest is root's.
    expect(a.take(52)?.message).toMatch(/kept for root/);
    // Root still has its two.
    expect(a.take(0)).toBeUndefined();
    expect(a.take(0)).toBeUndefined();
    expect(a.held).toBe(16);
    expect(a.roomForAny()?.code).toBe('workload_api.connection_limit');
    expect(a.take(0)?.code).toBe('workload_api.connection_limit');
    for (const uid of taken) a.release(uid);
    expect(a.held).toBe(4);
    expect(a.roomForAny()).toBeUndefined();
    expect(a.take(52)).toBeUndefined();
  });
});
