// New tensors: from host data, filled, random, and the copy of a tensor on
// another device or in another dtype; writing host data into a tensor.
import { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { DType, isHalf } from '../dtype';
import type { ParsedDevice } from '../device';
import { defineFunction } from '../autograd';
import { DEVICE_TYPE, RANDOM_KIND, RandomKind, dtypeCode } from './enums';
import { HostArray, toArray } from './memory';

export function fromArray(data: HostArray, shape: number[], dtype: DType, device: ParsedDevice): Tensor {
  return new Tensor(nativeFromArray(data, shape, dtype, device), shape, dtype, device);
}

/** A half tensor from float numbers is made in float32 and rounded natively (once, to nearest even);
 * from a Uint16Array the bits are taken as they are. */
function nativeFromArray(data: HostArray, shape: number[], dtype: DType, device: ParsedDevice): NativeTensor {
  if (isHalf(dtype) && !(data instanceof Uint16Array)) {
    const f32 = native.fromArray(data instanceof Float32Array ? data : Float32Array.from(data), shape, dtypeCode('float32'), DEVICE_TYPE.cpu, 0);
    try {
      return native.to(f32, DEVICE_TYPE[device.type], device.index, dtypeCode(dtype));
    } finally {
      native.dispose(f32);
    }
  }
  return native.fromArray(data, shape, dtypeCode(dtype), DEVICE_TYPE[device.type], device.index);
}

export function full(shape: number[], dtype: DType, device: ParsedDevice, value: number): Tensor {
  const h = native.full(shape, dtypeCode(dtype), DEVICE_TYPE[device.type], device.index, value);
  return new Tensor(h, shape, dtype, device);
}

/** Normal (a = mean, b = std) or uniform ([a, b)) samples for the generator key (seed, offset). */
export function random(shape: number[], dtype: DType, device: ParsedDevice, kind: RandomKind,
  key: { seed: bigint; offset: bigint }, a: number, b: number): Tensor {
  const h = native.random(shape, dtypeCode(dtype), DEVICE_TYPE[device.type], device.index, RANDOM_KIND[kind], key.seed, key.offset, a, b);
  return new Tensor(h, shape, dtype, device);
}

/** A tensor of ones shaped like t (the gradient backward() starts from). */
export function onesLike(t: Tensor): Tensor {
  return full(t.shape.slice(), t.dtype, t._device, 1);
}

/** Writes value into every element of t. */
export function fill_(t: Tensor, value: number): void {
  const tmp = native.full(t.shape as number[], dtypeCode(t.dtype), DEVICE_TYPE[t._device.type], t._device.index, value);
  native.copy_(t._h, tmp);
  native.dispose(tmp);
}

/** Writes host data (t's numel, t's dtype) into t. */
export function copyFromArray_(t: Tensor, data: HostArray): void {
  const tmp = nativeFromArray(data, t.shape as number[], t.dtype, { type: 'cpu', index: 0, name: 'cpu' });
  native.copy_(t._h, tmp);
  native.dispose(tmp);
}

function convert(x: Tensor, device: ParsedDevice, dtype: DType): Tensor {
  const h = native.to(x._h, DEVICE_TYPE[device.type], device.index, dtypeCode(dtype));
  return new Tensor(h, x.shape, dtype, device);
}

const ToFloat = defineFunction<[Tensor, ParsedDevice, DType], { from: ParsedDevice; fromDtype: DType }>({
  name: 'ToBackward',
  forward(ctx, x, device, dtype) {
    ctx.from = x._device;
    ctx.fromDtype = x.dtype;
    return convert(x, device, dtype);
  },
  backward(ctx, g): (Tensor | null)[] {
    return [ToFloat(g, ctx.from, ctx.fromDtype), null, null];
  },
});

/**
 * x on another device or in another dtype (always a copy). Differentiable to a float dtype;
 * int32 results get no graph, and ids moved to a GPU keep a host copy when reading one costs no wait.
 */
export function to(x: Tensor, device: ParsedDevice, dtype: DType): Tensor {
  if (dtype !== 'int32') return ToFloat(x, device, dtype);
  const out = convert(x, device, dtype);
  if (x.dtype === 'int32' && device.type !== 'cpu') {
    const c = x._store.hostInts;
    if (c && c.version === x._store.version) out._keepHostInts(c.values, false);
    else if (x._device.type === 'cpu') out._keepHostInts(toArray(x) as Int32Array, false);
  }
  return out;
}
