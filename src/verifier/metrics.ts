import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { registerProcessMetrics } from '../util/process-metrics.js';

export interface VerifierMetrics {
  registry: Registry;
  attestations: Counter<'attestor' | 'result'>;
  svids: Counter<'type'>;
  http: Histogram<'route' | 'method' | 'status'>;
  bundleSequence: Gauge;
  agents: Gauge;
  attestSessions: Gauge;
  refusals: Counter<'code'>;
  longPollLate: Histogram;
  agentRecordReads: Counter<'source'>;
}

/** A registry per verifier instance (so several can run in one process, e.g. in tests). */
export function createMetrics(): VerifierMetrics {
  const registry = new Registry();
  registerProcessMetrics(registry, 'sigil_verifier_');
  return {
    registry,
    attestations: new Counter({ name: 'sigil_attestations_total', help: 'Node attestation outcomes per attestor', labelNames: ['attestor', 'result'], registers: [registry] }),
    svids: new Counter({ name: 'sigil_svids_issued_total', help: 'SVIDs issued', labelNames: ['type'], registers: [registry] }),
    http: new Histogram({
      name: 'sigil_http_request_duration_seconds',
      help: 'HTTP request latency',
      labelNames: ['route', 'method', 'status'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    bundleSequence: new Gauge({ name: 'sigil_bundle_sequence', help: 'spiffe_sequence of the published bundle', registers: [registry] }),
    agents: new Gauge({ name: 'sigil_attested_agents', help: 'Attested agents known to this verifier', registers: [registry] }),
    attestSessions: new Gauge({ name: 'sigil_attestation_sessions_open', help: 'Attestation sessions this verifier holds open', registers: [registry] }),
    refusals: new Counter({ name: 'sigil_refusals_total', help: 'Requests refused with an expected error, per error code (logged lines are rate-limited; this is not)', labelNames: ['code'], registers: [registry] }),
    // The verifier's share of an unchanged agent's sync in push mode: the held long-poll's wait is
    // the interval, and anything past it is the verifier's timers, event loop and write.
    longPollLate: new Histogram({
      name: 'sigil_long_poll_late_seconds',
      help: 'How long after its granted wait a long-poll that ended unchanged (304) was answered: route start to the answer handed to the socket, minus the wait',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    agentRecordReads: new Counter({
      name: 'sigil_agent_record_reads_total',
      help: 'Agent records read by agent calls, from memory (kept while the datastore reports every write: PostgreSQL) or from the datastore',
      labelNames: ['source'],
      registers: [registry],
    }),
  };
}
