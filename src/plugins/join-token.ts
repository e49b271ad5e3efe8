/**
 * join_token node attestor (DESIGN §4): the operator makes a single-use, expiring token with
 * `sigil token generate`; the agent presents it in its hello. No selectors; the agent ID suffix is
 * the token's id (never the secret itself). The token is checked at `begin` and `finish` and used up
 * at `commit`, after every factor passed and after every other factor's commit (`consumesOnCommit`),
 * so a session that fails on another factor — in `finish` or in its `commit` — leaves the token usable.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { SigilError } from '../errors.js';
import type { NodeAttestorAgentPlugin, NodeAttestorVerifierPlugin } from './types.js';

const TOKEN_RE = /^[A-Za-z0-9_-]{16,128}$/;

function tokenFrom(hello: unknown): string {
  const t = (hello as { token?: unknown } | null)?.token;
  if (typeof t !== 'string' || !TOKEN_RE.test(t)) {
    throw new SigilError('join_token.malformed', 'join_token hello must be { "token": "<16–128 url-safe characters>" }', { status: 400 });
  }
  return t;
}

export const joinTokenVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: 'join_token',
  configSchema: { type: 'object', additionalProperties: false, properties: {} },
  create(_config, deps) {
    const services = deps.services;
    if (!services) throw new SigilError('plugin.init_failed', 'plugin "join_token": needs the verifier datastore (only runs inside the verifier)');
    return {
      async begin(hello, session) {
        const token = tokenFrom(hello);
        await services.checkJoinToken(token, session.now);
        return { challenge: {}, state: { token } };
      },
      async finish(_response, state, session) {
        const { token } = state as { token: string };
        const { tokenId } = await services.checkJoinToken(token, session.now);
        return { selectors: [], claims: { tokenId }, agentIdSuffix: tokenId };
      },
      async commit(state, session) {
        await services.consumeJoinToken((state as { token: string }).token, session.now);
      },
      // Used up last, after every other factor's commit (which may still lose a race) succeeded.
      consumesOnCommit: true,
    };
  },
};

export const joinTokenAgentPlugin: NodeAttestorAgentPlugin = {
  name: 'join_token',
  configSchema: {
    type: 'object',
    additionalProperties: false,
    properties: { token: { type: 'string', minLength: 16, maxLength: 128 }, tokenFile: { type: 'string', minLength: 1 } },
    oneOf: [{ required: ['token'] }, { required: ['tokenFile'] }],
  },
  create(config, deps) {
    const c = config as { token?: string; tokenFile?: string };
    return {
      async hello() {
        // Read the file on every attempt so an operator can drop in a fresh token after an eviction.
        const token = c.token ?? readFileSync(resolve(deps.configDir, c.tokenFile as string), 'utf8').trim();
        if (!TOKEN_RE.test(token)) throw new SigilError('join_token.malformed', `join_token: token${c.tokenFile ? ` in ${c.tokenFile}` : ''} is not a valid token`);
        return { token };
      },
      async respond() {
        return {};
      },
    };
  },
};
