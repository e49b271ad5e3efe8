/** Test helper: a registration entry to create, with neutral defaults for what a test does not set. */
import type { NewEntry } from '../../src/store/types.js';

/** A NewEntry for `spiffeId` under `parentId` (selectors `unix:uid:1`, no TTLs, DNS names, hint or expiry), with `over` applied. */
export function newEntry(spiffeId: string, parentId: string, over: Partial<NewEntry> = {}): NewEntry {
  return {
    spiffeId,
    parentId,
    selectors: ['unix:uid:1'],
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: '',
    admin: false,
    expiresAt: null,
    ...over,
  };
}
