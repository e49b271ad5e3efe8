import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';

const root = resolve(__dirname, '../..');

function startChild(config: string): Promise<ChildProcess> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'test/support/run-verifier.ts'), config], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('READY')) res(child);
    });
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    child.once('exit', (code) => rej(new Error(`verifier exited early (${code}): ${err}`)));
  });
}

describe('crash safety', () => {
  it('kill -9 during a burst of entry creations loses no acknowledged entry', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-crash-'));
    const config = join(dir, 'verifier.yaml');
    const socket = join(dir, 'admin.sock');
    writeFileSync(config, `trustDomain: example.org\nlisten: { address: 127.0.0.1, port: 0 }\nadminSocket: ${socket}\ndataDir: ${join(dir, 'data')}\nlogLevel: silent\nnodeAttestors: { join_token: {} }\n`);
    const child = await startChild(config);
    const acked: string[] = [];
    let stop = false;
    const workers = Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          const e = await adminCall<{ id: string }>(socket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://example.org/w${w}/${i}`, parentId: 'spiffe://example.org/node', selectors: [`unix:uid:${i}`] });
          acked.push(e.id);
        } catch {
          return; // the verifier died under us: this request was not acknowledged
        }
      }
    });
    await new Promise((r) => setTimeout(r, 700));
    child.kill('SIGKILL');
    stop = true;
    await Promise.all(workers);
    await new Promise((r) => child.once('exit', r));
    expect(acked.length).toBeGreaterThan(20);

    const again = await startChild(config);
    try {
      const { entries } = await adminCall<{ entries: { id: string }[] }>(socket, 'GET', '/v1/admin/entries');
      const have = new Set(entries.map((e) => e.id));
      const lost = acked.filter((id) => !have.has(id));
      expect(lost).toEqual([]);
    } finally {
      again.kill('SIGTERM');
      await new Promise((r) => again.once('exit', r));
    }
  });
});
