/** Shared fastify setup: strict JSON Schema validation, error shape, body limits, metrics. */
import Fastify, { type FastifyError, type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import type { Logger } from 'pino';
import { SigilError, errorFields } from '../errors.js';
import type { VerifierMetrics } from './metrics.js';

/** Largest body of any route; `POST /v1/attest` (the unauthenticated hello) has its own, lower limit. */
export const BODY_LIMIT = 1024 * 1024;

/** Deepest nesting of arrays and objects a JSON body may have (Sigil's own messages need 5). */
export const MAX_JSON_DEPTH = 32;

/**
 * Whether the JSON text in `body` nests arrays/objects deeper than `max`, found by one pass over the
 * bytes counting `[`/`{` outside strings. Runs before JSON.parse, whose time grows with the nesting
 * of a body (a megabyte of `[` costs about half a second), so a deep body is refused for the
 * price of a scan. Only the depth is judged here; the parser still rejects malformed text.
 */
export function jsonTooDeep(body: Buffer, max: number): boolean {
  return jsonShape(body, max, Infinity) === 'deep';
}

/**
 * Most arrays, objects and separators (`[`, `{`, `,` outside strings) a JSON body may hold. A
 * shallow megabyte passes the depth check and still costs JSON.parse about 150 ms (`[{},{},…]`)
 * to 170 ms (`[[[…32…]]],…`) of CPU; bounded here it costs a few ms. Sigil's own largest bodies
 * (500 CSRs, 1,000 federation entries) hold a few thousand.
 */
export const MAX_JSON_TOKENS = 16_384;

/**
 * One pass over the bytes outside strings: `'deep'` when arrays/objects nest deeper than `maxDepth`,
 * `'wide'` when the body holds more than `maxTokens` of `[`, `{` and `,`, else undefined.
 */
export function jsonShape(body: Buffer, maxDepth: number, maxTokens: number): 'deep' | 'wide' | undefined {
  let depth = 0;
  let tokens = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return 'deep';
      if (++tokens > maxTokens) return 'wide';
    } else if (c === 0x2c) {
      if (++tokens > maxTokens) return 'wide';
    } else if ((c === 0x5d || c === 0x7d) && depth > 0) depth--;
  }
  return undefined;
}

/** application/json with the depth check in front of fastify's own parser (which keeps its prototype-poisoning checks). */
export function installJsonParser(app: FastifyInstance): void {
  const parse = app.getDefaultJsonParser('error', 'ignore');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    const shape = jsonShape(body as Buffer, MAX_JSON_DEPTH, MAX_JSON_TOKENS);
    if (shape === 'deep') {
      done(new SigilError('http.json_too_deep', `request body nests arrays/objects deeper than ${MAX_JSON_DEPTH} levels`), undefined);
      return;
    }
    if (shape === 'wide') {
      done(new SigilError('http.json_too_complex', `request body holds more than ${MAX_JSON_TOKENS} arrays, objects and list items`), undefined);
      return;
    }
    parse(req, (body as Buffer).toString('utf8'), done);
  });
}

/**
 * Expected refusals (a SigilError that is not a 500, and requests fastify refuses) are logged as
 * one `warn` line without a stack: at most `burst` lines per error code per `intervalMs`; the next
 * line of that code after a quiet spell carries `suppressed`, how many lines were left out. The
 * `sigil_refusals_total` counter counts every refusal.
 */
const MAX_LOGGED_REASON = 300;

export class RefusalLog {
  private readonly codes = new Map<string, { windowStart: number; logged: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly metrics: VerifierMetrics | undefined,
    private readonly opts: { burst: number; intervalMs: number; now: () => number } = { burst: 5, intervalMs: 10_000, now: Date.now },
  ) {}

  refused(req: FastifyRequest, status: number, code: string, message: string): void {
    this.metrics?.refusals.inc({ code });
    const t = this.opts.now();
    // Codes come from plugins too; past 256 distinct ones, the rest share one budget.
    const key = this.codes.has(code) || this.codes.size < 256 ? code : '*';
    let w = this.codes.get(key);
    if (!w) {
      w = { windowStart: t, logged: 0, suppressed: 0 };
      this.codes.set(key, w);
    }
    // A window that seems to start in the future began before a step back of the clock: start anew.
    if (t - w.windowStart >= this.opts.intervalMs || t < w.windowStart) {
      w.windowStart = t;
      w.logged = 0;
    }
    if (w.logged >= this.opts.burst) {
      w.suppressed++;
      return;
    }
    w.logged++;
    const suppressed = w.suppressed;
    w.suppressed = 0;
    // Reasons can quote the request (an unknown attestor's name, a field): keep a line short.
    const reason = message.length > MAX_LOGGED_REASON ? `${message.slice(0, MAX_LOGGED_REASON)}… (${message.length} characters)` : message;
    const url = req.url.split('?')[0] as string;
    this.logger.warn(
      { code, status, method: req.method, url: url.slice(0, MAX_LOGGED_REASON), ip: req.ip, ...(suppressed ? { suppressed } : {}) },
      `request refused: ${reason}`,
    );
  }
}

export const ajvOptions = {
  customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false, strict: false },
} as const;

/** Error → `{ error: { code, message } }` with the right status; never a stack trace on the wire. */
export function installErrorHandling(app: FastifyInstance, logger: Logger, refusals: RefusalLog = new RefusalLog(logger, undefined)): void {
  app.setErrorHandler((err: FastifyError | SigilError | Error, req, reply) => {
    const refuse = (status: number, code: string, message: string) => {
      refusals.refused(req, status, code, message);
      return reply.code(status).send({ error: { code, message } });
    };
    if (err instanceof SigilError) {
      // A 500 is a bug or a misbehaving plugin: logged in full. Anything else is a refusal.
      if (err.status !== 500) return refuse(err.status, err.code, err.message);
      logger.error({ ...errorFields(err), url: req.url }, 'request failed');
      return reply.code(err.status).send({ error: { code: err.code, message: err.message } });
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const where = fe.validationContext ?? 'request';
      const first = fe.validation[0];
      const path = first ? `${first.instancePath || '/'}` : '';
      const extra = first?.keyword === 'additionalProperties' ? ` ("${String((first.params as { additionalProperty?: string }).additionalProperty)}")` : '';
      return refuse(400, 'http.bad_request', `${where}${path}: ${first?.message ?? 'invalid'}${extra}`);
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return refuse(413, 'http.body_too_large', `request body over ${req.routeOptions.bodyLimit ?? BODY_LIMIT} bytes`);
    }
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return refuse(415, 'http.unsupported_media_type', 'send application/json');
    }
    if (fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (fe.statusCode === 400 && err instanceof SyntaxError)) {
      return refuse(400, 'http.bad_json', 'request body is not valid JSON');
    }
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
      return refuse(fe.statusCode, 'http.bad_request', fe.message);
    }
    logger.error({ ...errorFields(err), url: req.url }, 'unexpected error');
    return reply.code(500).send({ error: { code: 'internal', message: 'internal error (see verifier log)' } });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ error: { code: 'http.not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });
}

export function instrument(app: FastifyInstance, metrics: VerifierMetrics): void {
  // One labelled child per (route, method, status), looked up by a short key instead of hashing a
  // label object per request (a sync is two requests every few seconds per agent). The routes are
  // the registered ones (or 'unknown'), so the map stays small.
  const children = new Map<string, { observe: (v: number) => void }>();
  app.addHook('onResponse', (req, reply, done) => {
    const route = req.routeOptions.url ?? 'unknown';
    const key = `${req.method} ${reply.statusCode} ${route}`;
    let c = children.get(key);
    if (c === undefined) {
      c = metrics.http.labels({ route, method: req.method, status: String(reply.statusCode) });
      if (children.size < 4096) children.set(key, c);
    }
    c.observe(reply.elapsedTime / 1000);
    done();
  });
}

export function baseOptions(): FastifyServerOptions {
  return {
    logger: false,
    bodyLimit: BODY_LIMIT,
    ajv: ajvOptions,
    return503OnClosing: true,
    connectionTimeout: 30_000,
    keepAliveTimeout: 10_000,
    requestTimeout: 30_000,
  };
}

export { Fastify };

/** Schema snippets. */
export const b64String = { type: 'string', pattern: '^[A-Za-z0-9+/]*={0,2}$', minLength: 4, maxLength: 65536 } as const;
export const errorReply = { type: 'object' } as const;
