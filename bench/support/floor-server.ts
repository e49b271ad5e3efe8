/**
 * The floor for bench/agent.ts: a bare node:http2 server on a Unix socket that answers
 * FetchX509SVID (a stream: one message, kept open until the client cancels) and FetchJWTSVID
 * (unary) with fixed gRPC-framed messages — the very bytes the agent sent this caller — and does
 * nothing else (no peer credentials, attestation, matching, limits, deadlines). What a Workload
 * API server cannot do with less CPU on this machine.
 *
 * As a process: `node <launcher flags> bench/support/floor-server.ts SOCKET X509_FILE JWT_FILE`
 * (through tsx); prints "ready" once listening.
 *
 * grpcFirstMessage() captures the bytes from the agent: the first framed message of a response.
 */
import { readFileSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

/** The response headers the agent sends (src/agent/workload-api/call.ts), so that both send the same bytes. */
const HEADERS = { ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-accept-encoding': 'identity' };

export function startFloorServer(socketPath: string, x509: Buffer, jwt: Buffer): Promise<net.Server> {
  const server = net.createServer((sock) => {
    const session = http2.performServerHandshake(sock);
    session.on('error', () => undefined);
    session.on('stream', (st, headers) => {
      st.on('error', () => undefined);
      st.on('data', () => undefined);
      st.on('end', () => {
        if (headers[':path'] === '/SpiffeWorkloadAPI/FetchX509SVID') {
          st.respond(HEADERS, { waitForTrailers: true });
          st.write(x509);
        } else {
          st.respond(HEADERS, { waitForTrailers: true });
          st.once('wantTrailers', () => st.sendTrailers({ 'grpc-status': '0' }));
          st.end(jwt);
        }
      });
    });
  });
  rmSync(socketPath, { force: true });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

/** The first gRPC-framed response message of `method` (request message `req`, unframed) from a Workload API socket. */
export function grpcFirstMessage(socket: string, method: string, req: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
    session.on('error', reject);
    const st = session.request({ ':method': 'POST', ':path': `/SpiffeWorkloadAPI/${method}`, 'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true' });
    const framed = Buffer.alloc(5 + req.length);
    framed.writeUInt32BE(req.length, 1);
    framed.set(req, 5);
    st.end(framed);
    let buf = Buffer.alloc(0);
    st.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
        resolve(buf.subarray(0, 5 + buf.readUInt32BE(1)));
        session.destroy();
      }
    });
    st.on('trailers', (t) => reject(new Error(`${method}: grpc-status ${String(t['grpc-status'])} ${String(t['grpc-message'])}`)));
    st.on('error', reject);
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [socket, x509File, jwtFile] = process.argv.slice(2);
  await startFloorServer(socket!, readFileSync(x509File!), readFileSync(jwtFile!));
  process.stdout.write('ready\n');
}
