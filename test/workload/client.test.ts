import { describe, expect, it } from 'vitest';
import { resolveWorkloadSocket, socketPathFromEndpoint, splitDerCertificates } from '../../src/workload/client.js';
import { makePki } from '../workload-api/support.js';

describe('Workload API endpoint resolution (SPIFFE Workload Endpoint §4)', () => {
  it('accepts unix:///path, unix:/path and plain absolute paths', () => {
    expect(socketPathFromEndpoint('unix:///run/sigil/agent.sock')).toBe('/run/sigil/agent.sock');
    expect(socketPathFromEndpoint('unix:/run/sigil/agent.sock')).toBe('/run/sigil/agent.sock');
    expect(socketPathFromEndpoint('/tmp/x.sock')).toBe('/tmp/x.sock');
    expect(socketPathFromEndpoint('unix:///tmp/with%20space.sock')).toBe('/tmp/with space.sock');
  });

  it('refuses tcp, authorities, relative paths, queries and fragments', () => {
    for (const bad of ['tcp://127.0.0.1:8000', 'unix://host/x.sock', 'unix:relative.sock', 'relative.sock', 'unix:///x.sock?a=b', 'unix:///x#f', '', 'unix:///%zz']) {
      expect(() => socketPathFromEndpoint(bad), bad).toThrow(expect.objectContaining({ code: 'workload_client.bad_endpoint' }));
    }
  });

  it('precedence: --socket, then SPIFFE_ENDPOINT_SOCKET, then the default', () => {
    expect(resolveWorkloadSocket('unix:///a.sock', { SPIFFE_ENDPOINT_SOCKET: 'unix:///b.sock' })).toBe('/a.sock');
    expect(resolveWorkloadSocket(undefined, { SPIFFE_ENDPOINT_SOCKET: 'unix:///b.sock' })).toBe('/b.sock');
    expect(resolveWorkloadSocket(undefined, {})).toBe('/run/sigil/agent.sock');
    expect(() => resolveWorkloadSocket(undefined, { SPIFFE_ENDPOINT_SOCKET: 'tcp://1.2.3.4:5' })).toThrow(/unsupported scheme/);
  });
});

describe('splitting concatenated DER', () => {
  const pki = makePki();
  it('splits certificates and refuses garbage', () => {
    const parts = splitDerCertificates(Buffer.concat([pki.interDer, pki.rootDer]));
    expect(parts.map((p) => p.length)).toEqual([pki.interDer.length, pki.rootDer.length]);
    expect(parts[1]!.equals(pki.rootDer)).toBe(true);
    expect(splitDerCertificates(Buffer.alloc(0))).toEqual([]);
    expect(() => splitDerCertificates(pki.rootDer.subarray(0, 50))).toThrow(expect.objectContaining({ code: 'workload_client.bad_der' }));
    expect(() => splitDerCertificates(Buffer.from([0x04, 0x01, 0x00]))).toThrow(expect.objectContaining({ code: 'workload_client.bad_der' }));
    expect(() => splitDerCertificates(Buffer.from([0x30, 0x85, 1, 1, 1, 1, 1]))).toThrow(expect.objectContaining({ code: 'workload_client.bad_der' }));
  });
});
