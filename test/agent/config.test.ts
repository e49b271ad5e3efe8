import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentConfigFrom, loadAgentConfig } from '../../src/agent/config.js';
import { SigilError } from '../../src/errors.js';

const base = {
  trustDomain: 'example.org',
  verifier: { address: '10.0.0.1', port: 8443 },
  trustBundle: 'bundle.pem',
  dataDir: 'data',
  nodeAttestors: { join_token: { token: 'a'.repeat(32) } },
};

function errOf(raw: unknown): SigilError {
  try {
    agentConfigFrom(raw, '/etc/sigil');
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return e as SigilError;
  }
  throw new Error('config was accepted');
}

describe('agent config', () => {
  it('fills defaults and resolves paths against the config directory', () => {
    const c = agentConfigFrom({ ...base, verifier: { address: 'v.example.org' } }, '/etc/sigil');
    expect(c.verifier).toEqual({ address: 'v.example.org', port: 8443 });
    expect(c.trustBundle).toBe('/etc/sigil/bundle.pem');
    expect(c.dataDir).toBe('/etc/sigil/data');
    expect(c.workloadApiSocket).toBe('/run/sigil/agent.sock');
    expect(c.workloadAttestors).toEqual({ unix: {} });
    expect(c.x509SvidRotation).toBe(0.5);
    expect(c.syncIntervalSeconds).toBe(2);
    expect(c.logLevel).toBe('info');
    expect(c.plugins).toEqual({});
    expect(c.configDir).toBe('/etc/sigil');
  });

  it('accepts every optional key', () => {
    const c = agentConfigFrom(
      {
        ...base,
        workloadApiSocket: 'unix:///run/x/agent.sock',
        workloadAttestors: { unix: { hashBinaries: false }, container: null },
        plugins: { acme: './acme.js' },
        logLevel: 'debug',
        x509SvidRotation: 0.3,
        syncInterval: '500ms',
      },
      '/etc/sigil',
    );
    expect(c.workloadApiSocket).toBe('/run/x/agent.sock');
    expect(c.workloadAttestors).toEqual({ unix: { hashBinaries: false }, container: {} });
    expect(c.plugins).toEqual({ acme: './acme.js' });
    expect(c.x509SvidRotation).toBe(0.3);
    expect(c.syncIntervalSeconds).toBe(0.5);
    expect(agentConfigFrom({ ...base, syncInterval: 3 }, '/').syncIntervalSeconds).toBe(3);
  });

  it('names the offending key', () => {
    expect(errOf({ ...base, verifier: { address: 'x', port: '8443' } }).message).toBe('agent config: /verifier/port must be integer');
    expect(errOf({ ...base, verifier: { address: 'x', port: 70000 } }).message).toMatch(/^agent config: \/verifier\/port must be <= 65535/);
    expect(errOf({ ...base, extra: 1 }).message).toBe('agent config: (top level): unknown key "extra"');
    expect(errOf({ ...base, verifier: { address: 'x', host: 'y' } }).message).toMatch(/\/verifier: unknown key "host"/);
    const { nodeAttestors: _n, ...noNode } = base;
    expect(errOf(noNode).message).toMatch(/missing required key "nodeAttestors"/);
    expect(errOf({ ...base, nodeAttestors: {} }).message).toMatch(/\/nodeAttestors must NOT have fewer than 1 properties/);
    expect(errOf({ ...base, nodeAttestors: { tpm: 'yes' } }).message).toMatch(/\/nodeAttestors\/tpm must be object,null/);
    expect(errOf({ ...base, x509SvidRotation: 0 }).message).toMatch(/\/x509SvidRotation must be > 0/);
    expect(errOf({ ...base, x509SvidRotation: 0.95 }).message).toMatch(/\/x509SvidRotation must be <= 0.9/);
    expect(errOf({ ...base, logLevel: 'loud' }).message).toMatch(/\/logLevel must be equal to one of the allowed values/);
    expect(errOf({ ...base, syncInterval: 'soon' }).message).toMatch(/\/syncInterval/);
    expect(errOf({ ...base, syncInterval: '10m' }).message).toMatch(/\/syncInterval must be between/);
    expect(errOf({ ...base, trustDomain: 'Example.org' }).message).toMatch(/^agent config: \/trustDomain/);
    expect(errOf({ ...base, plugins: { x: 3 } }).message).toMatch(/\/plugins\/x must be string/);
    expect(errOf([]).message).toMatch(/must be an object/);
    expect(errOf({ ...base, trustDomain: 1 }).code).toBe('config.invalid');
  });

  it('loads YAML and JSON files and reports unreadable or unparsable ones', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-acfg-'));
    const yml = join(dir, 'agent.yaml');
    writeFileSync(
      yml,
      ['trustDomain: example.org', 'verifier: { address: 127.0.0.1, port: 9443 }', 'trustBundle: b.pem', 'dataDir: d', 'nodeAttestors:', '  join_token: { tokenFile: tok }', ''].join('\n'),
    );
    const c = loadAgentConfig(yml);
    expect(c.verifier.port).toBe(9443);
    expect(c.trustBundle).toBe(join(dir, 'b.pem'));
    expect(c.nodeAttestors).toEqual({ join_token: { tokenFile: 'tok' } });
    const js = join(dir, 'agent.json');
    writeFileSync(js, JSON.stringify(base));
    expect(loadAgentConfig(js).dataDir).toBe(join(dir, 'data'));
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'trustDomain: [unclosed\n');
    expect(() => loadAgentConfig(bad)).toThrow(expect.objectContaining({ code: 'config.parse_failed' }));
    expect(() => loadAgentConfig(join(dir, 'missing.yaml'))).toThrow(expect.objectContaining({ code: 'config.unreadable' }));
  });
});
