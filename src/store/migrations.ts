/**
 * Schema version bookkeeping shared by the stores. Each store keeps its own migrations (SQL) as a
 * list, index + 1 = schema version, and records the applied version its own way (SQLite
 * `user_version`, PostgreSQL a `schema_version` row); this decides what to apply, in order.
 * Never edit a shipped migration: add a new one.
 */
import { SigilError } from '../errors.js';

export interface MigrationStep<M> {
  /** The schema version the database has once `migration` is applied. */
  version: number;
  migration: M;
}

/**
 * The migrations to apply to a database at schema version `current`, in order. Refuses a version
 * that is not a non-negative integer (`store.corrupt`) or one newer than this build knows
 * (`store.schema_too_new`: an older Sigil must not write a schema it does not understand).
 */
export function pendingMigrations<M>(current: number, migrations: readonly M[]): MigrationStep<M>[] {
  if (!Number.isInteger(current) || current < 0) {
    throw new SigilError('store.corrupt', `datastore schema version ${String(current)} is not a non-negative integer`, { status: 500 });
  }
  if (current > migrations.length) {
    throw new SigilError('store.schema_too_new', `datastore schema version ${current} is newer than this Sigil (knows ${migrations.length}); upgrade Sigil`, { status: 500 });
  }
  return migrations.slice(current).map((migration, i) => ({ version: current + i + 1, migration }));
}
