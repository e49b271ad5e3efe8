/**
 * Test helper: a software TPM (swtpm) manufactured like a real one (EK certificates in NV,
 * signed by a local CA) and served over TCP, rootless (all config and CA files live in a
 * temporary directory; nothing under /etc or /var/lib is touched).
 *
 * Manufacturing (`swtpm_setup --tpm2 --create-ek-cert --create-platform-cert`, under a second) runs
 * once and is cached in $TMPDIR (see manufacture()); every `startSwtpm()` copies that template
 * state so TPMs are independent but share one local CA (and therefore the same EK). What swtpm 0.7
 * creates:
 *   - RSA-2048 EK (TCG low-range template) persisted at 0x81010001, EK cert NV 0x01c00002
 *   - ECC NIST P-384 EK (TCG EK Credential Profile high-range template H-3: nameAlg SHA-384,
 *     userWithAuth set, PolicyB authPolicy) persisted at 0x81010016, EK cert NV 0x01c00016
 *   - platform certificate NV 0x01c08000
 *   - PCR banks sha1 and sha256 active (we ask for both so tests can read two banks)
 *
 * Usage:
 *   const tpm = await startSwtpm();          // null (with a console warning) when swtpm is absent
 *   if (!tpm) return;                         // ... and under CI=true it throws instead
 *   ... tpm.tcti === 'swtpm:host=127.0.0.1,port=<P>' ...
 *   await tpm.stop();
 *
 * swtpm serves one TCP client at a time (others wait in the listen queue), so close a device
 * opened through the native addon before running tpm2-tools against the same instance.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SwtpmHandle {
  /** TCTI config string for tpm2-tss / tpm2-tools: `swtpm:host=127.0.0.1,port=<port>`. */
  tcti: string;
  /** TPM command port; the control channel is `port + 1`. */
  port: number;
  /** This TPM's own state directory (a copy of the manufactured template). */
  stateDir: string;
  /**
   * Directory of the swtpm local CA that signed the EK certificates: `issuercert.pem` (the
   * intermediate that signs EK certs) and `swtpm-localca-rootca-cert.pem` (the self-signed root).
   * A verifier trusts them as `ekCa`.
   */
  localCaDir: string;
  /** PEM paths inside localCaDir, root first. */
  ekCaFiles: string[];
  /** Stops the swtpm process and deletes stateDir. Safe to call twice. */
  stop(): Promise<void>;
}

const REQUIRED = ['swtpm', 'swtpm_setup', 'swtpm_localca'];

function onPath(cmd: string): boolean {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() !== '';
}

let availability: { ok: boolean; missing: string[] } | undefined;

/** Why startSwtpm() would return null (the missing programs), or null when swtpm is usable. */
export function swtpmUnavailableReason(): string | null {
  if (swtpmAvailable()) return null;
  return `swtpm not installed (missing: ${availability?.missing.join(', ') ?? '?'}; Debian: apt-get install swtpm swtpm-tools)`;
}

/** True when swtpm, swtpm_setup and swtpm_localca are on PATH. */
export function swtpmAvailable(): boolean {
  availability ??= (() => {
    const missing = REQUIRED.filter((c) => !onPath(c));
    return { ok: missing.length === 0, missing };
  })();
  return availability.ok;
}

interface Template {
  root: string;
  stateDir: string;
  caDir: string;
}

let template: Promise<Template> | undefined;
const running = new Set<ChildProcess>();
const tempRoots = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of running) {
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const d of tempRoots) rmSync(d, { recursive: true, force: true });
  });
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

const TEMPLATE_FILES = ['state/tpm2-00.permall', 'ca/issuercert.pem', 'ca/swtpm-localca-rootca-cert.pem'];

function swtpmVersion(): string {
  const r = spawnSync('swtpm', ['--version'], { encoding: 'utf8' });
  return /version\s+([0-9][0-9A-Za-z.-]*)/.exec(`${r.stdout}${r.stderr}`)?.[1] ?? 'unknown';
}

/**
 * The manufactured template lives in one cache folder per user and swtpm version
 * (`$TMPDIR/sigil-swtpm-template-<uid>-<version>-v1`), reused by later test processes, so runs do
 * not leave a manufactured TPM behind each time (vitest may end workers without an exit hook).
 * It is built in a scratch folder and renamed into place, so concurrent processes never see a
 * half-made template.
 */
async function manufacture(): Promise<Template> {
  installExitHook();
  const uid = process.getuid?.() ?? 0;
  const cache = join(tmpdir(), `sigil-swtpm-template-${uid}-${swtpmVersion()}-v1`);
  const usable = (dir: string): boolean => {
    try {
      if (statSync(dir).uid !== uid) return false;
    } catch {
      return false;
    }
    return TEMPLATE_FILES.every((f) => existsSync(join(dir, f)));
  };
  if (usable(cache)) return { root: cache, stateDir: join(cache, 'state'), caDir: join(cache, 'ca') };

  const root = mkdtempSync(join(tmpdir(), 'sigil-swtpm-build-'));
  tempRoots.add(root);
  const caDir = join(root, 'ca');
  const stateDir = join(root, 'state');
  const work = join(root, 'setup');
  const xdg = join(work, 'xdg');
  for (const d of [caDir, stateDir, xdg]) mkdirSync(d, { recursive: true });
  const localcaConf = join(work, 'swtpm-localca.conf');
  const localcaOpts = join(work, 'swtpm-localca.options');
  const setupConf = join(work, 'swtpm_setup.conf');
  writeFileSync(
    localcaConf,
    [
      `statedir = ${caDir}`,
      `signingkey = ${join(caDir, 'signkey.pem')}`,
      `issuercert = ${join(caDir, 'issuercert.pem')}`,
      `certserial = ${join(caDir, 'certserial')}`,
      '',
    ].join('\n'),
  );
  writeFileSync(localcaOpts, ['--platform-manufacturer Sigil', '--platform-version 2.1', '--platform-model swtpm', ''].join('\n'));
  writeFileSync(
    setupConf,
    [
      'create_certs_tool = swtpm_localca',
      `create_certs_tool_config = ${localcaConf}`,
      `create_certs_tool_options = ${localcaOpts}`,
      'active_pcr_banks = sha1,sha256',
      '',
    ].join('\n'),
  );
  const env = { ...process.env, XDG_CONFIG_HOME: xdg, HOME: work };
  const r = await run(
    'swtpm_setup',
    [
      '--tpm2',
      '--tpmstate',
      stateDir,
      '--create-ek-cert',
      '--create-platform-cert',
      '--pcr-banks',
      'sha1,sha256',
      '--config',
      setupConf,
      '--overwrite',
    ],
    env,
  );
  if (r.code !== 0) throw new Error(`swtpm_setup failed (exit ${String(r.code)}):\n${r.out}`);
  if (!usable(root)) throw new Error(`swtpm_setup did not create a complete TPM state and local CA in ${root}:\n${r.out}`);
  rmSync(work, { recursive: true, force: true });
  rmSync(join(stateDir, '.lock'), { force: true });
  try {
    renameSync(root, cache);
    tempRoots.delete(root);
    return { root: cache, stateDir: join(cache, 'state'), caDir: join(cache, 'ca') };
  } catch {
    // Another process put its template in place first (or the cache path is unusable): use
    // theirs if it is complete, else keep ours for this process only.
    if (usable(cache)) {
      rmSync(root, { recursive: true, force: true });
      tempRoots.delete(root);
      return { root: cache, stateDir: join(cache, 'state'), caDir: join(cache, 'ca') };
    }
    return { root, stateDir, caDir };
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

async function freePortPair(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = await freePort();
    if (p > 0 && p < 65535 && (await portFree(p + 1))) return p;
  }
  throw new Error('could not find two consecutive free TCP ports for swtpm');
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(500, () => done(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function launch(tpl: Template): Promise<SwtpmHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-swtpm-'));
  tempRoots.add(dir);
  const stateDir = join(dir, 'state');
  cpSync(tpl.stateDir, stateDir, { recursive: true });
  rmSync(join(stateDir, '.lock'), { force: true });
  const port = await freePortPair();
  const child = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--server',
      `type=tcp,port=${port}`,
      '--ctrl',
      `type=tcp,port=${port + 1}`,
      '--flags',
      'not-need-init,startup-clear',
      '--tpmstate',
      `dir=${stateDir}`,
      '--log',
      `file=${join(dir, 'swtpm.log')}`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  running.add(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const exitedP = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      running.delete(child);
      resolve();
    });
  });
  // Wait until both the control and the command port accept. Probe the control port first:
  // swtpm serves one command-port client at a time, and a probe connection there is closed at once.
  const deadline = Date.now() + 10_000;
  let ready = false;
  while (Date.now() < deadline && !exited) {
    if ((await canConnect(port + 1)) && (await canConnect(port))) {
      ready = true;
      break;
    }
    await sleep(50);
  }
  if (!ready) {
    child.kill('SIGKILL');
    await exitedP;
    rmSync(dir, { recursive: true, force: true });
    tempRoots.delete(dir);
    throw new Error(`swtpm did not start on port ${port}: ${stderr.trim() || 'no output'}`);
  }
  let stopped: Promise<void> | undefined;
  const caFiles = ['swtpm-localca-rootca-cert.pem', 'issuercert.pem'].map((f) => join(tpl.caDir, f)).filter((f) => existsSync(f));
  return {
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    port,
    stateDir,
    localCaDir: tpl.caDir,
    ekCaFiles: caFiles,
    stop(): Promise<void> {
      stopped ??= (async () => {
        if (!exited) {
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 3000);
          await exitedP;
          clearTimeout(t);
        }
        rmSync(dir, { recursive: true, force: true });
        tempRoots.delete(dir);
      })();
      return stopped;
    },
  };
}

/**
 * Starts a fresh, manufactured swtpm on a random free port pair. Returns null (and logs why)
 * when swtpm is not installed; under CI=true a missing swtpm is an error instead.
 */
export async function startSwtpm(): Promise<SwtpmHandle | null> {
  const reason = swtpmUnavailableReason();
  if (reason !== null) {
    if (process.env.CI === 'true') throw new Error(`${reason}; CI must not skip TPM tests`);
    console.warn(`[skip] ${reason}`);
    return null;
  }
  template ??= manufacture();
  let tpl: Template;
  try {
    tpl = await template;
  } catch (e) {
    template = undefined;
    throw e;
  }
  // A port can be taken between probing and swtpm binding it; retry a few times.
  let last: unknown;
  for (let i = 0; i < 3; i++) {
    try {
      return await launch(tpl);
    } catch (e) {
      last = e;
    }
  }
  throw last instanceof Error ? last : new Error(String(last));
}

/** Lists the files of the local CA directory (for debugging a failing trust check). */
export function listLocalCa(h: SwtpmHandle): string[] {
  return readdirSync(h.localCaDir);
}
