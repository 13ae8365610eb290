// Storage-level operations on existing tensors: freeing, reading back, copying,
// views, and the gradient arithmetic of the autograd engine. New tensors here
// are made from an existing one (_make, _share), so Tensor is imported as a type
// only: the engine (autograd.ts) imports this file and must load without
// loading tensor.ts (see autograd.ts).
import type { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { sameShape } from '../shape';
import { BINARY_OP } from './enums';

// Uint16Array: the raw bit patterns of a bfloat16 or float16 tensor (safetensors data).
export type HostArray = Float32Array | Float64Array | Int32Array | Uint16Array;

/** Frees a tensor's storage (every view of it). */
export function disposeStorage(t: Tensor): void {
  native.dispose(t._h);
}

/** Frees a buffer an op kept for its backward: a tensor, or a bare native handle. */
export function free(buffer: Tensor | NativeTensor): void {
  if (typeof (buffer as Tensor).dispose === 'function') (buffer as Tensor).dispose();
  else native.dispose(buffer as NativeTensor);
}

/** A flat, row-major copy of the data (the halves as float32 numbers). */
export function toArray(t: Tensor): Float32Array | Float64Array | Int32Array {
  return native.toArray(t._h);
}

/** Copies src into dst in place (same numel; any dtype or device). */
export function copy_(dst: Tensor, src: Tensor): void {
  native.copy_(dst._h, src._h);
}

/** A view of t with another shape, sharing its storage and version counter; t itself when equal. */
export function viewOf(t: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(t.shape, shape)) return t;
  return t._share(native.view(t._h, shape as number[]), shape);
}

/** A gradient summed down to `shape` (undoing broadcasting); g itself when equal. */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  return g._make(native.sumTo(g._h, shape.slice()), shape);
}

/** a + b for two gradients of one shape. */
export function addGrads(a: Tensor, b: Tensor): Tensor {
  return a._make(native.binary(BINARY_OP.add, a._h, b._h), a.shape);
}

/** A copy of t with its own storage. */
export function copyOf(t: Tensor): Tensor {
  return t._make(native.affine(t._h, 1, 0), t.shape);
}

/** y += x in place (same numel). */
export function accumulate_(y: Tensor, x: Tensor): void {
  native.axpy_(y._h, x._h, 1);
}

/** Tensors for the gradients a native backward returns in input order, each shaped like its input. */
export function gradsLike(grads: (NativeTensor | null)[], inputs: (Tensor | null)[]): (Tensor | null)[] {
  return inputs.map((t, i) => {
    const d = grads[i];
    return t && d ? t._make(d, t.shape) : null;
  });
}

/** The raw 16-bit patterns of a bfloat16 or float16 tensor. */
export function toHalfBits(t: Tensor): Uint16Array {
  return native.toHalfBits(t._h);
}
