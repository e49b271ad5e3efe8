/** A sleep that another caller can cut short (the agent's loops sleep between attempts and wake on close or demand). */
export class WakeableSleep {
  private wakeUp: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;

  /** Sleep `ms` (clamped to what setTimeout accepts); resolves early on wake(). The timer never keeps the process alive. */
  sleep(ms: number): Promise<void> {
    this.wake();
    return new Promise((res) => {
      this.wakeUp = res;
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.wakeUp = undefined;
        res();
      }, Math.max(0, Math.min(ms, 2 ** 31 - 1)));
      this.timer.unref();
    });
  }

  /** End the current sleep now (no-op when not sleeping). */
  wake(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const w = this.wakeUp;
    this.wakeUp = undefined;
    w?.();
  }
}
