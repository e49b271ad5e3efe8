import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { SigilError, errorMessage } from '../errors.js';
import type { JsonSchema } from './types.js';

// addUsedSchema: false — a schema's `$id` is not registered in this instance, which every plugin and
// both daemon configs share: two plugins with one `$id` (or one plugin whose schema is built anew on
// each load) would collide, and a plugin could define ids that other schemas resolve.
const ajv = new Ajv({ allErrors: true, strict: false, useDefaults: true, coerceTypes: false, removeAdditional: false, addUsedSchema: false });
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
export function validateAgainstSchema<T>(schema: JsonSchema, value: unknown, what: string, code = 'config.invalid', badSchema?: (e: unknown) => SigilError): T {
  let fn = cache.get(schema);
  if (!fn) {
    try {
      fn = ajv.compile(schema);
    } catch (e) {
      throw badSchema ? badSchema(e) : new SigilError('internal', `${what}: the schema does not compile: ${errorMessage(e)}`, { status: 500, cause: e });
    }
    cache.set(schema, fn);
  }
  if (!fn(value)) {
    const errs = (fn.errors ?? []).slice(0, 5).map(describe);
    throw new SigilError(code, `${what}: ${errs.join('; ')}`, { details: { errors: fn.errors ?? [] } });
  }
  return value as T;
}

/**
 * The one way a plugin's config block is validated — by the loader before anything starts, and by
 * every plugin's own `create` for direct callers: ajv against the plugin's schema (defaults filled
 * in on a copy), failing with `<namespace>.config_invalid` (the namespace is the plugin's name for
 * third-party plugins; `tpm`, `nitro`, `sev`, `join_token`, `unix`, `container` for the built-ins).
 * The message names the plugin and every offending key.
 */
export function validatePluginConfig<T>(schema: JsonSchema, raw: unknown, opts: { namespace: string; what: string }): T {
  const badSchema = (e: unknown): SigilError =>
    new SigilError('plugin.bad_module', `${opts.what}: the plugin's configSchema is not a JSON Schema ajv accepts: ${errorMessage(e).slice(0, 300)}`, { cause: e });
  return validateAgainstSchema<T>(schema, structuredClone(raw ?? {}), opts.what, `${opts.namespace}.config_invalid`, badSchema);
}

/** A config problem only the plugin can see (a file it cannot read, values that contradict): same code shape. */
export function pluginConfigError(namespace: string, message: string, cause?: unknown): SigilError {
  return new SigilError(`${namespace}.config_invalid`, message, cause === undefined ? {} : { cause });
}
