/** Validation of registration entries and selectors (DESIGN §4, §5). */
import { SigilError } from '../errors.js';
import { SpiffeId, parseTrustDomain } from '../spiffe/id.js';
import type { NewEntry, RegistrationEntry } from '../store/types.js';

export const MAX_SELECTORS = 64;
export const MAX_FEDERATES_WITH = 32;
export const MAX_SELECTOR_LEN = 1024;
const TYPE_RE = /^[a-z][a-z0-9_]{0,63}$/;
const DNS_RE = /^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** A selector is `type:value`, both non-empty; type is an attestor name. */
export function validateSelector(s: unknown): string {
  if (typeof s !== 'string') throw new SigilError('selector.invalid', 'a selector must be a string "type:value"');
  if (s.length > MAX_SELECTOR_LEN) throw new SigilError('selector.invalid', `selector longer than ${MAX_SELECTOR_LEN} characters`);
  const i = s.indexOf(':');
  if (i <= 0 || i === s.length - 1) throw new SigilError('selector.invalid', `selector "${s}" must be "type:value" with both parts non-empty`);
  const type = s.slice(0, i);
  if (!TYPE_RE.test(type)) throw new SigilError('selector.invalid', `selector "${s}": type "${type}" must be lowercase letters, digits and _`);
  if ([...s].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) throw new SigilError('selector.invalid', `selector "${s.slice(0, 40)}…" contains control characters`);
  return s;
}

export interface EntryInput {
  spiffeId: string;
  parentId: string;
  selectors: string[];
  x509SvidTtl?: number;
  jwtSvidTtl?: number;
  dnsNames?: string[];
  hint?: string;
  admin?: boolean;
  expiresAt?: string | null;
  federatesWith?: string[];
}

/** Foreign trust domains an entry federates with: valid names (bare or spiffe://), never the local one; sorted, deduplicated. */
export function validateFederatesWith(v: unknown, trustDomain: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new SigilError('entry.invalid_federates_with', 'federatesWith must be a list of trust domain names');
  if (v.length > MAX_FEDERATES_WITH) throw new SigilError('entry.invalid_federates_with', `at most ${MAX_FEDERATES_WITH} trust domains in federatesWith`);
  const out = new Set<string>();
  for (const x of v) {
    let td: string;
    try {
      td = parseTrustDomain(String(x));
    } catch (e) {
      throw new SigilError('entry.invalid_federates_with', `federatesWith "${String(x).slice(0, 80)}": ${(e as Error).message}`, { cause: e });
    }
    if (td === trustDomain) throw new SigilError('entry.federates_with_local', `federatesWith names ${td}, the entry's own trust domain`);
    out.add(td);
  }
  return [...out].sort();
}

export function verifierId(trustDomain: string): string {
  return `spiffe://${trustDomain}/sigil/verifier`;
}

/** Validate an entry for `trustDomain`; returns the normalised NewEntry. */
export function validateEntry(input: EntryInput, trustDomain: string): NewEntry {
  let id: SpiffeId;
  let parent: SpiffeId;
  try {
    id = SpiffeId.parse(input.spiffeId);
  } catch (e) {
    throw new SigilError('entry.invalid_spiffe_id', `spiffeId: ${(e as Error).message}`, { cause: e });
  }
  try {
    parent = SpiffeId.parse(input.parentId);
  } catch (e) {
    throw new SigilError('entry.invalid_parent_id', `parentId: ${(e as Error).message}`, { cause: e });
  }
  if (!id.memberOf(trustDomain)) throw new SigilError('entry.wrong_trust_domain', `spiffeId ${input.spiffeId} is not in trust domain ${trustDomain}`);
  if (!parent.memberOf(trustDomain)) throw new SigilError('entry.wrong_trust_domain', `parentId ${input.parentId} is not in trust domain ${trustDomain}`);
  if (id.path.startsWith('/sigil/')) throw new SigilError('entry.reserved_path', `spiffeId paths under /sigil/ are reserved for the verifier and agents`);
  if (!Array.isArray(input.selectors) || input.selectors.length === 0) throw new SigilError('entry.no_selectors', 'an entry needs at least one selector');
  if (input.selectors.length > MAX_SELECTORS) throw new SigilError('entry.too_many_selectors', `at most ${MAX_SELECTORS} selectors per entry`);
  const selectors = [...new Set(input.selectors.map(validateSelector))].sort();
  const dnsNames = input.dnsNames ?? [];
  for (const d of dnsNames) {
    if (typeof d !== 'string' || !DNS_RE.test(d)) throw new SigilError('entry.invalid_dns_name', `"${String(d)}" is not a DNS name`);
  }
  const ttl = (v: number | undefined, key: string): number => {
    if (v === undefined) return 0;
    if (!Number.isInteger(v) || v < 0 || v > 366 * 86400) throw new SigilError('entry.invalid_ttl', `${key} must be whole seconds between 0 (default) and one year`);
    return v;
  };
  let expiresAt: string | null = null;
  if (input.expiresAt !== undefined && input.expiresAt !== null) {
    const t = Date.parse(input.expiresAt);
    if (Number.isNaN(t)) throw new SigilError('entry.invalid_expiry', `expiresAt "${input.expiresAt}" is not an ISO time`);
    expiresAt = new Date(t).toISOString();
  }
  const hint = input.hint ?? '';
  if (typeof hint !== 'string' || hint.length > 256) throw new SigilError('entry.invalid_hint', 'hint must be a string of at most 256 characters');
  return {
    spiffeId: id.toString(),
    parentId: parent.toString(),
    selectors,
    x509SvidTtl: ttl(input.x509SvidTtl, 'x509SvidTtl'),
    jwtSvidTtl: ttl(input.jwtSvidTtl, 'jwtSvidTtl'),
    dnsNames,
    hint,
    admin: input.admin === true,
    expiresAt,
    federatesWith: validateFederatesWith(input.federatesWith, trustDomain),
  };
}

export function entryLive(e: RegistrationEntry, now: Date): boolean {
  return e.expiresAt === null || Date.parse(e.expiresAt) > now.getTime();
}
