/**
 * Test helper: drives a swtpm with tpm2-tools (tools Sigil did not write) to produce real
 * evidence — EK certificates and publics, AKs, quotes, credential activation.
 * Every tool invocation is followed by flushing transient objects: swtpm has no resource
 * manager and tpm2-tools leaves loaded contexts behind.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';

const exec = promisify(execFile);

export const RSA_EK_HANDLE = '0x81010001';
export const ECC_EK_HANDLE = '0x81010016';

export function tpm2ToolsAvailable(): boolean {
  return ['/usr/bin/tpm2_quote', '/usr/local/bin/tpm2_quote'].some((p) => existsSync(p));
}

export interface ToolsTpm {
  swtpm: SwtpmHandle;
  dir: string;
  /** EK certificates (DER) read with tpm2_nvread. */
  ekCertRsa: Buffer;
  ekCertEcc: Buffer;
  /** EK publics (TPM2B_PUBLIC) read with tpm2_readpublic. */
  ekPubRsa: Buffer;
  ekPubEcc: Buffer;
  /** EK CA files (root first, then the issuing CA). */
  ekCaFiles: string[];
  run(tool: string, args: string[]): Promise<string>;
  file(name: string): string;
  /**
   * Creates an AK as a child of an EK (the RSA EK unless `ekHandle` names another) with
   * tpm2_createak (rsa: RSASSA, rsapss: RSASSA-PSS, ecc: ECDSA; all SHA-256), as an agent does:
   * the tpm attestor requires the AK under the EK it attests with. Returns its TPM2B_PUBLIC and context file.
   */
  createAk(name: string, alg?: 'rsa' | 'rsapss' | 'ecc', ekHandle?: string): Promise<{ pub: Buffer; ctx: string; nameHex: string }>;
  /** tpm2_quote with the AK context; returns the message (TPMS_ATTEST), signature and pcrs files' bytes. */
  quote(akCtx: string, pcrList: string, qualificationHex: string, tag: string, scheme?: 'rsapss'): Promise<{ msg: Buffer; sig: Buffer; pcrs: Buffer; files: { msg: string; sig: string; pcrs: string } }>;
  /** tpm2_activatecredential with blob/secret (TPM2B wire bytes); returns the recovered secret. */
  activate(akCtx: string, ekHandle: string, credentialBlob: Buffer, encryptedSecret: Buffer, tag: string): Promise<Buffer>;
  /** Loads an AK made by createAk again (saved contexts do not survive a TPM reset). */
  reloadAk(name: string): Promise<void>;
  flush(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a swtpm and reads its EK material with tpm2-tools; null when swtpm is unavailable (skip). */
export async function startToolsTpm(): Promise<ToolsTpm | null> {
  const swtpm = await startSwtpm();
  if (!swtpm) return null;
  const dir = mkdtempSync(join(tmpdir(), 'sigil-tpm-test-'));
  const env = { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti };
  const run = async (tool: string, args: string[]): Promise<string> => {
    try {
      const r = await exec(tool, args, { env, cwd: dir, encoding: 'utf8', timeout: 20_000 });
      return r.stdout;
    } catch (e) {
      const err = e as { stderr?: string; message?: string };
      throw new Error(`${tool} ${args.join(' ')} failed: ${err.stderr ?? err.message ?? String(e)}`);
    }
  };
  const flush = async (): Promise<void> => {
    await run('tpm2_flushcontext', ['-t']);
    await run('tpm2_flushcontext', ['-s']);
  };
  const file = (n: string): string => join(dir, n);
  /** The EK each AK made by createAk was created under (reloadAk loads it there again). */
  const akParents = new Map<string, string>();
  await run('tpm2_nvread', ['0x1c00002', '-o', file('ek-rsa.der')]);
  await run('tpm2_nvread', ['0x1c00016', '-o', file('ek-ecc.der')]);
  await run('tpm2_readpublic', ['-c', RSA_EK_HANDLE, '-o', file('ek-rsa.pub')]);
  await run('tpm2_readpublic', ['-c', ECC_EK_HANDLE, '-o', file('ek-ecc.pub')]);
  await flush();
  const t: ToolsTpm = {
    swtpm,
    dir,
    ekCertRsa: readFileSync(file('ek-rsa.der')),
    ekCertEcc: readFileSync(file('ek-ecc.der')),
    ekPubRsa: readFileSync(file('ek-rsa.pub')),
    ekPubEcc: readFileSync(file('ek-ecc.pub')),
    ekCaFiles: swtpm.ekCaFiles,
    run,
    file,
    flush,
    async createAk(name, alg = 'rsa', ekHandle = RSA_EK_HANDLE) {
      const args = ['-C', ekHandle, '-c', file(`${name}.ctx`), '-u', file(`${name}.pub`), '-n', file(`${name}.name`), '-r', file(`${name}.priv`)];
      const scheme = { rsa: ['-G', 'rsa', '-g', 'sha256', '-s', 'rsassa'], rsapss: ['-G', 'rsa', '-g', 'sha256', '-s', 'rsapss'], ecc: ['-G', 'ecc', '-g', 'sha256', '-s', 'ecdsa'] };
      args.push(...scheme[alg]);
      await run('tpm2_createak', args);
      await flush();
      akParents.set(name, ekHandle);
      return { pub: readFileSync(file(`${name}.pub`)), ctx: file(`${name}.ctx`), nameHex: readFileSync(file(`${name}.name`)).toString('hex') };
    },
    async quote(akCtx, pcrList, qualificationHex, tag, scheme) {
      const files = { msg: file(`${tag}.msg`), sig: file(`${tag}.sig`), pcrs: file(`${tag}.pcrs`) };
      const args = ['-c', akCtx, '-l', pcrList, '-m', files.msg, '-s', files.sig, '-o', files.pcrs, '-g', 'sha256'];
      if (qualificationHex.length > 0) args.push('-q', qualificationHex);
      // tpm2_quote asks for RSASSA unless told otherwise; an AK with a fixed RSAPSS scheme needs it named.
      if (scheme) args.push('--scheme', scheme);
      try {
        await run('tpm2_quote', args);
      } finally {
        await flush();
      }
      return { msg: readFileSync(files.msg), sig: readFileSync(files.sig), pcrs: readFileSync(files.pcrs), files };
    },
    async activate(akCtx, ekHandle, credentialBlob, encryptedSecret, tag) {
      // tpm2-tools credential file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET
      const hdr = Buffer.alloc(8);
      hdr.writeUInt32BE(0xbadcc0de, 0);
      hdr.writeUInt32BE(1, 4);
      writeFileSync(file(`${tag}.cred`), Buffer.concat([hdr, credentialBlob, encryptedSecret]));
      const out = file(`${tag}.secret`);
      try {
        if (ekHandle === RSA_EK_HANDLE) {
          // low-range EK: authPolicy = PolicySecret(TPM_RH_ENDORSEMENT)
          await run('tpm2_startauthsession', ['--policy-session', '-S', file('session.ctx')]);
          await run('tpm2_policysecret', ['-S', file('session.ctx'), '-c', 'e']);
          await run('tpm2_activatecredential', ['-c', akCtx, '-C', ekHandle, '-i', file(`${tag}.cred`), '-o', out, '-P', `session:${file('session.ctx')}`]);
        } else {
          // high-range EK template sets userWithAuth: empty password authorises it
          await run('tpm2_activatecredential', ['-c', akCtx, '-C', ekHandle, '-i', file(`${tag}.cred`), '-o', out]);
        }
      } finally {
        await flush();
      }
      return readFileSync(out);
    },
    async reloadAk(name) {
      const parent = akParents.get(name) ?? RSA_EK_HANDLE;
      const load = ['-C', parent, '-u', file(`${name}.pub`), '-r', file(`${name}.priv`), '-c', file(`${name}.ctx`)];
      if (parent === RSA_EK_HANDLE) {
        // low-range EK: authPolicy = PolicySecret(TPM_RH_ENDORSEMENT)
        await run('tpm2_startauthsession', ['--policy-session', '-S', file('session.ctx')]);
        await run('tpm2_policysecret', ['-S', file('session.ctx'), '-c', 'e']);
        await run('tpm2_load', [...load, '-P', `session:${file('session.ctx')}`]);
      } else {
        // high-range EK template sets userWithAuth: empty password authorises it
        await run('tpm2_load', load);
      }
      await flush();
    },
    async stop() {
      await swtpm.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return t;
}

/** tpm2-tools PCR list string (e.g. "sha1:0,1+sha256:0,1,2") for a TPML_PCR_SELECTION. */
export function pcrListString(sel: { bank: string; pcrs: number[] }[]): string {
  return sel
    .filter((s) => s.pcrs.length > 0)
    .map((s) => `${s.bank}:${s.pcrs.join(',')}`)
    .join('+');
}
