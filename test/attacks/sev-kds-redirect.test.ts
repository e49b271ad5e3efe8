/**
 * Attack: a malicious (or compromised, or man-in-the-middled mirror of) AMD KDS answers a VCEK or
 * cert_chain request with an HTTP redirect. Followed, it sends the verifier to any URL the answer
 * names — plain http:// on any host (the `kds.baseUrl` https rule no longer holds, and the chip ID
 * in the path leaks), or an internal address (a blind request from the verifier's network
 * position). The KDS client must not follow redirects: a 3xx is a failed request.
 */
import { type Server, createServer } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnpCollateralSource } from '../../src/sev/collateral.js';
import { makeSnpTestChain } from '../support/sev-synthetic.js';
import { codeOfAsync } from '../sev/helpers.js';

const milan = makeSnpTestChain('milan');
let server: Server;
let base = '';
const requests: string[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    requests.push(req.url ?? '');
    if ((req.url ?? '').startsWith('/vcek/') || (req.url ?? '').startsWith('/vlek/')) {
      res.statusCode = 302;
      res.setHeader('location', `${base}/internal/secret${req.url}`);
      res.end();
      return;
    }
    res.statusCode = 200;
    res.end(milan.endorsement);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});
afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
});

describe('AMD KDS client and redirects', () => {
  it('a redirect in answer to a VCEK request is not followed', async () => {
    requests.length = 0;
    const src = new SnpCollateralSource({ kds: { enabled: true, baseUrl: base } });
    expect(await codeOfAsync(() => src.lookupVcek(['milan'], milan.chipId, milan.reportedTcb))).toBe('sev.kds_fetch_failed');
    expect(requests.filter((u) => u.startsWith('/internal/'))).toEqual([]);
  });

  it('a redirect in answer to a cert_chain request is not followed', async () => {
    requests.length = 0;
    const src = new SnpCollateralSource({ kds: { enabled: true, baseUrl: base } });
    expect(await codeOfAsync(() => src.lookupChain('milan', 'vcek'))).toBe('sev.kds_fetch_failed');
    expect(requests.filter((u) => u.startsWith('/internal/'))).toEqual([]);
  });
});
