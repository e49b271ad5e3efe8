import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { SigilError } from '../errors.js';
import type { JsonSchema } from './types.js';

const ajv = new Ajv({ allErrors: true, strict: false, useDefaults: true, coerceTypes: false, removeAdditional: false });
const cache = new WeakMap<object, ValidateFunction>();

function describe(err: ErrorObject): string {
  const where = err.instancePath === '' ? '(top level)' : err.instancePath;
  if (err.keyword === 'additionalProperties') {
    return `${where}: unknown key "${String((err.params as { additionalProperty?: string }).additionalProperty)}"`;
  }
  if (err.keyword === 'required') {
    return `${where}: missing required key "${String((err.params as { missingProperty?: string }).missingProperty)}"`;
  }
  return `${where} ${err.message ?? 'is invalid'}`;
}

/**
 * Validate `value` against `schema` (defaults filled in place). Throws SigilError(code) whose message
 * names `what` (e.g. `plugin "tpm" config`) and every offending key.
 */
export function validateAgainstSchema<T>(schema: JsonSchema, value: unknown, what: string, code = 'config.invalid'): T {
  let fn = cache.get(schema);
  if (!fn) {
    fn = ajv.compile(schema);
    cache.set(schema, fn);
  }
  if (!fn(value)) {
    const errs = (fn.errors ?? []).slice(0, 5).map(describe);
    throw new SigilError(code, `${what}: ${errs.join('; ')}`, { details: { errors: fn.errors ?? [] } });
  }
  return value as T;
}
