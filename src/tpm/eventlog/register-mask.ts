/**
 * A set of register indices as a 32-bit mask, for the loops that test every record of a log
 * against the compared PCRs (a bit test instead of a hash-set lookup per record). PC Client PCRs
 * are 0–23; a set holding anything outside 0–31 has no mask and is tested as a set.
 */
export function registerMask(set: ReadonlySet<number>): number | undefined {
  let mask = 0;
  for (const i of set) {
    if (!isSmallIndex(i)) return undefined;
    mask |= 1 << i;
  }
  return mask;
}

/** Whether `index` is in the set `mask` was made from (a whole number 0–31 whose bit is set). */
export function inMask(mask: number, index: number): boolean {
  return isSmallIndex(index) && ((mask >>> index) & 1) === 1;
}

function isSmallIndex(i: number): boolean {
  return (i >>> 0) === i && i < 32;
}
