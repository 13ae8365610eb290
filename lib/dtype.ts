// The element types, by name. DType is a literal union for typing; lib/ops/enums.ts
// checks once at load that the native addon knows exactly these names.
// bfloat16 and float16 are storage types: ops on them compute in float32 and round once
// (to nearest even) on store, as PyTorch does; host data reads back as float32 numbers.

export type DType = 'float32' | 'float64' | 'int32' | 'bfloat16' | 'float16';
export type FloatDType = Exclude<DType, 'int32'>;
export type HalfDType = 'bfloat16' | 'float16';
export const DTYPES: readonly DType[] = Object.freeze(['float32', 'float64', 'int32', 'bfloat16', 'float16'] as DType[]);
export const FLOAT_DTYPES: readonly FloatDType[] = Object.freeze(['float32', 'float64', 'bfloat16', 'float16'] as FloatDType[]);

export function isHalf(d: DType): d is HalfDType {
  return d === 'bfloat16' || d === 'float16';
}
export function isFloating(d: DType): d is FloatDType {
  return d !== 'int32';
}
/** Bytes per element. */
export function dtypeBytes(d: DType): number {
  return d === 'float64' ? 8 : isHalf(d) ? 2 : 4;
}
