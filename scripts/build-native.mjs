#!/usr/bin/env node
// Builds Sigil's native addons (see binding.gyp and docs/native.md). Run by `npm ci` / `npm install`
// through package.json's "install" script, or by hand: `node scripts/build-native.mjs`.
//
//   build/Release/sigil_sys.node  always; if it cannot be built this script exits non-zero and
//                                 the compiler output stays visible.
//   build/Release/sigil_tpm.node  only when pkg-config finds tss2-esys, tss2-tctildr, tss2-mu and
//                                 tss2-rc (Debian/Ubuntu: libtss2-dev) and SIGIL_DISABLE_TPM is not 1.
//                                 If they are missing, or the TPM addon fails to compile, one line
//                                 says that TPM support is disabled and why (also written to
//                                 build/Release/sigil_tpm.disabled), and the script still exits 0.
//
// node-gyp is the one bundled with npm (npm_config_node_gyp, set by npm for lifecycle scripts),
// else npm's own copy next to the running node, else a local node_modules copy, else `npx node-gyp`.
// Node headers: npm_config_nodedir if set, else the headers installed beside this node binary
// (e.g. /usr/include/node), so no download is needed on distribution-packaged Node.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(join(root, 'binding.gyp'))) process.exit(0);

const TSS2_MODULES = ['tss2-esys', 'tss2-tctildr', 'tss2-mu', 'tss2-rc'];
const log = (msg) => console.log(`sigil native: ${msg}`);
// src/native/tpm.ts reads this file to tell users why TPM support is missing.
const DISABLED_MARKER = join(root, 'build', 'Release', 'sigil_tpm.disabled');
function disableTpm(reason) {
  writeFileSync(DISABLED_MARKER, `${reason}\n`);
  log(`TPM support is disabled: ${reason}`);
}

function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const prefix = dirname(dirname(process.execPath));
  candidates.push(join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(join(dirname(process.execPath), 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  if (process.env.npm_execpath) {
    // npm_execpath = <npm>/bin/npm-cli.js
    candidates.push(join(dirname(dirname(process.env.npm_execpath)), 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  try {
    candidates.push(createRequire(join(root, 'package.json')).resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    // not installed locally
  }
  for (const c of candidates) if (c && existsSync(c)) return { cmd: process.execPath, pre: [c] };
  return { cmd: 'npx', pre: ['--no-install', 'node-gyp'] };
}

function nodedirArgs() {
  const fromNpm = process.env.npm_config_nodedir;
  if (fromNpm && existsSync(join(fromNpm, 'include', 'node', 'node_api.h'))) return [`--nodedir=${fromNpm}`];
  if (fromNpm) return [`--nodedir=${fromNpm}`];
  const prefix = dirname(dirname(process.execPath));
  const hdr = join(prefix, 'include', 'node', 'node_api.h');
  const ver = join(prefix, 'include', 'node', 'node_version.h');
  // Only use local headers if they belong to this exact Node version.
  if (existsSync(hdr) && existsSync(ver)) {
    const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(process.versions.node)'], { encoding: 'utf8' });
    const src = spawnSync('sh', ['-c', `grep -E '#define NODE_(MAJOR|MINOR|PATCH)_VERSION ' '${ver}' | awk '{print $3}' | paste -sd.`], {
      encoding: 'utf8',
    });
    if (r.stdout.trim() !== '' && src.stdout.trim() === r.stdout.trim()) return [`--nodedir=${prefix}`];
  }
  return [];
}

/** Why the TPM addon cannot be built, or null when pkg-config finds every tss2 module. */
function tss2Problem() {
  const which = spawnSync('pkg-config', ['--version'], { encoding: 'utf8' });
  if (which.error || which.status !== 0) {
    return 'pkg-config is not installed (Debian: apt-get install pkg-config libtss2-dev); rebuild with `npm rebuild sigil` after installing it';
  }
  const missing = TSS2_MODULES.filter((m) => spawnSync('pkg-config', ['--exists', m]).status !== 0);
  if (missing.length > 0) {
    return `pkg-config cannot find ${missing.join(', ')} (Debian/Ubuntu: apt-get install libtss2-dev; Fedora: dnf install tpm2-tss-devel); rebuild with \`npm rebuild sigil\` after installing it`;
  }
  return null;
}

function nodeGyp(args, { quiet, env }) {
  const { cmd, pre } = findNodeGyp();
  const r = spawnSync(cmd, [...pre, ...args], {
    cwd: root,
    encoding: 'utf8',
    stdio: quiet ? ['ignore', 'pipe', 'pipe'] : 'inherit',
    env,
  });
  if (r.error) return { ok: false, out: `${cmd} ${pre.join(' ')}: ${r.error.message}` };
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

function build(haveTss2, quiet) {
  rmSync(join(root, 'build'), { recursive: true, force: true });
  // binding.gyp leaves sigil_tpm out when SIGIL_DISABLE_TPM=1.
  const env = { ...process.env };
  if (haveTss2) delete env.SIGIL_DISABLE_TPM;
  else env.SIGIL_DISABLE_TPM = '1';
  return nodeGyp(['rebuild', '--release', ...nodedirArgs()], { quiet, env });
}

/** First compiler/linker error line of a failed build, for the one-line reason. */
function firstError(out) {
  const lines = out.split('\n');
  const hit = lines.find((l) => /\berror\b/i.test(l) && !/^gyp (ERR|info)/.test(l)) ?? lines.find((l) => l.trim() !== '');
  return (hit ?? 'unknown error').trim().slice(0, 300);
}

const problem =
  process.env.SIGIL_DISABLE_TPM === '1'
    ? 'SIGIL_DISABLE_TPM=1 was set for the build; rebuild without it (`npm rebuild sigil`) to enable it'
    : tss2Problem();
if (problem === null) {
  // Full build first; quiet so that a TPM-only failure does not look like a failed install.
  const full = build(true, true);
  if (full.ok && existsSync(join(root, 'build', 'Release', 'sigil_tpm.node'))) {
    log('built sigil_sys and sigil_tpm (TPM support enabled)');
    process.exit(0);
  }
  // Find out whether the TPM part is to blame: rebuild without it, showing the output this time.
  const sysOnly = build(false, false);
  if (!sysOnly.ok) {
    console.error('sigil native: building sigil_sys failed (see the compiler output above)');
    process.exit(1);
  }
  console.error(full.out);
  disableTpm(`building sigil_tpm against libtss2 failed: ${firstError(full.out)}`);
  process.exit(0);
} else {
  const sysOnly = build(false, false);
  if (!sysOnly.ok) {
    console.error('sigil native: building sigil_sys failed (see the compiler output above)');
    process.exit(1);
  }
  disableTpm(problem);
  process.exit(0);
}
