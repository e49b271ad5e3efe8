/**
 * JWT-SVID minting throughput vs node:crypto's raw ES256 signature rate, measured in the same
 * run. Prints ops/s and the ratio to raw for:
 *   raw          crypto.sign('sha256', <the JWT signing input>, P-256, ieee-p1363)
 *   mintJwtSvid  Sigil's minting (node:crypto directly), awaited, and its sync form
 *   jose         jose's SignJWT with the same key, header and claims (the alternative considered)
 *   validate     validateJwtSvid (header/claim rules + jose jwtVerify), for reference
 * Cases run interleaved in short batches so machine load affects them alike.
 * Run: npx tsx bench/jwt-mint.ts [seconds-per-case]
 */
import { sign } from 'node:crypto';
import { SignJWT } from 'jose';
import { generateKey, mintJwtSvid, mintJwtSvidSync, validateJwtSvid, type JwtAuthority } from '../src/spiffe/index.js';

interface Case {
  name: string;
  fn: () => unknown;
  ops: number;
  ms: number;
}

async function measure(cases: Case[], seconds: number, batch = 100): Promise<void> {
  for (const c of cases) for (let i = 0; i < 200; i++) await c.fn(); // warm-up
  const until = performance.now() + seconds * 1000 * cases.length;
  while (performance.now() < until) {
    for (const c of cases) {
      const t0 = performance.now();
      for (let i = 0; i < batch; i++) await c.fn();
      c.ms += performance.now() - t0;
      c.ops += batch;
    }
  }
}

const seconds = Number(process.argv[2] ?? '2');
const key = generateKey('ec-p256');
const now = new Date();
const notAfter = new Date(now.getTime() + 300_000);
const opts = { privateKey: key.privateKey, kid: 'k1-2f9c', spiffeId: 'spiffe://example.org/ns/prod/sa/web', audience: ['spiffe://example.org/db'], notAfter, now };
const sample = mintJwtSvidSync(opts);
const signingInput = Buffer.from(sample.slice(0, sample.lastIndexOf('.')));
const authorities: JwtAuthority[] = [{ kid: opts.kid, publicKey: key.publicKey }];

const cases: Case[] = [
  { name: `raw ES256 sign (${signingInput.length} B)`, fn: () => sign('sha256', signingInput, { key: key.privateKey, dsaEncoding: 'ieee-p1363' }), ops: 0, ms: 0 },
  { name: 'mintJwtSvid (awaited)', fn: () => mintJwtSvid(opts), ops: 0, ms: 0 },
  { name: 'mintJwtSvidSync', fn: () => mintJwtSvidSync(opts), ops: 0, ms: 0 },
  {
    name: 'jose SignJWT (awaited)',
    fn: () =>
      new SignJWT({ sub: opts.spiffeId, aud: opts.audience[0] })
        .setProtectedHeader({ alg: 'ES256', kid: opts.kid, typ: 'JWT' })
        .setIssuedAt(Math.floor(now.getTime() / 1000))
        .setExpirationTime(Math.floor(notAfter.getTime() / 1000))
        .sign(key.privateKey),
    ops: 0,
    ms: 0,
  },
  { name: 'validateJwtSvid (awaited)', fn: () => validateJwtSvid(sample, { audience: 'spiffe://example.org/db', keysFor: () => authorities, now }), ops: 0, ms: 0 },
];

await measure(cases, seconds);
const rawRate = (cases[0]!.ops / cases[0]!.ms) * 1000;
console.log(`jwt-mint benchmark (${seconds}s per case, interleaved; node ${process.version})`);
for (const c of cases) {
  const r = (c.ops / c.ms) * 1000;
  console.log(`${c.name.padEnd(32)} ${r.toFixed(0).padStart(8)} ops/s   ${((r / rawRate) * 100).toFixed(1).padStart(6)}% of raw`);
}
