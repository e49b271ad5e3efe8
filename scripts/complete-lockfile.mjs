// Completes package-lock.json with entries for platform-specific optional dependencies that the
// npm registry mirror used here does not carry (npm then leaves them out of the lock, and `npm ci`
// refuses the lock as out of sync). Each added entry is marked optional with the os/cpu its package
// name declares, so npm ci skips it on other platforms exactly as it would with a complete lock.
// Run after changing dependencies: node scripts/complete-lockfile.mjs
import { readFileSync, writeFileSync } from 'node:fs';

const path = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(path, 'utf8'));
const pkgs = lock.packages;
const OS = ['android', 'darwin', 'freebsd', 'linux', 'win32', 'openbsd', 'openharmony', 'netbsd', 'sunos', 'aix', 'cygwin'];
const CPU = { arm64: 'arm64', arm: 'arm', x64: 'x64', ia32: 'ia32', loong64: 'loong64', riscv64: 'riscv64', ppc64: 'ppc64', s390x: 's390x', mips64el: 'mips64el', wasm32: 'wasm32' };

function platformOf(name) {
  const base = name.split('/').pop();
  const parts = base.split('-');
  const os = parts.find((p) => OS.includes(p));
  const cpu = parts.map((p) => CPU[p]).find(Boolean);
  const libc = parts.includes('musl') ? 'musl' : parts.includes('gnu') || parts.includes('gnueabihf') ? 'glibc' : undefined;
  return { os, cpu, libc };
}

let added = 0;
for (const [where, meta] of Object.entries(pkgs)) {
  const opt = meta.optionalDependencies ?? {};
  for (const [dep, range] of Object.entries(opt)) {
    const nested = `${where ? where + '/' : ''}node_modules/${dep}`;
    if (pkgs[nested] || pkgs[`node_modules/${dep}`]) continue;
    const { os, cpu, libc } = platformOf(dep);
    if (!os && !cpu) continue; // not a platform package (e.g. fsevents is present when needed)
    const version = String(range).replace(/^[~^=]/, '');
    pkgs[`node_modules/${dep}`] = { version, optional: true, ...(cpu ? { cpu: [cpu] } : {}), ...(os ? { os: [os] } : {}), ...(libc ? { libc: [libc] } : {}) };
    added++;
  }
}
writeFileSync(path, JSON.stringify(lock, null, 2) + '\n');
console.log(`complete-lockfile: added ${added} platform-specific optional entries`);
