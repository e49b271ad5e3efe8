/**
 * TDX TCB Info (v3, id "TDX") and QE Identity (v2, id "TD_QE") documents, and the matching of a
 * quote against them, pure.
 *
 * Matching (Intel PCS "TDX TCB Info" and the DCAP Quote Verification Library's rules):
 *  - the TCB Info's FMSPC and PCE-ID equal the PCK certificate's;
 *  - the TDX module: TEE_TCB_SVN[1] (module major version) 0 → `tdxModule` (MRSIGNERSEAM and
 *    SEAMATTRIBUTES under the mask); otherwise the `tdxModuleIdentities` entry `TDX_<major, 2 hex>`,
 *    whose first level with ISVSVN ≤ TEE_TCB_SVN[0] gives the module's status;
 *  - the platform level is the first `tcbLevels` entry (they are listed highest first) whose 16 SGX
 *    components and PCESVN are ≤ the PCK certificate's and whose 16 TDX components are ≤ the
 *    report's TEE_TCB_SVN (from byte 2 on when the module major version is not 0); none → refused
 *    (`tdx.tcb_level_unmatched`, Intel's "TCB level not supported");
 *  - the QE: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their masks, then the first QE
 *    level with ISVSVN ≤ the QE report's.
 * Statuses converge as in Intel's QVL: an out-of-date QE or module makes an up-to-date platform
 * `OutOfDate` (`OutOfDateConfigurationNeeded` when it needed configuration), a revoked one makes
 * it `Revoked`; advisory IDs are the union.
 */
import { SigilError } from '../errors.js';
import type { QeReport, TdReportBody } from './quote.js';
import type { SgxPckExtensions } from './pki.js';

export const TCB_STATUSES = [
  'UpToDate',
  'SWHardeningNeeded',
  'ConfigurationNeeded',
  'ConfigurationAndSWHardeningNeeded',
  'OutOfDate',
  'OutOfDateConfigurationNeeded',
  'Revoked',
] as const;
export type TcbStatus = (typeof TCB_STATUSES)[number];

export interface TdxTcbLevel {
  sgxComponents: number[];
  pceSvn: number;
  tdxComponents: number[];
  tcbDate: string;
  tcbStatus: TcbStatus;
  advisoryIds: string[];
}

export interface TdxModuleIdentity {
  id: string;
  mrSigner: Buffer;
  attributes: Buffer;
  attributesMask: Buffer;
  levels: { isvSvn: number; tcbDate: string; tcbStatus: TcbStatus; advisoryIds: string[] }[];
}

export interface TdxTcbInfo {
  issueDate: Date;
  nextUpdate: Date;
  fmspc: string;
  pceId: string;
  tcbEvaluationDataNumber: number;
  tdxModule: { mrSigner: Buffer; attributes: Buffer; attributesMask: Buffer } | undefined;
  tdxModuleIdentities: TdxModuleIdentity[];
  levels: TdxTcbLevel[];
}

export interface QeIdentity {
  issueDate: Date;
  nextUpdate: Date;
  tcbEvaluationDataNumber: number;
  miscSelect: number;
  miscSelectMask: number;
  attributes: Buffer;
  attributesMask: Buffer;
  mrSigner: Buffer;
  isvProdId: number;
  levels: { isvSvn: number; tcbDate: string; tcbStatus: TcbStatus; advisoryIds: string[] }[];
}

type Obj = Record<string, unknown>;

function bad(what: string, msg: string): never {
  throw new SigilError('tdx.collateral_malformed', `${what}: ${msg}`);
}

function obj(v: unknown, what: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(what, 'must be an object');
  return v as Obj;
}
function int(v: unknown, what: string, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) bad(what, `must be an integer 0..${max}`);
  return v;
}
function hexBytes(v: unknown, what: string, len: number): Buffer {
  if (typeof v !== 'string' || v.length !== len * 2 || !/^[0-9a-fA-F]*$/.test(v)) bad(what, `must be ${len * 2} hex digits`);
  return Buffer.from(v, 'hex');
}
const RFC3339_UTC = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$/;

/**
 * An RFC 3339 UTC time. `new Date(text)` rolls impossible dates over (2023-02-30 → 2023-03-02,
 * 24:00:00 → the next day), so every field must read back unchanged.
 */
function date(v: unknown, what: string): Date {
  const m = typeof v === 'string' ? RFC3339_UTC.exec(v) : null;
  if (!m) bad(what, 'must be an RFC 3339 UTC time');
  const d = new Date(v as string);
  const [y, mo, day, h, mi, sec] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (
    Number.isNaN(d.getTime()) ||
    d.getUTCFullYear() !== y ||
    d.getUTCMonth() + 1 !== mo ||
    d.getUTCDate() !== day ||
    d.getUTCHours() !== h ||
    d.getUTCMinutes() !== mi ||
    d.getUTCSeconds() !== sec
  ) {
    bad(what, 'is not a valid calendar date and time');
  }
  return d;
}
function status(v: unknown, what: string): TcbStatus {
  if (typeof v !== 'string' || !(TCB_STATUSES as readonly string[]).includes(v)) bad(what, `unknown TCB status ${JSON.stringify(v)}`);
  return v as TcbStatus;
}
function advisories(v: unknown, what: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && /^INTEL-SA-\d{5}$/.test(x))) bad(what, 'must be a list of INTEL-SA-NNNNN IDs');
  return v as string[];
}
function components(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.length !== 16) bad(what, 'must list 16 components');
  return v.map((c, i) => int(obj(c, `${what}[${i}]`).svn, `${what}[${i}].svn`, 255));
}
function isvLevels(v: unknown, what: string): QeIdentity['levels'] {
  if (!Array.isArray(v) || v.length === 0) bad(what, 'must be a non-empty list');
  return v.map((l, i) => {
    const o = obj(l, `${what}[${i}]`);
    return {
      isvSvn: int(obj(o.tcb, `${what}[${i}].tcb`).isvsvn, `${what}[${i}].tcb.isvsvn`, 65535),
      tcbDate: date(o.tcbDate, `${what}[${i}].tcbDate`).toISOString(),
      tcbStatus: status(o.tcbStatus, `${what}[${i}].tcbStatus`),
      advisoryIds: advisories(o.advisoryIDs, `${what}[${i}].advisoryIDs`),
    };
  });
}

/** Check the shape of a TDX TCB Info (the parsed value of the signed `tcbInfo` member). */
export function parseTdxTcbInfo(v: unknown): TdxTcbInfo {
  const W = 'TCB Info';
  const o = obj(v, W);
  if (o.id !== 'TDX') bad(W, `id must be "TDX", got ${JSON.stringify(o.id)}`);
  if (o.version !== 3) bad(W, `version must be 3, got ${JSON.stringify(o.version)}`);
  if (o.tcbType !== 0) bad(W, `tcbType must be 0, got ${JSON.stringify(o.tcbType)}`);
  const fmspc = hexBytes(o.fmspc, `${W} fmspc`, 6).toString('hex');
  const pceId = hexBytes(o.pceId, `${W} pceId`, 2).toString('hex');
  let tdxModule: TdxTcbInfo['tdxModule'];
  if (o.tdxModule !== undefined) {
    const m = obj(o.tdxModule, `${W} tdxModule`);
    tdxModule = {
      mrSigner: hexBytes(m.mrsigner, `${W} tdxModule.mrsigner`, 48),
      attributes: hexBytes(m.attributes, `${W} tdxModule.attributes`, 8),
      attributesMask: hexBytes(m.attributesMask, `${W} tdxModule.attributesMask`, 8),
    };
  }
  const ids = o.tdxModuleIdentities === undefined ? [] : o.tdxModuleIdentities;
  if (!Array.isArray(ids)) bad(W, 'tdxModuleIdentities must be a list');
  const tdxModuleIdentities = ids.map((x, i): TdxModuleIdentity => {
    const m = obj(x, `${W} tdxModuleIdentities[${i}]`);
    if (typeof m.id !== 'string' || !/^TDX_[0-9A-F]{2}$/.test(m.id)) bad(W, `tdxModuleIdentities[${i}].id must be TDX_<2 hex digits>`);
    return {
      id: m.id,
      mrSigner: hexBytes(m.mrsigner, `${W} tdxModuleIdentities[${i}].mrsigner`, 48),
      attributes: hexBytes(m.attributes, `${W} tdxModuleIdentities[${i}].attributes`, 8),
      attributesMask: hexBytes(m.attributesMask, `${W} tdxModuleIdentities[${i}].attributesMask`, 8),
      levels: isvLevels(m.tcbLevels, `${W} tdxModuleIdentities[${i}].tcbLevels`),
    };
  });
  if (!Array.isArray(o.tcbLevels) || o.tcbLevels.length === 0) bad(W, 'tcbLevels must be a non-empty list');
  const levels = o.tcbLevels.map((l, i): TdxTcbLevel => {
    const lv = obj(l, `${W} tcbLevels[${i}]`);
    const t = obj(lv.tcb, `${W} tcbLevels[${i}].tcb`);
    return {
      sgxComponents: components(t.sgxtcbcomponents, `${W} tcbLevels[${i}].tcb.sgxtcbcomponents`),
      pceSvn: int(t.pcesvn, `${W} tcbLevels[${i}].tcb.pcesvn`, 65535),
      tdxComponents: components(t.tdxtcbcomponents, `${W} tcbLevels[${i}].tcb.tdxtcbcomponents`),
      tcbDate: date(lv.tcbDate, `${W} tcbLevels[${i}].tcbDate`).toISOString(),
      tcbStatus: status(lv.tcbStatus, `${W} tcbLevels[${i}].tcbStatus`),
      advisoryIds: advisories(lv.advisoryIDs, `${W} tcbLevels[${i}].advisoryIDs`),
    };
  });
  return {
    issueDate: date(o.issueDate, `${W} issueDate`),
    nextUpdate: date(o.nextUpdate, `${W} nextUpdate`),
    fmspc,
    pceId,
    tcbEvaluationDataNumber: int(o.tcbEvaluationDataNumber, `${W} tcbEvaluationDataNumber`, 0xffffffff),
    tdxModule,
    tdxModuleIdentities,
    levels,
  };
}

/** Check the shape of a TD QE Identity (the parsed value of the signed `enclaveIdentity` member). */
export function parseQeIdentity(v: unknown): QeIdentity {
  const W = 'QE Identity';
  const o = obj(v, W);
  if (o.id !== 'TD_QE') bad(W, `id must be "TD_QE", got ${JSON.stringify(o.id)}`);
  if (o.version !== 2) bad(W, `version must be 2, got ${JSON.stringify(o.version)}`);
  return {
    issueDate: date(o.issueDate, `${W} issueDate`),
    nextUpdate: date(o.nextUpdate, `${W} nextUpdate`),
    tcbEvaluationDataNumber: int(o.tcbEvaluationDataNumber, `${W} tcbEvaluationDataNumber`, 0xffffffff),
    miscSelect: hexBytes(o.miscselect, `${W} miscselect`, 4).readUInt32BE(0),
    miscSelectMask: hexBytes(o.miscselectMask, `${W} miscselectMask`, 4).readUInt32BE(0),
    attributes: hexBytes(o.attributes, `${W} attributes`, 16),
    attributesMask: hexBytes(o.attributesMask, `${W} attributesMask`, 16),
    mrSigner: hexBytes(o.mrsigner, `${W} mrsigner`, 32),
    isvProdId: int(o.isvprodid, `${W} isvprodid`, 65535),
    levels: isvLevels(o.tcbLevels, `${W} tcbLevels`),
  };
}

function refuse(code: string, message: string): never {
  throw new SigilError(code, message, { status: 403 });
}

function maskedEqual(value: Buffer, expected: Buffer, mask: Buffer): boolean {
  if (value.length !== expected.length || mask.length !== expected.length) return false;
  for (let i = 0; i < value.length; i++) if ((value[i]! & mask[i]!) !== (expected[i]! & mask[i]!)) return false;
  return true;
}

/** Status after an out-of-date or revoked QE / TDX module is taken into account. */
function converge(platform: TcbStatus, other: TcbStatus): TcbStatus {
  if (other === 'Revoked' || platform === 'Revoked') return 'Revoked';
  if (other === 'OutOfDate' || other === 'OutOfDateConfigurationNeeded') {
    if (platform === 'UpToDate' || platform === 'SWHardeningNeeded') return 'OutOfDate';
    if (platform === 'ConfigurationNeeded' || platform === 'ConfigurationAndSWHardeningNeeded') return 'OutOfDateConfigurationNeeded';
  }
  return platform;
}

export interface TcbMatch {
  status: TcbStatus;
  advisoryIds: string[];
  platformLevel: TdxTcbLevel;
  platformStatus: TcbStatus;
  qeStatus: TcbStatus;
  moduleStatus?: TcbStatus;
  tcbDate: string;
}

const svnList = (a: readonly number[]): string => a.map((x) => x.toString(16).padStart(2, '0')).join('');

/**
 * What every Intel TD QE Identity (id TD_QE) states about the enclave, for quotes verified without
 * collateral: the PCE certifies any enclave holding PROVISIONKEY, so a PCK-signed QE report proves
 * Intel's TD QE only with these checks (MRSIGNER, ISVPRODID 2, MISCSELECT and ATTRIBUTES under the
 * masks: no DEBUG). No ISVSVN level is implied: that needs the signed QE Identity.
 */
export const INTEL_TD_QE_BASELINE: Pick<QeIdentity, 'mrSigner' | 'isvProdId' | 'miscSelect' | 'miscSelectMask' | 'attributes' | 'attributesMask'> = {
  mrSigner: Buffer.from('dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5', 'hex'),
  isvProdId: 2,
  miscSelect: 0,
  miscSelectMask: 0xffffffff,
  attributes: Buffer.from('11000000000000000000000000000000', 'hex'),
  attributesMask: Buffer.from('fbffffffffffffff0000000000000000', 'hex'),
};

/** QE MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES (under masks) equal `id`'s; `what` names `id` in refusals. */
export function matchQeEnclave(qe: QeReport, id: typeof INTEL_TD_QE_BASELINE, what = 'the QE Identity'): void {
  if (!qe.mrSigner.equals(id.mrSigner)) refuse('tdx.qe_identity_mismatch', `QE MRSIGNER ${qe.mrSigner.toString('hex')} is not that of ${what}`);
  if (qe.isvProdId !== id.isvProdId) refuse('tdx.qe_identity_mismatch', `QE ISVPRODID ${qe.isvProdId} is not that of ${what} (${id.isvProdId})`);
  if (((qe.miscSelect & id.miscSelectMask) >>> 0) !== ((id.miscSelect & id.miscSelectMask) >>> 0)) refuse('tdx.qe_identity_mismatch', `QE MISCSELECT does not match ${what} under its mask`);
  if (!maskedEqual(qe.attributes, id.attributes, id.attributesMask)) refuse('tdx.qe_identity_mismatch', `QE ATTRIBUTES do not match ${what} under its mask`);
}

/** QE identity match: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under masks, ISVSVN level. */
export function matchQeIdentity(qe: QeReport, id: QeIdentity): QeIdentity['levels'][number] {
  matchQeEnclave(qe, id);
  const level = id.levels.find((l) => l.isvSvn <= qe.isvSvn);
  if (!level) refuse('tdx.qe_tcb_level_unmatched', `QE ISVSVN ${qe.isvSvn} is below every QE Identity TCB level`);
  return level;
}

/** Match the platform, TDX module and QE against TCB Info and QE Identity (both already verified). */
export function matchTcb(body: TdReportBody, pck: SgxPckExtensions, qe: QeReport, info: TdxTcbInfo, id: QeIdentity): TcbMatch {
  const fmspc = pck.fmspc.toString('hex');
  if (fmspc !== info.fmspc) refuse('tdx.fmspc_mismatch', `PCK certificate FMSPC ${fmspc} is not the TCB Info's ${info.fmspc}`);
  const pceId = pck.pceId.toString('hex');
  if (pceId !== info.pceId) refuse('tdx.pceid_mismatch', `PCK certificate PCE-ID ${pceId} is not the TCB Info's ${info.pceId}`);
  const qeLevel = matchQeIdentity(qe, id);

  const svn = body.teeTcbSvn;
  const major = svn[1]!;
  let moduleLevel: TdxModuleIdentity['levels'][number] | undefined;
  if (major === 0) {
    if (info.tdxModule) {
      if (!body.mrSignerSeam.equals(info.tdxModule.mrSigner)) refuse('tdx.module_mismatch', 'MRSIGNERSEAM is not the TCB Info tdxModule.mrsigner');
      if (!maskedEqual(body.seamAttributes, info.tdxModule.attributes, info.tdxModule.attributesMask)) refuse('tdx.module_mismatch', 'SEAMATTRIBUTES do not match the TCB Info tdxModule under its mask');
    }
  } else {
    const name = `TDX_${major.toString(16).toUpperCase().padStart(2, '0')}`;
    const mod = info.tdxModuleIdentities.find((m) => m.id === name);
    if (!mod) refuse('tdx.module_mismatch', `TCB Info has no tdxModuleIdentities entry ${name} for the report's TDX module`);
    if (!body.mrSignerSeam.equals(mod.mrSigner)) refuse('tdx.module_mismatch', `MRSIGNERSEAM is not ${name}'s mrsigner`);
    if (!maskedEqual(body.seamAttributes, mod.attributes, mod.attributesMask)) refuse('tdx.module_mismatch', `SEAMATTRIBUTES do not match ${name} under its mask`);
    moduleLevel = mod.levels.find((l) => l.isvSvn <= svn[0]!);
    if (!moduleLevel) refuse('tdx.tcb_level_unmatched', `TDX module ${name} ISVSVN ${svn[0]} is below every level of its identity`);
  }

  const from = major === 0 ? 0 : 2;
  const level = info.levels.find(
    (l) => l.sgxComponents.every((c, i) => pck.compSvn[i]! >= c) && pck.pceSvn >= l.pceSvn && l.tdxComponents.every((c, i) => i < from || svn[i]! >= c),
  );
  if (!level) {
    const first = info.levels[0]!;
    refuse(
      'tdx.tcb_level_unmatched',
      `no TCB level of TCB Info (FMSPC ${info.fmspc}, evaluation ${info.tcbEvaluationDataNumber}) matches: SGX components ${svnList(pck.compSvn)} PCESVN ${pck.pceSvn}, ` +
        `TEE_TCB_SVN ${svn.toString('hex')}; the highest level needs SGX ${svnList(first.sgxComponents)} PCESVN ${first.pceSvn}, TDX ${svnList(first.tdxComponents)} (TCB level not supported)`,
    );
  }
  let status = converge(level.tcbStatus, qeLevel.tcbStatus);
  if (moduleLevel) status = converge(status, moduleLevel.tcbStatus);
  const advisoryIds = [...new Set([...level.advisoryIds, ...qeLevel.advisoryIds, ...(moduleLevel?.advisoryIds ?? [])])].sort();
  return {
    status,
    advisoryIds,
    platformLevel: level,
    platformStatus: level.tcbStatus,
    qeStatus: qeLevel.tcbStatus,
    ...(moduleLevel ? { moduleStatus: moduleLevel.tcbStatus } : {}),
    tcbDate: level.tcbDate,
  };
}
