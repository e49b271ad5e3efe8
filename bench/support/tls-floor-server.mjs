// The server of bench/tls-floor.ts: a bare node:https server with no application state, configured
// as the verifier's agent listener is (client certificate asked for in mutual mode and checked by
// the application, TLS >= 1.2). Every request gets an empty 204; connections are kept alive. Plain
// JavaScript so that no TypeScript loader sits in the memory it reports.
import { readFileSync } from 'node:fs';
import https from 'node:https';

function memory() {
  for (let i = 0; i < 3; i++) globalThis.gc?.();
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  const u = process.memoryUsage();
  return { rss: m ? Number(m[1]) * 1024 : u.rss, heapUsed: u.heapUsed, heapTotal: u.heapTotal };
}

const cfg = JSON.parse(process.env.TLS_FLOOR_SERVER ?? 'null');
if (!cfg) {
  console.error('tls-floor-server: started without its configuration (run bench/tls-floor.ts)');
  process.exit(2);
}
let open = 0;
const srv = https.createServer(
  { key: cfg.key, cert: cfg.cert, ca: cfg.ca, requestCert: cfg.mutual, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
  (req, res) => {
    const sock = req.socket;
    if (cfg.mutual && (!sock.authorized || !sock.getPeerX509Certificate())) {
      res.writeHead(401).end();
      return;
    }
    res.writeHead(204).end();
  },
);
srv.on('secureConnection', (s) => {
  open++;
  s.once('close', () => open--);
});
srv.keepAliveTimeout = 3_600_000;
srv.headersTimeout = 60_000;
srv.requestTimeout = 0;
srv.listen(0, '127.0.0.1', () => process.send({ port: srv.address().port }));
process.on('message', (m) => {
  if (m === 'memory') process.send({ memory: memory(), connections: open });
});
process.on('disconnect', () => process.exit(0));
