// Tensor: a handle to native storage plus shape, dtype and device, with
// reverse-mode autograd (autograd.ts). Methods check their arguments, then call
// the ops (lib/ops), which record a graph node when an input needs a gradient.
import type { NativeTensor } from './native';
import { DType, DTYPES } from './dtype';
import { Node, runBackward } from './autograd';
import { DeviceSpec, ParsedDevice, isDeviceName, parseDevice } from './device';
import { track } from './scope';
import {
  assertTensor, broadcastShapes, checkInt32Value, checkNumberOrNaN, inferShape, matmulPlan, normalizeDim, normalizeDims,
  requireFloat, requireSame,
} from './checks';
import { toTypedArray } from './creation';
import { checkInt, checkOneOf, rangeError, typeError } from './errors';
import { sameShape } from './shape';
import * as memory from './ops/memory';
import * as creation from './ops/creation';
import * as elementwise from './ops/elementwise';
import * as shapeOps from './ops/shape';
import { matmul } from './ops/linear';
import * as views from './views';
import type { BinaryOp, UnaryOp } from './ops/enums';

export type { DType } from './dtype';

/** State shared by a tensor and its views (reshape, detach): one storage. */
export interface Store {
  version: number; // bumped by in-place writes, so stale saved tensors are caught
  disposed: boolean;
  escaped?: boolean; // held by something long-lived (a .grad, optimiser state): tidy() never frees it
  // The values of an int32 GPU tensor as they were uploaded, valid while `version` is unchanged:
  // the ops that must check ids on the host (embedding, cross-entropy) read them without waiting
  // for the device.
  hostInts?: { version: number; values: Int32Array };
}

// Host copies of int32 GPU tensors are kept up to this many elements (ids, targets).
const HOST_INTS_MAX = 1 << 22;

export type NestedList = (number | NestedList)[];

export class Tensor {
  /** @internal The native handle; only lib/ops reads it. */ _h: NativeTensor;
  /** @internal */ _store: Store;
  /** @internal */ _gradFn: Node | null = null;
  /** @internal */ _device: ParsedDevice;
  private _shape: readonly number[];
  private _dtype: DType;
  private _requiresGrad = false;
  private _grad: Tensor | null = null;

  /** @internal Tensors are made by tensor(), zeros(), randn() and the ops. */
  constructor(h: NativeTensor, shape: readonly number[], dtype: DType, device: ParsedDevice, store?: Store) {
    this._h = h;
    this._shape = Object.freeze(shape.slice());
    this._dtype = dtype;
    this._device = device;
    if (store) {
      this._store = store;
    } else {
      this._store = { version: 0, disposed: false };
      track(this);
    }
  }

  /** Dimensions, outermost first. */
  get shape(): readonly number[] {
    return this._shape;
  }
  get dtype(): DType {
    return this._dtype;
  }
  /** 'cpu' or 'cuda:N'. */
  get device(): string {
    return this._device.name;
  }
  get numel(): number {
    let n = 1;
    for (const d of this._shape) n *= d;
    return n;
  }
  get ndim(): number {
    return this._shape.length;
  }
  /** True when this tensor was not produced by a recorded op. */
  get isLeaf(): boolean {
    return this._gradFn === null;
  }
  /** Name of the op that produced this tensor, or null for a leaf. */
  get gradFn(): string | null {
    return this._gradFn ? this._gradFn.name : null;
  }
  get isDisposed(): boolean {
    return this._store.disposed;
  }

  get requiresGrad(): boolean {
    return this._requiresGrad;
  }
  set requiresGrad(flag: boolean) {
    this.requiresGrad_(flag);
  }
  /** Sets requiresGrad in place (leaves only, float dtypes only); returns this. */
  requiresGrad_(flag = true): this {
    if (typeof flag !== 'boolean') throw typeError('Tensor.requiresGrad', 'flag', 'a boolean', flag);
    this._checkRequiresGrad('Tensor.requiresGrad', flag);
    this._requiresGrad = flag;
    return this;
  }

  /**
   * @internal Throws unless requiresGrad can be set to flag (a leaf; a float dtype to require grad);
   * `name` says which tensor for a caller setting many (Module.requiresGrad_).
   */
  _checkRequiresGrad(where: string, flag: boolean, name?: string): void {
    if (this._gradFn) {
      throw new Error(`${where}: only leaf tensors can change requiresGrad${name ? ` (${name} is not one)` : ''}; use detach() for a non-leaf`);
    }
    if (flag && this._dtype === 'int32') {
      throw rangeError(where, name ? `the dtype of ${name}` : 'dtype', 'float32 or float64 for a tensor that requires grad', this._dtype);
    }
  }

  /** @internal Makes this the output of a recorded op (it then requires grad). */
  _setGradFn(node: Node): void {
    this._gradFn = node;
    this._requiresGrad = true;
  }

  /** Gradient accumulated by backward() (leaves with requiresGrad only). */
  get grad(): Tensor | null {
    return this._grad;
  }
  set grad(g: Tensor | null) {
    if (g !== null) {
      assertTensor('Tensor.grad', 'value', g);
      if (!sameShape(g._shape, this._shape) || g._dtype !== this._dtype || g._device.name !== this._device.name) {
        throw rangeError('Tensor.grad', 'value', `a ${this._dtype} tensor of shape [${this._shape.join(', ')}] on ${this.device}`, g);
      }
      g._store.escaped = true;
    }
    this._grad = g;
  }

  /** A short description, used in error messages. */
  describe(): string {
    const state = this._store.disposed ? ', disposed' : '';
    return `Tensor(shape [${this._shape.join(', ')}], ${this._dtype}, ${this.device}${state})`;
  }
  toString(): string {
    return this.describe();
  }

  /** @internal Throws (code ERR_TENSOR_DISPOSED) once disposed; `what` names the tensor for the caller's user. */
  _checkLive(where: string, what = 'tensor'): void {
    if (this._store.disposed) {
      const e = new Error(`${where}: ${what} has been disposed`);
      (e as NodeJS.ErrnoException).code = 'ERR_TENSOR_DISPOSED';
      throw e;
    }
  }

  /** @internal A new tensor with its own storage on this one's device, from a handle an op made. */
  _make(h: NativeTensor, shape: readonly number[], dtype: DType = this._dtype): Tensor {
    return new Tensor(h, shape, dtype, this._device);
  }

  /** @internal A new view of this one's storage (same version counter), from a handle an op made. */
  _share(h: NativeTensor, shape: readonly number[]): Tensor {
    return new Tensor(h, shape, this._dtype, this._device, this._store);
  }

  // ---------------------------------------------------------------- data out

  /** A flat, row-major copy of the data (Float32Array, Float64Array or Int32Array). */
  toArray(): Float32Array | Float64Array | Int32Array {
    this._checkLive('Tensor.toArray');
    return memory.toArray(this);
  }

  /**
   * @internal The values of an int32 tensor for host-side checks, from the host copy kept since the
   * last write when there is one (no wait for the device), else read back. Callers must not modify it.
   */
  _int32Values(where: string): Int32Array {
    this._checkLive(where);
    const c = this._store.hostInts;
    if (c && c.version === this._store.version) return c.values;
    return memory.toArray(this) as Int32Array;
  }

  /** @internal Keeps `values` (what this int32 GPU tensor now holds) as its host copy. */
  _keepHostInts(values: Int32Array, copy: boolean): void {
    if (this._dtype !== 'int32' || this._device.type === 'cpu' || values.length > HOST_INTS_MAX) return;
    this._store.hostInts = { version: this._store.version, values: copy ? values.slice() : values };
  }

  /** The data as nested arrays of numbers (a number for a 0-d tensor). */
  tolist(): number | NestedList {
    this._checkLive('Tensor.tolist');
    const flat = memory.toArray(this);
    const build = (dim: number, off: number): number | NestedList => {
      if (dim === this._shape.length) return flat[off];
      const stride = this._shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      const out: (number | NestedList)[] = [];
      for (let i = 0; i < this._shape[dim]; i++) out.push(build(dim + 1, off + i * stride));
      return out as NestedList;
    };
    return build(0, 0);
  }

  /** The value of a one-element tensor. */
  item(): number {
    this._checkLive('Tensor.item');
    if (this.numel !== 1) {
      throw rangeError('Tensor.item', 'the tensor', 'a tensor with exactly one element', this);
    }
    return memory.toArray(this)[0];
  }

  // ------------------------------------------------------------ memory, copy

  /**
   * Frees the native memory now (the garbage collector would do it later).
   * Views sharing the storage become unusable too; idempotent.
   */
  dispose(): void {
    if (this._store.disposed) return;
    memory.disposeStorage(this);
    this._store.disposed = true;
    if (this._grad) this._grad.dispose();
    this._grad = null;
    if (this._gradFn) this._gradFn.release();
    this._gradFn = null;
  }

  /** A tensor sharing this one's data, cut from the graph (requiresGrad false). */
  detach(): Tensor {
    this._checkLive('Tensor.detach');
    return shapeOps.detach(this);
  }

  /** A copy with its own storage (differentiable; an int32 tensor is copied without a graph). */
  clone(): Tensor {
    this._checkLive('Tensor.clone');
    return shapeOps.clone(this);
  }

  /**
   * Copies src into this tensor in place, outside autograd. src is a tensor with
   * the same number of elements (any dtype or device) or an array-like of numbers.
   */
  copy_(src: Tensor | ArrayLike<number>): this {
    const where = 'Tensor.copy_';
    this._checkLive(where);
    if (src instanceof Tensor) {
      if (src.numel !== this.numel) {
        throw rangeError(where, 'src', `a tensor with ${this.numel} elements (shape [${this._shape.join(', ')}])`, src);
      }
      src._checkLive(where);
      memory.copy_(this, src);
    } else {
      const arr = toTypedArray(where, 'src', src, this._dtype);
      if (arr.length !== this.numel) {
        throw rangeError(where, 'src.length', `${this.numel} (the tensor's numel)`, arr.length);
      }
      creation.copyFromArray_(this, arr);
      this._store.version++;
      this._keepHostInts(arr as Int32Array, arr === src);
      return this;
    }
    this._store.version++;
    return this;
  }

  /** Fills with zeros in place, outside autograd. */
  zero_(): this {
    return fill(this, 'Tensor.zero_', 0);
  }

  /** Fills with value in place, outside autograd. */
  fill_(value: number): this {
    return fill(this, 'Tensor.fill_', value);
  }

  /** @internal In-place bump after native code wrote into this tensor. */
  _bumpVersion(): void {
    this._store.version++;
  }

  /** @internal Moves this tensor's storage (Module.to keeps parameter identity). */
  _replaceWith(other: Tensor): void {
    other._store.escaped = true;
    this._h = other._h;
    this._device = other._device;
    this._dtype = other._dtype;
    this._store = other._store;
  }

  /**
   * This tensor on another device or with another dtype: to('cuda'), to('cpu'),
   * to('float64'). Returns this when nothing changes. Differentiable.
   */
  to(target: DeviceSpec | DType): Tensor {
    const where = 'Tensor.to';
    this._checkLive(where);
    if (typeof target === 'string' && (DTYPES as readonly string[]).includes(target)) {
      return moveTo(this, this._device, target as DType);
    }
    // undefined, as parseDevice takes it, is the CPU.
    if (target !== undefined && !isDeviceName(target)) {
      throw (typeof target === 'string' ? rangeError : typeError)(where, 'target', TO_TARGETS, target);
    }
    return moveTo(this, parseDevice(where, 'device', target), this._dtype);
  }
  cpu(): Tensor {
    const where = 'Tensor.cpu';
    this._checkLive(where);
    return moveTo(this, parseDevice(where, 'device', 'cpu'), this._dtype);
  }
  cuda(index = 0): Tensor {
    const where = 'Tensor.cuda';
    checkInt(where, 'index', index);
    this._checkLive(where);
    return moveTo(this, parseDevice(where, 'device', `cuda:${index}`), this._dtype);
  }

  // -------------------------------------------------------------- autograd

  /**
   * Computes gradients of this tensor with respect to every leaf that requires
   * grad, accumulating them into .grad. A non-scalar needs `grad` (dL/dthis).
   * The graph is released afterwards.
   */
  backward(grad?: Tensor): void {
    const where = 'Tensor.backward';
    this._checkLive(where);
    if (!this._requiresGrad) {
      throw new Error(`${where}: this tensor does not require grad and has no graph (did every input have requiresGrad false, or was it made inside noGrad?)`);
    }
    let g: Tensor;
    let userGrad = false;
    if (grad === undefined) {
      if (this.numel !== 1) {
        throw rangeError(where, 'grad', `given for a non-scalar output (shape [${this._shape.join(', ')}])`, undefined);
      }
      g = creation.onesLike(this);
    } else {
      assertTensor(where, 'grad', grad);
      if (!sameShape(grad._shape, this._shape) || grad._dtype !== this._dtype || grad.device !== this.device) {
        throw rangeError(where, 'grad', `a ${this._dtype} tensor of shape [${this._shape.join(', ')}] on ${this.device}`, grad);
      }
      grad._checkLive(where);
      g = grad;
      userGrad = true;
    }
    runBackward(this, g, userGrad);
  }

  // ------------------------------------------------------------ elementwise

  /** this + other, broadcasting. */
  add(other: Tensor | number): Tensor {
    return binaryOp('Tensor.add', this, other, 'add');
  }
  /** this - other, broadcasting. */
  sub(other: Tensor | number): Tensor {
    return binaryOp('Tensor.sub', this, other, 'sub');
  }
  /** this * other (elementwise), broadcasting. */
  mul(other: Tensor | number): Tensor {
    return binaryOp('Tensor.mul', this, other, 'mul');
  }
  /** this / other (elementwise), broadcasting. */
  div(other: Tensor | number): Tensor {
    return binaryOp('Tensor.div', this, other, 'div');
  }
  neg(): Tensor {
    return unaryOp('Tensor.neg', this, 'neg');
  }
  relu(): Tensor {
    return unaryOp('Tensor.relu', this, 'relu');
  }
  /** GELU; approximate 'none' uses erf (torch's default), 'tanh' the tanh formula. */
  gelu(approximate: 'none' | 'tanh' = 'none'): Tensor {
    checkOneOf('Tensor.gelu', 'approximate', approximate, ['none', 'tanh'] as const);
    return unaryOp('Tensor.gelu', this, approximate === 'tanh' ? 'geluTanh' : 'gelu');
  }
  silu(): Tensor {
    return unaryOp('Tensor.silu', this, 'silu');
  }
  exp(): Tensor {
    return unaryOp('Tensor.exp', this, 'exp');
  }
  log(): Tensor {
    return unaryOp('Tensor.log', this, 'log');
  }
  sqrt(): Tensor {
    return unaryOp('Tensor.sqrt', this, 'sqrt');
  }
  /** |x|; its gradient is sign(x), 0 at 0 (as torch). */
  abs(): Tensor {
    return unaryOp('Tensor.abs', this, 'abs');
  }

  /** Softmax along dim (default the last), computed stably (max-subtracted). */
  softmax(dim = -1): Tensor {
    const where = 'Tensor.softmax';
    requireFloat(where, this);
    if (this.ndim === 0) throw rangeError(where, 'the tensor', 'at least 1-D', this);
    const d = normalizeDim(where, 'dim', dim, this.ndim);
    if (d !== this.ndim - 1) return this.transpose(d, -1).softmax(-1).transpose(d, -1);
    return elementwise.softmax(this);
  }

  // -------------------------------------------------------------- reductions

  /** Sum over all elements, or over dim(s) (negative dims count from the end). */
  sum(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.sum';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
    return elementwise.sum(this, dims, keepdim);
  }

  /** Mean over all elements, or over dim(s). */
  mean(dim?: number | readonly number[], keepdim = false): Tensor {
    const where = 'Tensor.mean';
    requireFloat(where, this);
    const dims = normalizeDims(where, dim, this.ndim);
    if (typeof keepdim !== 'boolean') throw typeError(where, 'keepdim', 'a boolean', keepdim);
    const count = dims.reduce((n, i) => n * this._shape[i], 1);
    return elementwise.scalar('mul', elementwise.sum(this, dims, keepdim), 1 / count);
  }

  // ------------------------------------------------------------------ shape

  /** Same data, new shape (one dim may be -1). Shares storage with this tensor. */
  reshape(...shape: number[] | [readonly number[]]): Tensor {
    return reshape('Tensor.reshape', this, shape);
  }
  /** Alias of reshape (all tensors are contiguous). */
  view(...shape: number[] | [readonly number[]]): Tensor {
    return reshape('Tensor.view', this, shape);
  }

  /** Reorders dims (copies the data). */
  permute(...dims: number[] | [readonly number[]]): Tensor {
    const where = 'Tensor.permute';
    const perm = ((Array.isArray(dims[0]) ? dims[0] : dims) as readonly number[]).slice();
    if (perm.length !== this.ndim) throw rangeError(where, 'dims', `a permutation of ${this.ndim} dims`, perm);
    const norm = perm.map((d, i) => normalizeDim(where, `dims[${i}]`, d, this.ndim));
    if (new Set(norm).size !== norm.length) throw rangeError(where, 'dims', 'a permutation (no repeats)', perm);
    this._checkLive(where);
    return shapeOps.permute(this, norm);
  }

  /** Swaps two dims (copies the data). */
  transpose(dim0: number, dim1: number): Tensor {
    const where = 'Tensor.transpose';
    return swapDims(where, this, normalizeDim(where, 'dim0', dim0, this.ndim), normalizeDim(where, 'dim1', dim1, this.ndim));
  }
  /** Transpose of a 2-D tensor. */
  t(): Tensor {
    if (this.ndim !== 2) throw rangeError('Tensor.t', 'the tensor', 'a 2-D tensor', this);
    return swapDims('Tensor.t', this, 0, 1);
  }

  // ------------------------------------------------ slicing and joining (lib/views.ts)
  // Copies, not views: an in-place write to the result does not reach this tensor (see README).

  /** length elements from start along dim (start may be negative), as torch.narrow. */
  narrow(dim: number, start: number, length: number): Tensor {
    return views.narrow(this, dim, start, length);
  }
  /** Python's x[start:end:step] along dim: negative or null bounds, clamped; step > 0. */
  slice(dim: number, start?: number | null, end?: number | null, step?: number): Tensor {
    return views.slice(this, dim, start, end, step);
  }
  /** The slice at index along dim, without that dim (x[:, i] for dim 1). */
  select(dim: number, index: number): Tensor {
    return views.select(this, dim, index);
  }
  /** Entries along dim at the int32 indices of a 1-D index, in its order (torch.index_select). */
  indexSelect(dim: number, index: Tensor): Tensor {
    return views.indexSelect(this, dim, index);
  }
  /** torch.gather: along dim, each element from where an int32 index of the same rank says. */
  gather(dim: number, index: Tensor): Tensor {
    return views.gather(this, dim, index);
  }
  /** Pieces along dim: of splitSize each (the last may be smaller), or of the listed sizes. */
  split(splitSize: number | readonly number[], dim = 0): Tensor[] {
    return views.split(this, splitSize, dim);
  }
  /** At most `chunks` pieces of ceil(size / chunks) along dim, as torch.chunk. */
  chunk(chunks: number, dim = 0): Tensor[] {
    return views.chunk(this, chunks, dim);
  }
  /** A size-1 dim inserted at dim. Shares storage (as reshape). */
  unsqueeze(dim: number): Tensor {
    return views.unsqueeze(this, dim);
  }
  /** Size-1 dims removed: all, or those of dim. Shares storage (as reshape). */
  squeeze(dim?: number | readonly number[]): Tensor {
    return views.squeeze(this, dim);
  }
  /** Dims startDim..endDim merged into one. Shares storage (as reshape). */
  flatten(startDim = 0, endDim = -1): Tensor {
    return views.flatten(this, startDim, endDim);
  }
  /** Broadcast to sizes (-1 keeps a dim; new dims in front); the gradient sums back. */
  expand(...sizes: number[] | [readonly number[]]): Tensor {
    return views.expand(this, sizes);
  }
  /** This tensor: every tensor here is contiguous. */
  contiguous(): Tensor {
    this._checkLive('Tensor.contiguous');
    return this;
  }
  /** The lower triangle of the last two dims (elements with col - row <= diagonal), others 0. */
  tril(diagonal = 0): Tensor {
    return views.triangle('Tensor.tril', this, diagonal, false);
  }
  /** The upper triangle of the last two dims (elements with col - row >= diagonal), others 0. */
  triu(diagonal = 0): Tensor {
    return views.triangle('Tensor.triu', this, diagonal, true);
  }

  // ----------------------------------------------------------------- matmul

  /** Matrix product with torch.matmul's rules (1-D, 2-D and broadcast batches). */
  matmul(other: Tensor): Tensor {
    const where = 'Tensor.matmul';
    assertTensor(where, 'other', other);
    requireFloat(where, this, 'this');
    requireFloat(where, other, 'other');
    requireSame(where, this, 'this', other, 'other');
    return matmul(this, other, matmulPlan(where, this, other));
  }
}

// Shared bodies of methods that are also reached through another public name (view and reshape,
// t and transpose, to, cpu and cuda): each error names the method the user called.

/** fill_ and zero_: value into every element, in place. */
function fill<T extends Tensor>(t: T, where: string, value: number): T {
  checkNumberOrNaN(where, 'value', value);
  if (t.dtype === 'int32') checkInt32Value(where, 'value', value);
  t._checkLive(where);
  creation.fill_(t, value);
  t._bumpVersion();
  return t;
}

/** The same data with another shape, given as varargs or one array. */
function reshape(where: string, t: Tensor, shape: number[] | [readonly number[]]): Tensor {
  const want = (Array.isArray(shape[0]) ? shape[0] : shape) as readonly number[];
  const target = inferShape(where, want, t.numel, t.shape);
  t._checkLive(where);
  return shapeOps.reshape(t, target);
}

/** t with dims a and b (normalised) swapped; a 0-d tensor (dims 0 and -1 both name it) is copied as it is. */
function swapDims(where: string, t: Tensor, a: number, b: number): Tensor {
  t._checkLive(where);
  const perm = t.shape.map((_, i) => i);
  if (t.ndim > 0) {
    perm[a] = b;
    perm[b] = a;
  }
  return shapeOps.permute(t, perm);
}

/** What Tensor.to takes. */
const TO_TARGETS = `a device ('cpu', 'cuda' or 'cuda:N') or a dtype (${DTYPES.slice(0, -1).map((d) => `'${d}'`).join(', ')} or '${DTYPES[DTYPES.length - 1]}')`;

/** t (live) on `device` in `dtype`: t itself when nothing changes. */
function moveTo(t: Tensor, device: ParsedDevice, dtype: DType): Tensor {
  if (device.name === t._device.name && dtype === t.dtype) return t;
  return creation.to(t, device, dtype);
}

function binaryOp(where: string, a: Tensor, b: Tensor | number, op: BinaryOp): Tensor {
  requireFloat(where, a);
  if (typeof b === 'number') {
    checkNumberOrNaN(where, 'other', b);
    return elementwise.scalar(op, a, b);
  }
  assertTensor(where, 'other', b);
  requireFloat(where, b, 'other');
  requireSame(where, a, 'this', b, 'other');
  return elementwise.binary(op, a, b, broadcastShapes(where, a, b));
}

function unaryOp(where: string, x: Tensor, op: UnaryOp): Tensor {
  requireFloat(where, x);
  return elementwise.unary(op, x);
}
