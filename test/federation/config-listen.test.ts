/** The bundle endpoint's listen address: `listen: "host:port"` like every listen key, or the older address/port. */
import { describe, expect, it } from 'vitest';
import { verifierConfigFrom } from '../../src/verifier/config.js';

const base = { trustDomain: 'example.org', dataDir: '/var/lib/sigil' };
const endpointOf = (be: Record<string, unknown>) => verifierConfigFrom({ ...base, federation: { bundleEndpoint: { profile: 'https_spiffe', ...be } } }, '/').federation.bundleEndpoint;
const codeOf = (be: Record<string, unknown>) => {
  try {
    endpointOf(be);
    return 'accepted';
  } catch (e) {
    return `${(e as { code?: string }).code}: ${(e as Error).message}`;
  }
};

describe('federation bundleEndpoint listen', () => {
  it('takes "host:port" and "[v6]:port"', () => {
    expect(endpointOf({ listen: '127.0.0.1:9443' })).toMatchObject({ address: '127.0.0.1', port: 9443 });
    expect(endpointOf({ listen: '[::1]:9443' })).toMatchObject({ address: '::1', port: 9443 });
  });

  it('keeps the address/port form and its defaults', () => {
    expect(endpointOf({ address: '127.0.0.1', port: 8555 })).toMatchObject({ address: '127.0.0.1', port: 8555 });
    expect(endpointOf({})).toMatchObject({ address: '0.0.0.0', port: 8444 });
  });

  it('refuses both forms at once and bad listen values, naming the key', () => {
    expect(codeOf({ listen: '127.0.0.1:9443', port: 8444 })).toMatch(/^config\.invalid: .*bundleEndpoint.*either "listen" or "address"\/"port"/);
    expect(codeOf({ listen: '127.0.0.1' })).toMatch(/^config\.invalid: .*\/federation\/bundleEndpoint\/listen/);
    expect(codeOf({ listen: '::1:9443' })).toMatch(/^config\.invalid: .*brackets/);
    expect(codeOf({ listen: 'host:99999' })).toMatch(/^config\.invalid: .*bad port/);
  });
});
