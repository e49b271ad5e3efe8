/**
 * join_token node attestor (DESIGN §4): the operator makes a single-use, expiring token with
 * `sigil token generate`; the agent presents it in its hello. No selectors; the agent ID suffix is
 * the token's id (never the secret itself). The token is checked at `begin` and `finish` and used up
 * at `commit`, after every factor passed and after every other factor's commit (`consumesOnCommit`),
 * so a session that fails on another factor — in `finish` or in its `commit` — leaves the token usable.
 * Between `begin` and `commit` the session state (kept in the datastore) holds the token's digest,
 * never the token: someone who reads the database or its WAL cannot attest with it.
 */
import { resolve } from 'node:path';
import { SigilError } from '../errors.js';
import { readSecretFile } from '../spiffe/keys.js';
import type { NodeAttestorAgentPlugin, NodeAttestorVerifierPlugin, VerifierServices } from '../plugins/types.js';

const TOKEN_RE = /^[A-Za-z0-9_-]{16,128}$/;

function tokenFrom(hello: unknown): string {
  const t = (hello as { token?: unknown } | null)?.token;
  if (typeof t !== 'string' || !TOKEN_RE.test(t)) {
    throw new SigilError('join_token.malformed', 'join_token hello must be { "token": "<16–128 url-safe characters>" }', { status: 400 });
  }
  return t;
}

/** The verifier's token services by digest; a host without them (not a verifier) cannot run this attestor. */
function digestServices(services: VerifierServices | undefined): VerifierServices {
  const d = services as Partial<VerifierServices> | undefined;
  if (typeof d?.digestJoinToken !== 'function' || typeof d.checkJoinTokenDigest !== 'function' || typeof d.consumeJoinTokenDigest !== 'function') {
    throw new SigilError('plugin.init_failed', 'plugin "join_token": needs the verifier datastore (only runs inside the verifier)');
  }
  return d as VerifierServices;
}

/** Session state: version 2 holds the token's digest (version 1, `{ token }`, held the secret). */
interface JoinTokenState {
  v: 2;
  digest: string;
}

function parseState(state: unknown): JoinTokenState {
  const o = state as Partial<JoinTokenState> & { token?: unknown };
  if (typeof o !== 'object' || o === null) throw new SigilError('join_token.bad_state', 'join_token session state is not one this verifier wrote', { status: 400 });
  if (o.token !== undefined) {
    throw new SigilError('join_token.bad_state', 'join_token session state holds the token itself (written by an older verifier); this verifier keeps only its digest: attest again', { status: 400 });
  }
  if (o.v !== 2 || typeof o.digest !== 'string' || !/^[0-9a-f]{64}$/.test(o.digest)) {
    throw new SigilError('join_token.bad_state', 'join_token session state is not one this verifier wrote', { status: 400 });
  }
  return { v: 2, digest: o.digest };
}

export const joinTokenVerifierPlugin: NodeAttestorVerifierPlugin = {
  name: 'join_token',
  configSchema: { type: 'object', additionalProperties: false, properties: {} },
  create(_config, deps) {
    const services = digestServices(deps.services);
    return {
      async begin(hello, session) {
        const digest = services.digestJoinToken(tokenFrom(hello));
        await services.checkJoinTokenDigest(digest, session.now);
        const state: JoinTokenState = { v: 2, digest };
        return { challenge: {}, state };
      },
      async finish(_response, state, session) {
        const { tokenId } = await services.checkJoinTokenDigest(parseState(state).digest, session.now);
        return { selectors: [], claims: { tokenId }, agentIdSuffix: tokenId };
      },
      async commit(state, session) {
        await services.consumeJoinTokenDigest(parseState(state).digest, session.now);
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
        // The token is a credential: the file is refused when group or others can access it.
        const token = c.token ?? readSecretFile(resolve(deps.configDir, c.tokenFile as string), 'join_token tokenFile').toString('utf8').trim();
        if (!TOKEN_RE.test(token)) throw new SigilError('join_token.malformed', `join_token: token${c.tokenFile ? ` in ${c.tokenFile}` : ''} is not a valid token`);
        return { token };
      },
      async respond() {
        return {};
      },
    };
  },
};
