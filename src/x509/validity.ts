/**
 * The one validity-period check (RFC 5280 §4.1.2.5): the time is passed in, never read from a
 * clock here. A certificate is valid from notBefore through notAfter, both included.
 */
import { SigilError } from '../errors.js';
import { X509_CODES } from './errors.js';

export interface HasValidity {
  notBefore: Date;
  notAfter: Date;
}

/** The verification time in ms; anything but a finite time throws `x509.bad_time` (NaN would make every comparison false). */
export function verificationTimeMs(at: number | Date): number {
  const t = typeof at === 'number' ? at : at instanceof Date ? at.getTime() : Number.NaN;
  if (!Number.isFinite(t)) throw new SigilError(X509_CODES.badTime, 'verification time is not a valid date');
  return t;
}

const ms = verificationTimeMs;

/** `x509.not_yet_valid`, `x509.expired`, or undefined when `at` is inside the validity period; throws `x509.bad_time` for a time that is not finite. */
export function validityProblem(cert: HasValidity, at: number | Date): typeof X509_CODES.notYetValid | typeof X509_CODES.expired | undefined {
  const t = ms(at);
  if (t < cert.notBefore.getTime()) return X509_CODES.notYetValid;
  if (t > cert.notAfter.getTime()) return X509_CODES.expired;
  return undefined;
}

/** Throw `x509.not_yet_valid` / `x509.expired` when `at` is outside the validity period. `what` names the certificate. */
export function checkValidity(cert: HasValidity, at: number | Date, what = 'certificate'): void {
  const p = validityProblem(cert, at);
  if (p === undefined) return;
  const when = new Date(ms(at)).toISOString();
  if (p === X509_CODES.notYetValid) {
    throw new SigilError(p, `${what} is not valid until ${cert.notBefore.toISOString()} (verification time ${when})`, { status: 403 });
  }
  throw new SigilError(p, `${what} expired at ${cert.notAfter.toISOString()} (verification time ${when})`, { status: 403 });
}
