import { describe, expect, it } from 'vitest';
import { SpiffeId, isValidSpiffeId, parseTrustDomain } from '../../src/spiffe/id.js';
import { codeOf } from '../support/codes.js';


describe('SpiffeId.parse: valid IDs', () => {
  it.each([
    ['spiffe://example.org', 'example.org', ''],
    ['spiffe://example.org/workload', 'example.org', '/workload'],
    ['spiffe://a-b_c.9/ns/Prod/sa/Front.End-1_x', 'a-b_c.9', '/ns/Prod/sa/Front.End-1_x'],
    ['spiffe://td/...', 'td', '/...'],
    ['spiffe://td/.a/a./..b', 'td', '/.a/a./..b'],
    ['spiffe://1.2.3.4/x', '1.2.3.4', '/x'],
  ])('%s', (s, td, path) => {
    const id = SpiffeId.parse(s);
    expect(id.trustDomain).toBe(td);
    expect(id.path).toBe(path);
    expect(id.toString()).toBe(s);
    expect(isValidSpiffeId(s)).toBe(true);
  });

  it('accepts exactly 2048 bytes and refuses 2049', () => {
    const base = 'spiffe://example.org/';
    const ok = base + 'a'.repeat(2048 - base.length);
    expect(Buffer.byteLength(ok)).toBe(2048);
    expect(SpiffeId.parse(ok).toString()).toBe(ok);
    expect(codeOf(() => SpiffeId.parse(`${ok}b`))).toBe('spiffe.id_too_long');
  });
});

describe('SpiffeId.parse: each rule has its own code', () => {
  it.each([
    ['', 'spiffe.id_empty'],
    ['example.org/w', 'spiffe.id_bad_scheme'],
    ['SPIFFE://example.org/w', 'spiffe.id_bad_scheme'],
    ['Spiffe://example.org/w', 'spiffe.id_bad_scheme'],
    ['https://example.org/w', 'spiffe.id_bad_scheme'],
    ['spiffe:/example.org/w', 'spiffe.id_bad_scheme'],
    ['spiffe:example.org', 'spiffe.id_bad_scheme'],
    ['spiffe://Example.org/w', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://exa mple.org/w', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://exa+mple/w', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://[::1]/w', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://ex\u00e4mple.org/w', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://', 'spiffe.id_missing_trust_domain'],
    ['spiffe:///w', 'spiffe.id_missing_trust_domain'],
    ['spiffe://example.org:8080/w', 'spiffe.id_has_port'],
    ['spiffe://example.org:/w', 'spiffe.id_has_port'],
    ['spiffe://user@example.org/w', 'spiffe.id_has_userinfo'],
    ['spiffe://user:pw@example.org/w', 'spiffe.id_has_userinfo'],
    ['spiffe://example.org/w?x=1', 'spiffe.id_has_query'],
    ['spiffe://example.org?x', 'spiffe.id_has_query'],
    ['spiffe://example.org/w?a#b', 'spiffe.id_has_query'],
    ['spiffe://example.org/w#frag', 'spiffe.id_has_fragment'],
    ['spiffe://example.org#frag', 'spiffe.id_has_fragment'],
    ['spiffe://example.org/w#a?b', 'spiffe.id_has_fragment'],
    ['spiffe://example.org//w', 'spiffe.id_empty_segment'],
    ['spiffe://example.org/a//b', 'spiffe.id_empty_segment'],
    ['spiffe://example.org/.', 'spiffe.id_dot_segment'],
    ['spiffe://example.org/..', 'spiffe.id_dot_segment'],
    ['spiffe://example.org/a/./b', 'spiffe.id_dot_segment'],
    ['spiffe://example.org/a/../b', 'spiffe.id_dot_segment'],
    ['spiffe://example.org/', 'spiffe.id_trailing_slash'],
    ['spiffe://example.org/w/', 'spiffe.id_trailing_slash'],
    ['spiffe://example.org/w x', 'spiffe.id_bad_path_char'],
    ['spiffe://example.org/w:x', 'spiffe.id_bad_path_char'],
    ['spiffe://example.org/w@x', 'spiffe.id_bad_path_char'],
    ['spiffe://example.org/w\u00e9', 'spiffe.id_bad_path_char'],
    ['spiffe://example.org/w%41', 'spiffe.id_percent_encoded'],
    ['spiffe://example.org/%2e%2e', 'spiffe.id_percent_encoded'],
    ['spiffe://exa%6dple.org/w', 'spiffe.id_percent_encoded'],
  ])('%j → %s', (s, code) => {
    expect(codeOf(() => SpiffeId.parse(s))).toBe(code);
    expect(isValidSpiffeId(s)).toBe(false);
  });

  it('counts bytes, not characters, for the length limit', () => {
    // 2040 two-byte characters would be 4080 bytes; the path charset refuses them anyway,
    // but the length rule is checked first.
    expect(codeOf(() => SpiffeId.parse(`spiffe://td/${'\u00e9'.repeat(1100)}`))).toBe('spiffe.id_too_long');
  });
});

describe('constructors', () => {
  it('fromPath', () => {
    expect(SpiffeId.fromPath('example.org', '/a/b').toString()).toBe('spiffe://example.org/a/b');
    expect(SpiffeId.fromPath('example.org', '').toString()).toBe('spiffe://example.org');
    expect(SpiffeId.fromPath('spiffe://example.org', '/a').toString()).toBe('spiffe://example.org/a');
    expect(codeOf(() => SpiffeId.fromPath('example.org', 'a'))).toBe('spiffe.id_bad_path_char');
    expect(codeOf(() => SpiffeId.fromPath('example.org', '/a/'))).toBe('spiffe.id_trailing_slash');
    expect(codeOf(() => SpiffeId.fromPath('example.org', '/a/../b'))).toBe('spiffe.id_dot_segment');
    expect(codeOf(() => SpiffeId.fromPath('Example.org', '/a'))).toBe('spiffe.id_bad_trust_domain_char');
  });

  it('fromSegments', () => {
    expect(SpiffeId.fromSegments('example.org', 'sigil', 'agent', 'tpm', 'ab12').toString()).toBe('spiffe://example.org/sigil/agent/tpm/ab12');
    expect(SpiffeId.fromSegments('example.org').toString()).toBe('spiffe://example.org');
    expect(codeOf(() => SpiffeId.fromSegments('example.org', 'a/b'))).toBe('spiffe.id_bad_path_char');
    expect(codeOf(() => SpiffeId.fromSegments('example.org', ''))).toBe('spiffe.id_empty_segment');
    expect(codeOf(() => SpiffeId.fromSegments('example.org', '..'))).toBe('spiffe.id_dot_segment');
    expect(codeOf(() => SpiffeId.fromSegments('example.org', '%41'))).toBe('spiffe.id_percent_encoded');
    expect(codeOf(() => SpiffeId.fromSegments('example.org', 'a'.repeat(2100)))).toBe('spiffe.id_too_long');
  });

  it('memberOf and equals', () => {
    const id = SpiffeId.parse('spiffe://example.org/w');
    expect(id.memberOf('example.org')).toBe(true);
    expect(id.memberOf('spiffe://example.org')).toBe(true);
    expect(id.memberOf('example.com')).toBe(false);
    expect(id.memberOf('EXAMPLE.org')).toBe(false);
    expect(id.memberOf('spiffe://example.org/w')).toBe(false);
    expect(id.equals('spiffe://example.org/w')).toBe(true);
    expect(id.equals(SpiffeId.parse('spiffe://example.org/x'))).toBe(false);
    expect(JSON.stringify({ id })).toBe('{"id":"spiffe://example.org/w"}');
  });
});

describe('parseTrustDomain', () => {
  it('accepts names and trust domain IDs', () => {
    expect(parseTrustDomain('example.org')).toBe('example.org');
    expect(parseTrustDomain('spiffe://example.org')).toBe('example.org');
  });
  it.each([
    ['', 'spiffe.id_missing_trust_domain'],
    ['Example.org', 'spiffe.id_bad_trust_domain_char'],
    ['example.org:443', 'spiffe.id_has_port'],
    ['u@example.org', 'spiffe.id_has_userinfo'],
    ['example.org/path', 'spiffe.id_bad_trust_domain_char'],
    ['spiffe://example.org/path', 'spiffe.id_bad_trust_domain_char'],
    ['example.org?q', 'spiffe.id_has_query'],
    ['example.org#f', 'spiffe.id_has_fragment'],
    ['ex%41mple', 'spiffe.id_percent_encoded'],
    ['a'.repeat(2100), 'spiffe.id_too_long'],
  ])('%# → %s', (s, code) => {
    expect(codeOf(() => parseTrustDomain(s))).toBe(code);
  });
});
