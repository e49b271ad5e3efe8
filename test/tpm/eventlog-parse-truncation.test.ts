/**
 * A crypto-agile record cut at every byte: the parser names the field that does not fit and the
 * bytes left, exactly (readAgile reads a record's fixed fields directly when they fit and falls
 * back to the checked reader only at a short tail; the messages must not depend on which path ran).
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseEventLog } from '../../src/tpm/eventlog/index.js';
import { agileLog, agileRecord } from './eventlog-builder.js';

function errorOf(f: () => unknown): SigilError {
  try {
    f();
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
  throw new Error('no error');
}

/** The field a reader at `at` bytes into a sha1+sha256 record (data of `dataLen` bytes) is reading, its size, and where it starts. */
function fieldAt(at: number, dataLen: number): [string, number, number] {
  const fields: [string, number][] = [
    ['pcrIndex', 4],
    ['eventType', 4],
    ['digest count', 4],
    ['algorithmId', 2],
    ['sha1 digest', 20],
    ['algorithmId', 2],
    ['sha256 digest', 32],
    ['eventSize', 4],
    ['event data', dataLen],
  ];
  let start = 0;
  for (const [name, size] of fields) {
    if (at < start + size) return [name, size, start];
    start += size;
  }
  throw new Error('past the record');
}

describe('truncated crypto-agile records', () => {
  const algs = [0x4, 0xb];
  const data = Buffer.from('a record cut short\0', 'latin1');
  const full = agileLog(algs, [{ index: 4, type: 0xd, data: Buffer.from('x') }, { index: 5, type: 0xd, data }]);
  const recLen = agileRecord({ index: 5, type: 0xd, data }, algs).length;
  const recStart = full.length - recLen;

  it('parses whole', () => {
    expect(parseEventLog(full).events).toHaveLength(3);
  });

  it.each([...Array(recLen).keys()].filter((k) => k > 0))('cut %i bytes into the last record: names the field and the bytes left', (k) => {
    const [field, size, start] = fieldAt(k, data.length);
    const e = errorOf(() => parseEventLog(full.subarray(0, recStart + k)));
    expect(e.code).toBe('tpm.eventlog_truncated');
    expect(e.message).toBe(`event log: record at byte ${recStart}: ${field} needs ${size} byte(s), ${k - start} left`);
  });
});
