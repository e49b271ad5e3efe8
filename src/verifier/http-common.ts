/** Shared fastify setup: strict JSON Schema validation, error shape, body limits, metrics. */
import Fastify, { type FastifyError, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Logger } from 'pino';
import { SigilError } from '../errors.js';
import type { VerifierMetrics } from './metrics.js';

export const BODY_LIMIT = 1024 * 1024;

export const ajvOptions = {
  customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false, strict: false },
} as const;

/** Error → `{ error: { code, message } }` with the right status; never a stack trace on the wire. */
export function installErrorHandling(app: FastifyInstance, logger: Logger): void {
  app.setErrorHandler((err: FastifyError | SigilError | Error, req, reply) => {
    if (err instanceof SigilError) {
      if (err.status >= 500) logger.error({ err, url: req.url }, 'request failed');
      return reply.code(err.status).send({ error: { code: err.code, message: err.message } });
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      const where = fe.validationContext ?? 'request';
      const first = fe.validation[0];
      const path = first ? `${first.instancePath || '/'}` : '';
      const extra = first?.keyword === 'additionalProperties' ? ` ("${String((first.params as { additionalProperty?: string }).additionalProperty)}")` : '';
      return reply.code(400).send({ error: { code: 'http.bad_request', message: `${where}${path}: ${first?.message ?? 'invalid'}${extra}` } });
    }
    if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return reply.code(413).send({ error: { code: 'http.body_too_large', message: `request body over ${BODY_LIMIT} bytes` } });
    }
    if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return reply.code(415).send({ error: { code: 'http.unsupported_media_type', message: 'send application/json' } });
    }
    if (fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (fe.statusCode === 400 && err instanceof SyntaxError)) {
      return reply.code(400).send({ error: { code: 'http.bad_json', message: 'request body is not valid JSON' } });
    }
    if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
      return reply.code(fe.statusCode).send({ error: { code: 'http.bad_request', message: fe.message } });
    }
    logger.error({ err, url: req.url }, 'unexpected error');
    return reply.code(500).send({ error: { code: 'internal', message: 'internal error (see verifier log)' } });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send({ error: { code: 'http.not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });
}

export function instrument(app: FastifyInstance, metrics: VerifierMetrics): void {
  app.addHook('onResponse', async (req, reply) => {
    metrics.http.observe({ route: req.routeOptions.url ?? 'unknown', method: req.method, status: String(reply.statusCode) }, reply.elapsedTime / 1000);
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
