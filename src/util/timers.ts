/**
 * Node's timers hold at most 2^31 − 1 ms (24.8 days): a longer (or non-finite) delay given to
 * setTimeout fires after 1 ms, with a TimeoutOverflowWarning. Delays that come from configuration or
 * from a peer go through `timerDelayMs` first.
 */

/** The longest delay one Node timer can hold, ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` made safe for setTimeout: within [0, MAX_TIMER_MS]; NaN (never a deliberate "now") is MAX_TIMER_MS. */
export function timerDelayMs(ms: number): number {
  if (Number.isNaN(ms)) return MAX_TIMER_MS;
  return Math.min(MAX_TIMER_MS, Math.max(0, ms));
}
