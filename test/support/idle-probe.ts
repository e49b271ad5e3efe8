/** A silent TCP connection to a capped listener, for connection-cap tests. */
import { connect, type Socket } from 'node:net';

/**
 * Connect to 127.0.0.1:`port` from `localAddress` and send nothing: 'open' if the socket is still
 * open after 300 ms (then pushed onto `held` when `keep`, else destroyed), 'closed' if the server
 * closed it first.
 */
export function idleProbe(port: number, localAddress: string, keep: boolean, held: Socket[]): Promise<'open' | 'closed'> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress });
    let settled = false;
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ECONNRESET' && !settled) reject(e);
    });
    s.once('close', () => {
      if (settled) return;
      settled = true;
      resolve('closed');
    });
    s.once('connect', () => {
      setTimeout(() => {
        if (settled) return;
        settled = true;
        if (keep) held.push(s);
        else s.destroy();
        resolve('open');
      }, 300);
    });
  });
}
