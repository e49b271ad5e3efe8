/** Shared helpers for the SEV-SNP tests (real evidence from ../shared/testdata/sev-snp). */
import { readFileSync } from 'node:fs';
import { pemToDerList } from '../../src/sev/certs.js';
import { td } from '../support/testdata.js';

/** Verification times used for the real reports (inside each VCEK's validity). */
export const MILAN_AT = new Date('2025-01-01T00:00:00Z'); // milan-v2 VCEK 2023-04-03 → 2030-04-03; debug VCEK 2022-09-24 → 2029-09-24
export const TURIN_AT = new Date('2026-07-01T00:00:00Z'); // turin-v5 VCEK 2026-06-28 → 2033-06-28

export function sevFile(name: string): Buffer {
  const b = readFileSync(td('sev-snp', name));
  return name.endsWith('.hex') ? Buffer.from(b.toString('latin1').trim(), 'hex') : b;
}

export function sevChain(product: 'milan' | 'genoa' | 'turin', kind: 'ask' | 'asvk' = 'ask'): Buffer[] {
  return pemToDerList(readFileSync(td('sev-snp', `${kind}_ark_${product}.pem`), 'latin1'), `${kind}_ark_${product}.pem`);
}

/** Run fn and return the SigilError code it throws (or 'no error'). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `non-sigil: ${String(e)}`;
  }
  return 'no error';
}

export async function codeOfAsync(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `non-sigil: ${String(e)}`;
  }
  return 'no error';
}
