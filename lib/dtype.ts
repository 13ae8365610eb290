// The element types, by name. DType is a literal union for typing; lib/ops/enums.ts
// checks once at load that the native addon knows exactly these names.

export type DType = 'float32' | 'float64' | 'int32';
export const DTYPES: readonly DType[] = Object.freeze(['float32', 'float64', 'int32'] as DType[]);
