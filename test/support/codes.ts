import { expect } from 'vitest';
import { SigilError } from '../../src/errors.js';

/** The SigilError code `fn` throws ('no error' if it returns); anything else thrown fails the test. */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
  return 'no error';
}

/** The SigilError code `p` rejects with ('no error' if it resolves); anything else rejected fails the test. */
export async function codeOfAsync(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
  return 'no error';
}
