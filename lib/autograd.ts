// Reverse-mode autograd: grad mode, the recorded graph (one Node per op whose
// output needs a gradient), defineFunction (the one way to define a
// differentiable op) and the engine that walks the graph in backward().
//
// Load order: the op files (lib/ops/*) call defineFunction while they load, and
// tensor.ts loads them. So this file imports tensors as types only, and native
// code only through ops/memory.ts, which does the same: it always loads
// completely before any op file, whichever module is required first.
import type { Tensor, Store } from './tensor';
import type { NativeTensor } from './native';
import { accumulate_, addGrads, copyOf, free, viewOf } from './ops/memory';
import { typeError } from './errors';

let gradEnabled = true;

/** True unless inside noGrad() (or turned off with setGradEnabled(false)). */
export function isGradEnabled(): boolean {
  return gradEnabled;
}

/**
 * Runs fn with gradient recording off: ops inside record no graph and their
 * results do not require grad (like torch.no_grad). Synchronous functions only.
 */
export function noGrad<T>(fn: () => T): T {
  return withGradMode('noGrad', false, fn);
}

/**
 * Runs fn with gradient recording on, also inside noGrad (like torch.enable_grad).
 * Synchronous functions only.
 */
export function enableGrad<T>(fn: () => T): T {
  return withGradMode('enableGrad', true, fn);
}

/**
 * Turns gradient recording on or off (like torch.set_grad_enabled). With fn, only while fn
 * runs (restored after, as torch's `with torch.set_grad_enabled(mode):`), returning what fn
 * returns; without, from now on.
 */
export function setGradEnabled(mode: boolean): void;
export function setGradEnabled<T>(mode: boolean, fn: () => T): T;
export function setGradEnabled<T>(mode: boolean, fn?: () => T): T | void {
  if (typeof mode !== 'boolean') {
    throw typeError('setGradEnabled', 'mode', 'a boolean', mode);
  }
  if (fn === undefined) {
    gradEnabled = mode;
    return;
  }
  return withGradMode('setGradEnabled', mode, fn);
}

/** fn run with grad mode `mode`, the previous mode restored after (also when fn throws). */
function withGradMode<T>(where: string, mode: boolean, fn: () => T): T {
  if (typeof fn !== 'function') throw typeError(where, 'fn', 'a function', fn);
  // Grad mode is one flag for the thread: after an await, other code runs and fn's own code resumes
  // with whatever mode is current, so an async fn cannot be covered. Refused before it runs.
  if (fn.constructor?.name === 'AsyncFunction') throw asyncError(where);
  const prev = gradEnabled;
  gradEnabled = mode;
  let result: T;
  try {
    result = fn();
  } finally {
    gradEnabled = prev;
  }
  if (result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function') throw asyncError(where);
  return result;
}

function asyncError(where: string): TypeError {
  return new TypeError(`${where}: fn is asynchronous (an async function or one returning a Promise); ${where} needs a synchronous function, ` +
    `since ops after an await would run in another grad mode. Call ${where} around the synchronous parts instead`);
}

// ================================================================ functions

/** What the forward and backward of one call of an op share (torch's ctx). */
export interface FunctionCtx {
  /**
   * Per forward argument: whether backward must return its gradient. Known in forward too,
   * so forward can skip keeping what backward will not need. False for non-tensor arguments.
   */
  readonly needsInputGrad: readonly boolean[];
  /**
   * Keeps user-visible tensors (or null) for backward. backward() fails with a clear error when
   * one was modified in place (copy_, an optimiser step, a merge) or disposed since.
   */
  saveForBackward(...tensors: (Tensor | null)[]): void;
  /** What saveForBackward kept, in its order. */
  readonly savedTensors: readonly (Tensor | null)[];
  /**
   * Takes internal buffers (tensors or native handles made for backward): freed when the node
   * is released, at once when no node is recorded.
   */
  own(...buffers: (Tensor | NativeTensor)[]): void;
}

/** A differentiable op with one tensor output. S: what forward leaves in ctx for backward. */
export interface FunctionDef<A extends unknown[], S extends object> {
  /** The gradFn name of the outputs, e.g. 'MulBackward'. */
  readonly name: string;
  forward(ctx: FunctionCtx & S, ...args: A): Tensor;
  /** One gradient per forward argument, in order; null where none is needed or none exists. */
  backward(ctx: FunctionCtx & S, grad: Tensor): (Tensor | null)[];
}

/** The ctx of one call of an op. */
class Ctx implements FunctionCtx {
  savedTensors: (Tensor | null)[] = [];
  private versions: number[] = [];
  private owned: (Tensor | NativeTensor)[] = [];
  constructor(readonly needsInputGrad: readonly boolean[]) {}

  saveForBackward(...tensors: (Tensor | null)[]): void {
    for (const t of tensors) {
      this.savedTensors.push(t);
      this.versions.push(t ? t._store.version : 0);
      // Counted per storage, so releaseIntermediate() frees it only once no node needs it.
      if (t) t._store.saves = (t._store.saves ?? 0) + 1;
    }
  }

  own(...buffers: (Tensor | NativeTensor)[]): void {
    this.owned.push(...buffers);
  }

  /** Throws unless every saved tensor is live and unchanged since it was saved. */
  checkSaved(opName: string): void {
    this.savedTensors.forEach((t, j) => {
      if (!t) return;
      if (t._store.version !== this.versions[j]) {
        throw new Error(
          `Tensor.backward: a tensor of shape [${t.shape.join(', ')}] needed by ${opName} was modified in place ` +
            'after it was used (copy_, an optimiser step or a merge); run the forward pass again',
        );
      }
      t._checkLive(`Tensor.backward (${opName})`);
    });
  }

  release(): void {
    const owned = this.owned;
    const saved = this.savedTensors;
    this.owned = [];
    this.savedTensors = [];
    this.versions = [];
    for (const b of owned) free(b);
    for (const t of saved) {
      if (!t) continue;
      const st = t._store;
      st.saves = (st.saves ?? 1) - 1;
      if (st.saves === 0 && st.freeWhenUnsaved) freeStorage(t);
    }
  }
}

/** Frees a tensor's storage (and its views') but leaves its place in the graph: its node still runs. */
function freeStorage(t: Tensor): void {
  if (t._store.disposed) return;
  free(t._h);
  t._store.disposed = true;
}

/**
 * Frees intermediates a model made and no longer reads, as soon as possible: at once when no
 * recorded node kept them for backward, else when the last such node is released (its backward
 * ran, or the graph was freed). Their nodes stay in the graph, so gradients flow through them.
 * Never for a leaf that requires grad (a parameter) or a tensor kept from tidy() (keep, a .grad);
 * only for tensors nothing else refers to (a view of a freed storage is unusable too).
 */
export function releaseIntermediate(...tensors: (Tensor | null | undefined)[]): void {
  for (const t of tensors) {
    if (!t) continue;
    const st = t._store;
    if (st.disposed || st.escaped || (t.isLeaf && t.requiresGrad)) continue;
    if (st.saves) st.freeWhenUnsaved = true;
    else freeStorage(t);
  }
}

/**
 * Where the gradient of one argument goes: the node that made it, or the leaf that collects it.
 * Only leaves are held as tensors: a node never keeps an intermediate alive (what backward reads
 * is kept by saveForBackward, nothing else), so an intermediate's memory goes as soon as the
 * forward code drops it or frees it.
 */
export type Edge = { node: Node; leaf: null } | { node: null; leaf: Tensor };

/** One recorded call of an op. */
export class Node {
  /** Set when the output's tensor was disposed: the graph is cut there, backward skips it. */
  cut = false;
  constructor(
    /** The gradFn name, e.g. 'MulBackward'. */
    readonly name: string,
    /** Per argument of the call: where its gradient goes; null for those that need none. */
    public inputs: (Edge | null)[],
    private backward: ((grad: Tensor) => (Tensor | null)[]) | null,
    private free: (() => void) | null,
  ) {}

  /** The gradient of each argument from the output's gradient. */
  apply(grad: Tensor): (Tensor | null)[] {
    if (!this.backward) {
      // torch's message: what happened, and the two ways out.
      throw new Error(
        `Tensor.backward: trying to backward through the graph a second time (through ${this.name}, whose saved ` +
          'values were freed by the first backward()); run the forward pass again, or pass { retainGraph: true } ' +
          'to the first backward() to backpropagate through the graph again',
      );
    }
    const grads = this.backward(grad);
    if (grads.length !== this.inputs.length) {
      throw new Error(`${this.name}: backward returned ${grads.length} gradients for ${this.inputs.length} arguments`);
    }
    return grads;
  }

  /** Frees what the call kept for backward; it cannot run afterwards. cut: its output was disposed. */
  release(cut = false): void {
    if (cut) this.cut = true;
    const free = this.free;
    this.free = null;
    this.backward = null;
    this.inputs = [];
    if (free) free();
  }
}

/** An argument needs a gradient when grad mode is on and it is a tensor that requires grad. */
function needsGrad(arg: unknown): boolean {
  return gradEnabled && arg !== null && typeof arg === 'object' && (arg as Partial<Tensor>).requiresGrad === true;
}

/** The edge to t's gradient: its node, or t itself when it is a leaf. */
function edgeOf(t: Tensor): Edge {
  return t._gradFn ? { node: t._gradFn, leaf: null } : { node: null, leaf: t };
}

/**
 * Defines a differentiable op, in the manner of torch.autograd.Function: the returned function
 * runs forward, and records a node whose backward maps the output's gradient to one gradient per
 * argument, when grad mode is on and some tensor argument requires grad (else the buffers
 * forward owned are freed at once). Callers check the arguments first.
 */
export function defineFunction<A extends unknown[], S extends object = object>(def: FunctionDef<A, S>): (...args: A) => Tensor {
  return (...args: A): Tensor => {
    const needs = args.map(needsGrad);
    const ctx = new Ctx(needs);
    const opCtx = ctx as unknown as FunctionCtx & S; // forward fills in S
    let out: Tensor;
    try {
      out = def.forward(opCtx, ...args);
    } catch (e) {
      ctx.release();
      throw e;
    }
    if (!needs.includes(true)) {
      ctx.release();
      return out;
    }
    const backward = (grad: Tensor) => {
      ctx.checkSaved(def.name);
      return def.backward(opCtx, grad);
    };
    out._setGradFn(new Node(def.name, args.map((a, i) => (needs[i] ? edgeOf(a as Tensor) : null)), backward, () => ctx.release()));
    return out;
  };
}

/**
 * Clears .grad of each tensor: to null (freeing it) or to zeros in place. Zeroing checks every
 * gradient first, so a disposed one fails the call (under `where`) before any is changed.
 */
export function clearGrads(where: string, tensors: Iterable<Tensor>, setToNone: boolean): void {
  const list = [...tensors];
  if (!setToNone) for (const p of list) p.grad?._checkLive(where, 'a gradient');
  for (const p of list) {
    if (!p.grad) continue;
    if (setToNone) {
      p.grad.dispose();
      p.grad = null;
    } else {
      p.grad.zero_();
    }
  }
}

// =================================================================== engine

// Gradients flowing between nodes are owned by the engine and freed as soon as
// they are consumed; a count per storage keeps views and shared results alive
// while anything still refers to them.
// With retainGraph the nodes are kept (their saved values too), so the graph can be walked again.
export function runBackward(root: Tensor, rootGrad: Tensor, userGrad: boolean, retainGraph = false): void {
  const keep = new Set<Store>(); // storages the engine must never free
  const refs = new Map<Store, number>();
  const hold = (t: Tensor) => refs.set(t._store, (refs.get(t._store) ?? 0) + 1);
  const drop = (t: Tensor) => {
    const n = (refs.get(t._store) ?? 1) - 1;
    if (n > 0) {
      refs.set(t._store, n);
      return;
    }
    refs.delete(t._store);
    if (!keep.has(t._store)) t.dispose();
  };
  const accumulateLeaf = (leaf: Tensor, g: Tensor) => {
    if (leaf.isDisposed) return;
    if (leaf.grad === null) {
      // Take the buffer when nothing else refers to it, else copy (so later
      // in-place accumulation cannot change another pending gradient).
      const sole = (refs.get(g._store) ?? 0) === 1 && !keep.has(g._store);
      const owned = sole ? g : copyOf(g);
      keep.add(owned._store);
      leaf.grad = viewOf(owned, leaf.shape);
    } else {
      leaf.grad._checkLive('backward');
      accumulate_(leaf.grad, g);
    }
    drop(g);
  };

  if (userGrad) keep.add(rootGrad._store);
  hold(rootGrad);
  const top = root._gradFn;
  if (!top) {
    accumulateLeaf(root, rootGrad);
    return;
  }

  // Topological order (iterative DFS: deep graphs must not overflow the stack).
  const order: Node[] = [];
  const seen = new Set<Node>();
  const stack: [Node, number][] = [[top, 0]];
  seen.add(top);
  while (stack.length) {
    const frame = stack[stack.length - 1];
    const [fn, i] = frame;
    if (i < fn.inputs.length) {
      frame[1]++;
      const child = fn.inputs[i]?.node;
      if (child && !seen.has(child)) {
        seen.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(fn);
    }
  }

  const pending = new Map<Node, Tensor>([[top, rootGrad]]);
  try {
    for (let k = order.length - 1; k >= 0; k--) {
      const fn = order[k];
      const g = pending.get(fn);
      if (!g) continue;
      pending.delete(fn);
      if (fn.cut) {
        // Its output was disposed: as a disposed leaf, it takes no gradient.
        drop(g);
        continue;
      }
      const grads = fn.apply(g);
      for (const gi of grads) if (gi) hold(gi);
      grads.forEach((gi, i) => {
        const input = fn.inputs[i];
        if (!gi || !input) {
          if (gi) drop(gi);
          return;
        }
        if (input.node) {
          const prev = pending.get(input.node);
          if (prev) {
            const sum = addGrads(prev, gi);
            hold(sum);
            drop(prev);
            drop(gi);
            pending.set(input.node, sum);
          } else {
            pending.set(input.node, gi);
          }
        } else if (input.leaf.requiresGrad) {
          accumulateLeaf(input.leaf, gi);
        } else {
          drop(gi);
        }
      });
      drop(g);
      if (!retainGraph) fn.release();
    }
  } finally {
    // On error, free what is in flight and release the graph all the same (unless it is retained).
    for (const t of pending.values()) drop(t);
    if (!retainGraph) for (const fn of order) fn.release();
  }
}
