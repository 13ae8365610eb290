// The codes of the native core's enums (dtypes, device types, op codes, random
// kinds), read by name from the addon's own tables, so none is mirrored here.
import { native, NativeEnums } from '../native';
import { DTYPES, DType } from '../dtype';

function mismatch(what: string, theirs: readonly string[], ours: readonly string[]): Error {
  const err = new Error(
    `lora-cuda: the native addon's ${what} (${theirs.join(', ')}) do not match this library's (${ours.join(', ')}); ` +
      'the addon was built from other sources: rebuild it with "npm run build:native"',
  );
  (err as NodeJS.ErrnoException).code = 'ERR_LORA_ADDON_MISMATCH';
  return err;
}

/** The codes of `names` in one of the addon's enum tables; every name must be there. */
function codes<K extends string>(group: keyof NativeEnums, names: readonly K[]): Readonly<Record<K, number>> {
  const table = native.enums?.[group];
  if (!table || names.some((n) => typeof table[n] !== 'number')) {
    throw mismatch(`${group} names`, table ? Object.keys(table) : [], names);
  }
  const out = {} as Record<K, number>;
  for (const n of names) out[n] = table[n];
  return Object.freeze(out);
}

const dtypes = codes('dtype', DTYPES);
// Exactly our dtypes, no more: the addon must not hand back a tensor of a dtype DType lacks.
if (Object.keys(native.enums.dtype).length !== DTYPES.length) throw mismatch('dtype names', Object.keys(native.enums.dtype), DTYPES);

export function dtypeCode(d: DType): number {
  return dtypes[d];
}

// The names this library uses, each type derived from its list: one place per name.
const DEVICE_TYPES = ['cpu', 'cuda'] as const;
export type DeviceType = (typeof DEVICE_TYPES)[number];
export const DEVICE_TYPE = codes('deviceType', DEVICE_TYPES);

const BINARY_OPS = ['add', 'sub', 'mul', 'div'] as const;
export type BinaryOp = (typeof BINARY_OPS)[number];
export const BINARY_OP = codes('binaryOp', BINARY_OPS);

const UNARY_OPS = ['relu', 'gelu', 'geluTanh', 'silu', 'exp', 'log', 'neg', 'sqrt', 'abs', 'sigmoid', 'tanh'] as const;
export type UnaryOp = (typeof UNARY_OPS)[number];
export const UNARY_OP = codes('unaryOp', UNARY_OPS);

const RANDOM_KINDS = ['normal', 'uniform'] as const;
export type RandomKind = (typeof RANDOM_KINDS)[number];
export const RANDOM_KIND = codes('randomKind', RANDOM_KINDS);

const COMPARE_OPS = ['eq', 'ne', 'lt', 'le', 'gt', 'ge'] as const;
export type CompareOp = (typeof COMPARE_OPS)[number];
export const COMPARE_OP = codes('compareOp', COMPARE_OPS);
