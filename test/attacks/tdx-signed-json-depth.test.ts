/**
 * Attack review (TDX collateral JSON, read before its signature is checked): V8's JSON.parse takes
 * about a second on a 1 MiB document of nested arrays, and nothing bounded the nesting, so a
 * tampered TCB Info / QE Identity in the collateral directory cost ~1 s of CPU on every attestation
 * that read it. Intel's documents nest 6 deep; the scanner refuses deep nesting before JSON.parse.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { splitSignedJson } from '../../src/tdx/signed-json.js';
import { codeOf } from '../support/codes.js';
import { tdxFile } from '../tdx/helpers.js';

afterEach(() => {
  vi.restoreAllMocks();
});

describe('signed JSON: nesting is bounded before JSON.parse', () => {
  it('refuses a deeply nested member without parsing the document', () => {
    const d = 400_000;
    const doc = Buffer.from(`{"tcbInfo":{"a":${'['.repeat(d)}${']'.repeat(d)}},"signature":"${'00'.repeat(64)}"}`);
    const parse = vi.spyOn(JSON, 'parse');
    expect(codeOf(() => splitSignedJson(doc, 'tcbInfo', 'TCB Info'))).toBe('tdx.collateral_malformed');
    expect(parse.mock.calls.filter(([text]) => typeof text === 'string' && text.length > 1000)).toEqual([]);
  });

  it('still splits Intel\'s real documents', () => {
    expect(splitSignedJson(tdxFile('sample_tcbInfo_response'), 'tcbInfo', 'TCB Info').signature).toHaveLength(64);
    expect(splitSignedJson(tdxFile('sample_qeIdentity_response'), 'enclaveIdentity', 'QE Identity').signature).toHaveLength(64);
  });
});
