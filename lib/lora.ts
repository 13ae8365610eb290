// LoRA: a frozen Linear plus a trainable low-rank update, y = x W^T + b +
// scale * (drop(x) A^T) B^T, with A [r, in] random and B [out, r] zero so the
// wrapped layer starts out exactly equal to the original. Forward and backward
// are one native call each; merging folds scale * B A into W in place.
import { Tensor } from './tensor';
import { randn, rand, zeros } from './creation';
import { keep } from './scope';
import { assertTensor, checkLinearInput, checkLinearWeights, requireAdapterDtype, requireFloat, requireSame } from './checks';
import { DType, FloatDType, isHalf } from './dtype';
import { noGrad } from './autograd';
import { Module } from './nn/module';
import { Linear } from './nn/layers';
import { Embedding, embedding } from './nn/transformer';
import * as ops from './ops/linear';
import { copy_ } from './ops/memory';
import { dropout } from './ops/dropout';
import { allFinite } from './ops/elementwise';
import { nextRandomKey } from './random';
import type { DeviceSpec } from './device';
import { pyFloat } from './printing';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, checkKnownKeys, rangeError, typeError, describe } from './errors';

/**
 * How A starts (B starts at zero): 'normal' N(0, 0.01²), as the reference LoRALinear; 'gaussian'
 * N(0, 1/r²), as PEFT's init_lora_weights="gaussian"; 'kaiming' uniform within ±1/√in, as PEFT's
 * default (init_lora_weights=True).
 */
export type LoraInit = 'normal' | 'gaussian' | 'kaiming';

/** Role of each trainable tensor of the adapters merged into their weights now. */
type AdapterRole = 'A' | 'B' | 'loraBias' | 'magnitude';
const mergedAdapters = new WeakMap<Tensor, AdapterRole>();

/**
 * @internal The role ('A', 'B', 'loraBias', 'magnitude') when `t` is that tensor of an adapter merged
 * into its weight (an optimiser refuses to step it: the merged weight would not follow), else null.
 */
export function mergedAdapterRole(t: Tensor): AdapterRole | null {
  return mergedAdapters.get(t) ?? null;
}

export interface LoRAOptions {
  /** Rank of the update (0 disables the adapter). Default 4. */
  r?: number;
  /** Scaling numerator: scale = alpha / r (alpha / sqrt(r) with useRslora). Default 1. */
  alpha?: number;
  /** Dropout probability on the adapter's input, in [0, 1). Default 0. */
  dropout?: number;
  /** A's initialisation: 'normal' N(0, 0.01²) (default), 'gaussian' N(0, 1/r²) or 'kaiming' uniform (PEFT's default). */
  init?: LoraInit;
  /** Rank-stabilised scaling alpha / sqrt(r). Default false. */
  useRslora?: boolean;
  /** PEFT's lora_bias: B gets a bias of its own [out] (zero at start), scaled with the LoRA term. Default false. */
  loraBias?: boolean;
  /** PEFT's use_dora: DoRA, a trainable magnitude per output row over the row norms of W + scale B A. Default false. */
  useDora?: boolean;
  /**
   * PEFT's autocast_adapter_dtype: on a bfloat16/float16 layer, A, B (and loraBias, magnitude, so
   * their gradients and optimiser state) are float32 (true, the default); false keeps them in the
   * layer's dtype. float32 and float64 layers always have adapters of their own dtype.
   */
  autocastAdapterDtype?: boolean;
}

const LORA_KEYS = ['r', 'alpha', 'dropout', 'init', 'useRslora', 'loraBias', 'useDora', 'autocastAdapterDtype'] as const;

/** The dtype of a layer's adapters: float32 on a half layer with autocast (PEFT's default), else the layer's. */
export function adapterDtype(layerDtype: DType, autocast: boolean): FloatDType {
  return (isHalf(layerDtype) && autocast ? 'float32' : layerDtype) as FloatDType;
}

/** t, or t upcast (exactly) to other's dtype when t is half and other is not: PyTorch's type promotion. */
function promoted(t: Tensor, other: Tensor): Tensor {
  return t.dtype === other.dtype || !isHalf(t.dtype) ? t : t.to(other.dtype);
}

/** a + b with PyTorch's promotion (a half tensor meeting a float32 one computes in float32). */
function addP(a: Tensor, b: Tensor): Tensor {
  return promoted(a, b).add(promoted(b, a));
}

/** t in `dtype` (one rounding to a half type), t itself when it already is. */
function asDtype(t: Tensor, dtype: DType): Tensor {
  return t.dtype === dtype ? t : t.to(dtype);
}

interface ResolvedLoRAOptions {
  autocastAdapterDtype: boolean;
  r: number;
  alpha: number;
  dropout: number;
  init: LoraInit;
  useRslora: boolean;
  loraBias: boolean;
  useDora: boolean;
}

function resolveLoraOptions(where: string, o: Record<string, unknown>): ResolvedLoRAOptions {
  const r = o.r === undefined ? 4 : checkInt(where, 'options.r', o.r);
  const alpha = o.alpha === undefined ? 1 : checkNumber(where, 'options.alpha', o.alpha);
  const dropout = o.dropout === undefined ? 0 : checkNumber(where, 'options.dropout', o.dropout);
  if (dropout < 0 || dropout >= 1) throw rangeError(where, 'options.dropout', 'in [0, 1)', dropout);
  const init = o.init === undefined ? 'normal' : checkOneOf(where, 'options.init', o.init, ['normal', 'gaussian', 'kaiming'] as const);
  const useRslora = o.useRslora === undefined ? false : checkBool(where, 'options.useRslora', o.useRslora);
  const loraBias = o.loraBias === undefined ? false : checkBool(where, 'options.loraBias', o.loraBias);
  const useDora = o.useDora === undefined ? false : checkBool(where, 'options.useDora', o.useDora);
  // As PEFT's LoraConfig: its DoRA forward and merge disagree on a lora_B bias.
  if (loraBias && useDora) throw new RangeError(`${where}: options.loraBias is not supported with options.useDora (as in PEFT)`);
  const autocastAdapterDtype = o.autocastAdapterDtype === undefined ? true : checkBool(where, 'options.autocastAdapterDtype', o.autocastAdapterDtype);
  return { r, alpha, dropout, init, useRslora, loraBias, useDora, autocastAdapterDtype };
}

/**
 * A or B of a layer: a live float tensor of the given shape on the device of `ref` (x, or the
 * weight), in its dtype or, for a half layer, float32 (autocastAdapterDtype).
 */
function checkAdapter(where: string, ref: Tensor, refName: string, t: unknown, what: string, shape: number[], dims: string): void {
  assertTensor(where, what, t);
  requireFloat(where, t, what);
  requireAdapterDtype(where, ref, refName, t, what);
  if (t.ndim !== 2 || t.shape[0] !== shape[0] || t.shape[1] !== shape[1]) {
    throw rangeError(where, what, `a 2-D tensor of shape [${shape.join(', ')}] (${dims})`, t);
  }
}

/** A 1-D float tensor [n] on the device of `ref`, in the dtype an adapter (strict: the layer) may have. */
function checkVector(where: string, ref: Tensor, refName: string, t: unknown, what: string, n: number, strict = false): void {
  assertTensor(where, what, t);
  requireFloat(where, t, what);
  if (strict) requireSame(where, ref, refName, t, what);
  else requireAdapterDtype(where, ref, refName, t, what);
  if (t.ndim !== 1 || t.shape[0] !== n) throw rangeError(where, what, `a 1-D tensor of shape [${n}] ([outFeatures])`, t);
}


export class LoRALinear extends Module {
  /** The wrapped layer; its weight and bias are frozen. */
  readonly origLinear: Linear;
  /** Down projection [r, in] (null when r = 0). */
  A: Tensor | null;
  /** Up projection [out, r], zero at start (null when r = 0). */
  B: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly r: number;
  readonly alpha: number;
  readonly scale: number;
  readonly dropout: number;
  readonly useRslora: boolean;
  readonly init: LoraInit;
  /** PEFT's lora_B bias [out] (null unless options.loraBias): the LoRA term is scale * (x Aᵀ Bᵀ + loraBias). */
  loraBias: Tensor | null = null;
  /** DoRA's magnitude [out] (null unless options.useDora), PEFT's lora_magnitude_vector. */
  magnitude: Tensor | null = null;
  readonly useDora: boolean;
  /** PEFT's autocast_adapter_dtype: the adapters of a half layer are float32 (see LoRAOptions). */
  readonly autocastAdapterDtype: boolean;
  /** True while scale * B A is folded into origLinear.weight. */
  merged = false;
  /**
   * When false, forward is the original layer's (the adapter is kept, not applied); a merged adapter
   * is unmerged by the next forward first, as PEFT's forward does with disabled adapters.
   */
  enabled = true;
  /**
   * @internal While merged: copies of A and B as they were merged (unmerging subtracts exactly what
   * was added) and the tensors they were copied from.
   */
  private _mergedAB: { A: Tensor; B: Tensor; from: Tensor[]; loraBias?: Tensor; factor?: Tensor } | null = null;
  /** @internal The weight shared with other modules that mergeLora replaced by a copy to merge into. */
  _untiedFrom: Tensor | null = null;

  constructor(origLinear: Linear, options?: LoRAOptions) {
    super();
    const where = 'LoRALinear';
    if (!(origLinear instanceof Linear)) {
      throw typeError(where, 'origLinear', (origLinear as unknown) instanceof LoRALinear ? 'a Linear (this layer is already a LoRALinear)' : 'a Linear', origLinear);
    }
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, LORA_KEYS);
    const { r, alpha, dropout, init, useRslora, loraBias, useDora, autocastAdapterDtype } = resolveLoraOptions(where, o);
    this.origLinear = origLinear;
    this.autocastAdapterDtype = autocastAdapterDtype;
    this.useDora = useDora;
    this.A = null;
    this.B = null;
    this.inFeatures = origLinear.inFeatures;
    this.outFeatures = origLinear.outFeatures;
    this.r = r;
    this.alpha = alpha;
    this.dropout = dropout;
    this.useRslora = useRslora;
    this.init = init;
    this.scale = r > 0 ? (useRslora ? alpha / Math.sqrt(r) : alpha / r) : 1;
    origLinear.weight.requiresGrad_(false);
    if (origLinear.bias) origLinear.bias.requiresGrad_(false);
    // The layer takes the mode of the layer it wraps (set by its parent's train()/eval()), so a
    // model in eval mode does not gain dropout by being adapted.
    this.training = origLinear.training;
    if (r > 0) {
      const w = origLinear.weight;
      const opts = { dtype: adapterDtype(w.dtype, autocastAdapterDtype), device: w.device as 'cpu' };
      const bound = this.inFeatures > 0 ? 1 / Math.sqrt(this.inFeatures) : 0;
      this.A = (init === 'kaiming'
        ? rand([r, this.inFeatures], { ...opts, low: -bound, high: bound })
        : randn([r, this.inFeatures], { ...opts, std: init === 'gaussian' ? 1 / r : 0.01 })).requiresGrad_(true);
      this.B = zeros([this.outFeatures, r], opts).requiresGrad_(true);
      if (loraBias) this.loraBias = zeros([this.outFeatures], opts).requiresGrad_(true);
      // PEFT starts the magnitude at the row norms of W + scale B A (B is zero: those of W), so the
      // layer starts out equal to the original.
      if (useDora) this.magnitude = noGrad(() => keep(this._weightNorm(w, this.A!, this.B!))).requiresGrad_(true);
    }
  }

  /**
   * @internal The weight and bias this layer computes with, merged out of place (new tensors, no
   * graph; bias null when merging leaves it as it is): W + scale B A, for DoRA rescaled per row by
   * magnitude / ‖W + scale B A‖, and b + scale loraBias.
   */
  _mergedTensors(): { weight: Tensor; bias: Tensor | null } {
    const W = this.origLinear.weight;
    return noGrad(() => {
      // In the adapters' dtype (float32 for a half layer), rounded once to the layer's.
      const V = addP(W, this.B!.matmul(this.A!).mul(this.scale));
      const weight = this.useDora ? V.mul(this.magnitude!.div(this._weightNorm(W, this.A!, this.B!)).reshape(this.outFeatures, 1)) : V;
      const b = this.origLinear.bias;
      const bias = this.loraBias ? asDtype(addP(b!, this.loraBias.mul(this.scale)), b!.dtype) : null;
      return { weight: asDtype(weight, W.dtype), bias };
    });
  }

  /** @internal ‖W + scale B A‖ per output row, [out], without a graph (DoRA treats it as a constant). */
  _weightNorm(W: Tensor, A: Tensor, B: Tensor): Tensor {
    return noGrad(() => {
      const V = addP(W, B.matmul(A).mul(this.scale));
      return V.mul(V).sum(1).sqrt();
    });
  }

  /** The wrapped layer's weight (frozen), so code written for the Linear keeps working (as PEFT's layers). */
  get weight(): Tensor {
    return this.origLinear.weight;
  }

  /** The wrapped layer's bias (frozen), or null. */
  get bias(): Tensor | null {
    return this.origLinear.bias;
  }

  forward(x: Tensor): Tensor {
    const where = 'LoRALinear.forward';
    checkLinearInput(where, x, this.inFeatures);
    // Every tensor may have been replaced since construction: all are checked here, before the
    // wrapped layer or native code sees them, so errors name this layer and the tensor.
    const W = this.origLinear.weight;
    const b = checkLinearWeights(where, x, W, this.origLinear.bias, { weight: 'origLinear.weight', bias: 'origLinear.bias' });
    if (!this.enabled && this.merged) this.unmergeFromOrig();
    if (this.r === 0 || this.merged || !this.enabled || !this.A || !this.B) return this.origLinear.forward(x);
    const A = this.A;
    const B = this.B;
    checkAdapter(where, x, 'x', A, 'A', [this.r, this.inFeatures], '[r, inFeatures]');
    checkAdapter(where, x, 'x', B, 'B', [this.outFeatures, this.r], '[outFeatures, r]');
    const p = this.training ? this.dropout : 0;
    const key = p > 0 ? nextRandomKey() : { seed: 0n, offset: 0n };
    const lb = this.loraBias;
    if (lb) checkVector(where, x, 'x', lb, 'loraBias', this.outFeatures);
    if (!this.useDora) {
      const y = ops.loraLinear(x, W, A, B, b, this.scale, p, key);
      // A float32 lora bias on a half layer: added in float32, rounded once (PEFT's result.to(dtype)).
      return lb ? asDtype(addP(y, lb.mul(this.scale)), y.dtype) : y;
    }
    const m = this.magnitude;
    checkVector(where, x, 'x', m, 'magnitude', this.outFeatures);
    // DoRA as PEFT's DoraLinearLayer: the base output rescaled per row by magnitude / ‖W + scale B A‖
    // (the norm a constant in backward), plus the rescaled LoRA term; the base bias is not rescaled.
    const ratio = m!.div(this._weightNorm(W, A, B));
    const none = { seed: 0n, offset: 0n };
    // On a half layer with float32 adapters the ratio is float32: the sums run in float32 and the
    // result is rounded once to the layer's dtype.
    if (p === 0) {
      const y = promoted(ops.loraLinear(x, W, A, B, null, this.scale, 0, none), ratio).mul(ratio);
      return asDtype(b ? addP(y, b) : y, x.dtype);
    }
    // With dropout PEFT rescales the base output of the dropped-out input: x Wᵀ + b + (ratio − 1) xd Wᵀ +
    // ratio scale lora(xd), with one dropout mask.
    const xd = dropout(x, p, key);
    const adapted = promoted(ops.loraLinear(xd, W, A, B, null, this.scale, 0, none), ratio).mul(ratio);
    const base = ops.linear(x, W, b);
    return asDtype(addP(base, adapted).sub(promoted(ops.linear(xd, W, null), adapted)), x.dtype);
  }

  /**
   * Folds scale * B A into origLinear.weight in place so forward costs one
   * GEMM; idempotent. With safe, the merged weight is checked for NaN/Inf first
   * and, if any appear, the weight is left bit-identical and an Error is thrown.
   * A and B are copied as merged, so unmergeFromOrig takes out exactly what was
   * added; while merged, optimiser steps on A and B are refused (the merged
   * weight would not follow them).
   */
  mergeToOrig(options?: { safe?: boolean }): void {
    const where = 'LoRALinear.mergeToOrig';
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['safe']);
    const safe = o.safe === undefined ? false : checkBool(where, 'options.safe', o.safe);
    if (this.r === 0 || this.merged || !this.A || !this.B) return;
    const W = this.origLinear.weight;
    this._checkMergeable(where);
    const A = this.A;
    const B = this.B;
    const lb = this.loraBias;
    const m = this.magnitude;
    const copies = noGrad(() => ({ A: keep(A.clone()), B: keep(B.clone()), loraBias: lb ? keep(lb.clone()) : undefined }));
    const drop = () => {
      copies.A.dispose();
      copies.B.dispose();
      copies.loraBias?.dispose();
    };
    let factor: Tensor | undefined;
    let ok = false;
    try {
      if (this.useDora) {
        // W ← (magnitude / ‖W + ΔW‖) (W + ΔW) per row; the factor is kept to unmerge as PEFT does.
        const merged = noGrad(() => {
          factor = keep(m!.div(this._weightNorm(W, copies.A, copies.B)).reshape(this.outFeatures, 1));
          // Computed in the adapters' dtype, rounded once to W's (checked for NaN/Inf as stored).
          return asDtype(addP(W, copies.B.matmul(copies.A).mul(this.scale)).mul(factor), W.dtype);
        });
        try {
          ok = !safe || allFinite(merged);
          if (ok) noGrad(() => W.copy_(merged));
        } finally {
          merged.dispose();
        }
      } else {
        if (safe && lb && !noGrad(() => { const b = this.origLinear.bias!; const nb = asDtype(addP(b, copies.loraBias!.mul(this.scale)), b.dtype); try { return allFinite(nb); } finally { nb.dispose(); } })) {
          ok = false;
        } else {
          ok = noGrad(() => ops.loraMerge(W, copies.A, copies.B, this.scale, safe));
        }
      }
      if (ok && lb) {
        const bias = this.origLinear.bias!;
        noGrad(() => {
          const nb = addP(bias, copies.loraBias!.mul(this.scale));
          bias.copy_(nb); // rounds once to the bias's dtype
          nb.dispose();
        });
        bias._bumpVersion();
      }
    } finally {
      if (!ok) {
        drop();
        factor?.dispose();
      }
    }
    if (!ok) {
      throw new Error(`${where}: the merged weight would contain NaN or Inf (check the adapter's tensors for non-finite values); the weight is unchanged`);
    }
    W._bumpVersion();
    const from = [A, B, ...(lb ? [lb] : []), ...(m ? [m] : [])];
    this._mergedAB = { A: copies.A, B: copies.B, from, loraBias: copies.loraBias, factor };
    mergedAdapters.set(A, 'A').set(B, 'B');
    if (lb) mergedAdapters.set(lb, 'loraBias');
    if (m) mergedAdapters.set(m, 'magnitude');
    this.merged = true;
  }

  /**
   * Takes the merged adapter out of origLinear.weight again: subtracts scale * B A as it was merged
   * (exact up to rounding, whatever A and B became since), or, for a weight that mergeLora untied
   * from other modules, ties the layer to the shared weight again (bit-exact).
   */
  unmergeFromOrig(): void {
    const where = 'LoRALinear.unmergeFromOrig';
    const m = this._mergedAB;
    if (!this.merged || !m) return;
    const W = this.origLinear.weight;
    // A and B are not needed: what was added is subtracted (they may have been replaced or disposed).
    this._checkWeight(where);
    const shared = this._untiedFrom;
    if (shared && !shared.isDisposed) {
      this.origLinear.weight = shared;
      W.dispose();
    } else {
      // Module.to moves A and B but not these copies.
      const onW = (t: Tensor) => (t.device === W.device ? t : noGrad(() => t.to(W.device as DeviceSpec)));
      const A = onW(m.A);
      const B = onW(m.B);
      const factor = m.factor ? onW(m.factor) : null;
      try {
        if (factor) {
          // PEFT's DoRA unmerge: W / factor − ΔW.
          noGrad(() => {
            const BA = B.matmul(A).mul(this.scale);
            const orig = promoted(W, factor).div(factor).sub(promoted(BA, W)); // copy_ rounds once to W's dtype
            W.copy_(orig);
            orig.dispose();
          });
        } else {
          ops.loraMerge(W, A, B, -this.scale, false);
        }
      } finally {
        if (A !== m.A) A.dispose();
        if (B !== m.B) B.dispose();
        if (factor && factor !== m.factor) factor.dispose();
      }
      W._bumpVersion();
    }
    if (m.loraBias) {
      const bias = this.origLinear.bias!;
      const lb = bias.device === m.loraBias.device ? m.loraBias : noGrad(() => m.loraBias!.to(bias.device as DeviceSpec));
      noGrad(() => {
        const d = lb.mul(this.scale);
        const nb = promoted(bias, d).sub(d);
        bias.copy_(nb);
        nb.dispose();
      });
      if (lb !== m.loraBias) lb.dispose();
      bias._bumpVersion();
    }
    this._untiedFrom = null;
    this._mergedAB = null;
    m.A.dispose();
    m.B.dispose();
    m.loraBias?.dispose();
    m.factor?.dispose();
    for (const t of m.from) mergedAdapters.delete(t);
    this.merged = false;
  }

  /**
   * @internal Forgets the merge (the weight keeps scale * B A) and returns the copies of A and B kept
   * for unmerging, for the caller to dispose: used when the layer is taken out of the model merged.
   */
  _takeMergedState(): Tensor[] {
    const m = this._mergedAB;
    this._mergedAB = null;
    this._untiedFrom = null;
    this.merged = false;
    if (!m) return [];
    for (const t of m.from) mergedAdapters.delete(t);
    return [m.A, m.B, ...(m.loraBias ? [m.loraBias] : []), ...(m.factor ? [m.factor] : [])];
  }

  /**
   * @internal Before W += scale * B A (either sign): origLinear.weight [out, in], A and B live float
   * tensors of their shapes, on the weight's device in its dtype (any of them may have been replaced).
   */
  _checkMergeable(where: string): void {
    this._checkWeight(where);
    const W = this.origLinear.weight;
    const wn = 'origLinear.weight';
    checkAdapter(where, W, wn, this.A, 'A', [this.r, this.inFeatures], '[r, inFeatures]');
    checkAdapter(where, W, wn, this.B, 'B', [this.outFeatures, this.r], '[outFeatures, r]');
    if (this.useDora) checkVector(where, W, wn, this.magnitude, 'magnitude', this.outFeatures);
    if (this.loraBias) {
      checkVector(where, W, wn, this.loraBias, 'loraBias', this.outFeatures);
      // As PEFT: the bias of B can only be merged into a bias of the layer.
      if (!this.origLinear.bias) throw new Error(`${where}: the layer has a LoRA bias (loraBias) but the wrapped Linear has no bias to merge it into`);
      checkVector(where, W, wn, this.origLinear.bias, 'origLinear.bias', this.outFeatures, true);
    }
  }

  /** @internal origLinear.weight: a live float tensor [out, in] (it may have been replaced). */
  private _checkWeight(where: string): void {
    const W = this.origLinear.weight;
    const wn = 'origLinear.weight';
    assertTensor(where, wn, W);
    requireFloat(where, W, wn);
    if (W.ndim !== 2 || W.shape[0] !== this.outFeatures || W.shape[1] !== this.inFeatures) {
      throw rangeError(where, wn, `a 2-D tensor of shape [${this.outFeatures}, ${this.inFeatures}] ([outFeatures, inFeatures])`, W);
    }
  }

  // Printing, as PEFT prints its lora.Linear: the settings, then the wrapped layer as (base_layer).
  extraRepr(): string {
    return `r=${this.r}, alpha=${this.alpha}, scaling=${pyFloat(this.scale)}, dropout=${pyFloat(this.dropout)}` +
      (this.useRslora ? ', use_rslora=True' : '') + (this.useDora ? ', use_dora=True' : '') + (this.loraBias ? ', lora_bias=True' : '') +
      (this.merged ? ', merged=True' : '') + (this.enabled ? '' : ', enabled=False');
  }
  reprChildren(): Iterable<[string, Module]> {
    return [['base_layer', this.origLinear]];
  }
}

/**
 * LoRA on an Embedding, as PEFT's lora.Embedding: y = W[ids] + scale * Aᵀ[ids] Bᵀ with A
 * (lora_embedding_A) [r, numEmbeddings] starting at zero and B (lora_embedding_B) [embeddingDim, r]
 * from N(0, 1), PEFT's start for embeddings, so the layer starts out equal to the original. PEFT applies
 * no dropout here; lora_bias and DoRA on embeddings are not supported.
 */
export class LoRAEmbedding extends Module {
  /** The wrapped layer; its weight is frozen. */
  readonly origEmbedding: Embedding;
  /** lora_embedding_A [r, numEmbeddings]. */
  A: Tensor | null;
  /** lora_embedding_B [embeddingDim, r]. */
  B: Tensor | null;
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  readonly r: number;
  readonly alpha: number;
  readonly scale: number;
  readonly useRslora: boolean;
  /** PEFT's autocast_adapter_dtype: the adapters of a half embedding are float32 (see LoRAOptions). */
  readonly autocastAdapterDtype: boolean;
  merged = false;
  enabled = true;
  /** @internal While merged: the copies of A and B merged, and the tensors they came from. */
  private _mergedAB: { A: Tensor; B: Tensor; from: Tensor[] } | null = null;

  constructor(origEmbedding: Embedding, options?: LoRAOptions) {
    super();
    const where = 'LoRAEmbedding';
    if (!(origEmbedding instanceof Embedding)) throw typeError(where, 'origEmbedding', 'an Embedding', origEmbedding);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, LORA_KEYS);
    const { r, alpha, useRslora, loraBias, useDora, autocastAdapterDtype } = resolveLoraOptions(where, o);
    if (loraBias || useDora) throw new RangeError(`${where}: ${loraBias ? 'loraBias' : 'useDora'} is not supported on an Embedding`);
    this.autocastAdapterDtype = autocastAdapterDtype;
    this.origEmbedding = origEmbedding;
    this.numEmbeddings = origEmbedding.numEmbeddings;
    this.embeddingDim = origEmbedding.embeddingDim;
    this.r = r;
    this.alpha = alpha;
    this.useRslora = useRslora;
    this.scale = r > 0 ? (useRslora ? alpha / Math.sqrt(r) : alpha / r) : 1;
    origEmbedding.weight.requiresGrad_(false);
    this.training = origEmbedding.training;
    this.A = null;
    this.B = null;
    if (r > 0) {
      const w = origEmbedding.weight;
      const opts = { dtype: adapterDtype(w.dtype, autocastAdapterDtype), device: w.device as 'cpu' };
      this.A = zeros([r, this.numEmbeddings], opts).requiresGrad_(true);
      this.B = randn([this.embeddingDim, r], opts).requiresGrad_(true);
    }
  }

  get weight(): Tensor {
    return this.origEmbedding.weight;
  }

  forward(ids: Tensor): Tensor {
    const where = 'LoRAEmbedding.forward';
    if (!this.enabled && this.merged) this.unmergeFromOrig();
    const W = this.origEmbedding.weight;
    const y = embedding(ids, W);
    if (this.r === 0 || this.merged || !this.enabled || !this.A || !this.B) return y;
    checkAdapter(where, W, 'origEmbedding.weight', this.A, 'A', [this.r, this.numEmbeddings], '[r, numEmbeddings]');
    checkAdapter(where, W, 'origEmbedding.weight', this.B, 'B', [this.embeddingDim, this.r], '[embeddingDim, r]');
    // float32 adapters on a half embedding: the sum in float32, rounded once (PEFT's result.to(dtype)).
    return asDtype(addP(y, embedding(ids, this.A.t()).matmul(this.B.t()).mul(this.scale)), y.dtype);
  }

  /** @internal scale (B A)ᵀ [numEmbeddings, embeddingDim], without a graph. */
  _delta(A: Tensor, B: Tensor): Tensor {
    return noGrad(() => B.matmul(A).t().mul(this.scale));
  }

  /** @internal W ± scale (B A)ᵀ (a new tensor, no graph), in the adapters' dtype and rounded once to W's. */
  _mergedWeight(W: Tensor, A: Tensor, B: Tensor, sign = 1): Tensor {
    return noGrad(() => {
      const d = this._delta(A, B);
      return asDtype(sign > 0 ? addP(W, d) : promoted(W, d).sub(d), W.dtype);
    });
  }

  /** @internal The checks before a merge. */
  _checkMergeable(where: string): void {
    const W = this.origEmbedding.weight;
    assertTensor(where, 'origEmbedding.weight', W);
    checkAdapter(where, W, 'origEmbedding.weight', this.A, 'A', [this.r, this.numEmbeddings], '[r, numEmbeddings]');
    checkAdapter(where, W, 'origEmbedding.weight', this.B, 'B', [this.embeddingDim, this.r], '[embeddingDim, r]');
  }

  /** Adds scale (B A)ᵀ to the embedding's weight in place (see LoRALinear.mergeToOrig). */
  mergeToOrig(options?: { safe?: boolean }): void {
    const where = 'LoRAEmbedding.mergeToOrig';
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['safe']);
    const safe = o.safe === undefined ? false : checkBool(where, 'options.safe', o.safe);
    if (this.r === 0 || this.merged || !this.A || !this.B) return;
    this._checkMergeable(where);
    const W = this.origEmbedding.weight;
    const A = this.A;
    const B = this.B;
    const copies = noGrad(() => ({ A: keep(A.clone()), B: keep(B.clone()) }));
    const merged = this._mergedWeight(W, copies.A, copies.B);
    try {
      if (safe && !allFinite(merged)) {
        copies.A.dispose();
        copies.B.dispose();
        throw new Error(`${where}: the merged weight would contain NaN or Inf (check A and B for non-finite values); the weight is unchanged`);
      }
      noGrad(() => W.copy_(merged));
    } finally {
      merged.dispose();
    }
    W._bumpVersion();
    this._mergedAB = { ...copies, from: [A, B] };
    mergedAdapters.set(A, 'A').set(B, 'B');
    this.merged = true;
  }

  /** Subtracts what mergeToOrig added. */
  unmergeFromOrig(): void {
    const m = this._mergedAB;
    if (!this.merged || !m) return;
    const W = this.origEmbedding.weight;
    noGrad(() => {
      const orig = this._mergedWeight(W, m.A.to(W.device as DeviceSpec), m.B.to(W.device as DeviceSpec), -1);
      W.copy_(orig);
      orig.dispose();
    });
    W._bumpVersion();
    this._takeMergedState().forEach((t) => t.dispose());
  }

  /** @internal As LoRALinear._takeMergedState. */
  _takeMergedState(): Tensor[] {
    const m = this._mergedAB;
    this._mergedAB = null;
    this.merged = false;
    if (!m) return [];
    for (const t of m.from) mergedAdapters.delete(t);
    return [m.A, m.B];
  }

  // Printing as LoRALinear: the settings, then the wrapped layer as (base_layer).
  extraRepr(): string {
    return `r=${this.r}, alpha=${this.alpha}, scaling=${pyFloat(this.scale)}` +
      (this.useRslora ? ', use_rslora=True' : '') + (this.merged ? ', merged=True' : '') + (this.enabled ? '' : ', enabled=False');
  }
  reprChildren(): Iterable<[string, Module]> {
    return [['base_layer', this.origEmbedding]];
  }
}

/** The LoRAEmbedding layers of a model with their names. */
export function loraEmbeddingLayers(model: Module): [string, LoRAEmbedding][] {
  if (!(model instanceof Module)) throw typeError('loraEmbeddingLayers', 'model', 'a Module', model);
  return [...model.namedModules()].filter((e): e is [string, LoRAEmbedding] => e[1] instanceof LoRAEmbedding);
}

/**
 * A copy of a module, every parameter of it trainable (the whole module is trained and saved beside
 * the adapter), with the original kept: forward is the copy's, or the original's while disabled. As
 * PEFT's ModulesToSaveWrapper (PEFT's modules_to_save).
 */
export class ModulesToSaveWrapper extends Module {
  /** The module as it was (frozen). */
  readonly originalModule: Module;
  /** The trainable copy that forward uses. */
  modulesToSave: Module;
  /** When false, forward is the original module's. */
  enabled = true;

  constructor(module: Module) {
    super();
    if (!(module instanceof Module)) throw typeError('ModulesToSaveWrapper', 'module', 'a Module', module);
    if (module instanceof ModulesToSaveWrapper || module instanceof LoRALinear) {
      throw typeError('ModulesToSaveWrapper', 'module', 'a module without an adapter', module);
    }
    this.originalModule = module;
    this.modulesToSave = cloneModule(module);
    for (const p of module.parameters()) p.requiresGrad_(false);
    for (const p of this.modulesToSave.parameters()) p.requiresGrad_(true);
    this.training = module.training;
  }

  /** The module forward uses now. */
  get active(): Module {
    return this.enabled ? this.modulesToSave : this.originalModule;
  }

  /** The active module's weight, so code written for the module keeps working (as PEFT's wrapper). */
  get weight(): Tensor {
    return (this.active as unknown as { weight: Tensor }).weight;
  }

  forward(...args: unknown[]): unknown {
    return this.active.forward(...args);
  }
}

/** A deep copy of a module: the same classes, every tensor cloned (detached, requiresGrad kept). */
function cloneModule<M extends Module>(m: M): M {
  const done = new Map<unknown, unknown>();
  const copy = (v: unknown): unknown => {
    if (done.has(v)) return done.get(v);
    if (v instanceof Tensor) {
      v._checkLive('ModulesToSaveWrapper');
      const t = keep(noGrad(() => v.clone())).requiresGrad_(v.requiresGrad);
      done.set(v, t);
      return t;
    }
    if (v instanceof Module) {
      const c = Object.create(Object.getPrototypeOf(v)) as Module;
      done.set(v, c);
      for (const key of Reflect.ownKeys(v)) {
        const d = Object.getOwnPropertyDescriptor(v, key)!;
        if ('value' in d) d.value = d.value instanceof Set ? new Set(d.value) : copy(d.value);
        Object.defineProperty(c, key, d);
      }
      return c;
    }
    if (Array.isArray(v) && v.some((e) => e instanceof Module || e instanceof Tensor)) return v.map(copy);
    return v;
  };
  return copy(m) as M;
}

/** The modules a modules_to_save list names: as PEFT, every module whose name ends with an entry (the model aside). */
function modulesToSaveOf(model: Module, entries: readonly string[]): [string, Module][] {
  const inner = new Set<Module>();
  for (const m of model.modules()) {
    if (m instanceof ModulesToSaveWrapper) {
      inner.add(m.originalModule);
      inner.add(m.modulesToSave);
      for (const d of m.originalModule.modules()) inner.add(d);
      for (const d of m.modulesToSave.modules()) inner.add(d);
    }
    if (m instanceof LoRALinear) for (const d of m.origLinear.modules()) inner.add(d);
  }
  return [...model.namedModules()].filter(([n, m]) => n !== '' && !inner.has(m) && entries.some((e) => n.endsWith(e)));
}

/** The ModulesToSaveWrapper modules of a model with their names. */
export function modulesToSaveLayers(model: Module): [string, ModulesToSaveWrapper][] {
  if (!(model instanceof Module)) throw typeError('modulesToSaveLayers', 'model', 'a Module', model);
  return [...model.namedModules()].filter((e): e is [string, ModulesToSaveWrapper] => e[1] instanceof ModulesToSaveWrapper);
}

/**
 * @internal Wraps the modules `entries` names (PEFT's modules_to_save) in ModulesToSaveWrapper, those
 * already wrapped aside; returns the names of the wrappers (new and old) the entries select.
 */
export function _wrapModulesToSave(where: string, model: Module, entries: readonly string[]): string[] {
  const fresh = modulesToSaveOf(model, entries);
  const old = modulesToSaveLayers(model).filter(([n]) => entries.some((e) => n.endsWith(e))).map(([n]) => n);
  for (const [name, m] of fresh) {
    if (m instanceof ModulesToSaveWrapper) continue;
    if (m instanceof LoRALinear) throw new RangeError(`${where}: '${name}' has a LoRA adapter and cannot also be a module to save`);
    let reached: Module | null = null;
    try {
      reached = model.getSubmodule(name);
    } catch {
      // reported below
    }
    if (reached !== m) throw new RangeError(`${where}: the module '${name}' cannot be reached by its dotted name, so it cannot be wrapped`);
  }
  const made: string[] = [];
  for (const [name, m] of fresh) {
    if (m instanceof ModulesToSaveWrapper) continue;
    model.setSubmodule(name, new ModulesToSaveWrapper(m));
    made.push(name);
  }
  return [...new Set([...old, ...made])];
}

export type LoraFilter = (name: string, module: Module) => boolean;

/** PEFT's target selection fields (LoraConfig names in comments), as check_target_module_exists reads them. */
export interface PeftTargets {
  /** target_modules: a list (a name matches an entry exactly or ends with '.' + entry) or a regex string matched against the whole name. */
  targetModules: string | readonly string[];
  /** layers_to_transform: with a list of targets, only names whose layer index (see layersPattern) is this or in this list. */
  layersToTransform?: number | readonly number[] | null;
  /** layers_pattern: the name part before the layer index ('layers' in model.layers.3.…); default the first '<part>.<digits>.' after a dot. */
  layersPattern?: string | readonly string[] | null;
  /** exclude_modules: names never adapted (a list as targetModules, or a full-match regex string). */
  excludeModules?: string | readonly string[] | null;
  /** modules_to_save: modules kept as trainable copies are never adapted, nor anything inside them. */
  modulesToSave?: readonly string[] | null;
}

function compile(where: string, what: string, source: string, wrap: (s: string) => string): RegExp {
  try {
    return new RegExp(wrap(source));
  } catch (e) {
    throw new RangeError(`${where}: ${what} ${JSON.stringify(source.length > 200 ? `${source.slice(0, 200)}…` : source)} is not a valid regular expression (${(e as Error).message})`);
  }
}

/**
 * A name → selected test that decides as PEFT's check_target_module_exists: exclusions first
 * (exclude_modules, then modules_to_save and what lies inside them), then target_modules (a regex
 * string must match the whole name; a list entry matches the name itself, or its end after a dot, and
 * only the latter is narrowed by layers_to_transform / layers_pattern). Regexes are compiled once, here.
 */
export function peftTargetMatcher(where: string, spec: PeftTargets, label: (field: string) => string = (f) => f): (name: string) => boolean {
  const listMatch = (list: readonly string[], name: string) => list.some((t) => name === t || name.endsWith(`.${t}`));
  const ex = spec.excludeModules;
  const exRe = typeof ex === 'string' ? compile(where, label('exclude_modules'), ex, (s) => `^(?:${s})$`) : null;
  const saved = (spec.modulesToSave ?? []).map((m) => compile(where, label('modules_to_save'), m, (s) => `^(?:|.*\\.)${s}(?:$|\\..*)`));
  const tm = spec.targetModules;
  const tmRe = typeof tm === 'string' ? compile(where, label('target_modules'), tm, (s) => `^(?:${s})$`) : null;
  const idx = spec.layersToTransform;
  const usingIdx = idx !== undefined && idx !== null && (typeof idx === 'number' || idx.length !== 0);
  const lp = spec.layersPattern;
  const patterns = lp === undefined || lp === null || lp.length === 0 ? null : (typeof lp === 'string' ? [lp] : lp);
  const idxRes = patterns
    ? patterns.map((p) => compile(where, label('layers_pattern'), p, (s) => `^.*?\\.${s}\\.(\\d+)\\.`))
    : [/^.*?\.[^.]*\.(\d+)\./];
  return (name: string) => {
    if (exRe ? exRe.test(name) : Array.isArray(ex) && listMatch(ex, name)) return false;
    if (saved.some((re) => re.test(name))) return false;
    if (tmRe) return tmRe.test(name);
    const list = tm as readonly string[];
    if (list.includes(name)) return true;
    if (!listMatch(list, name)) return false;
    if (!usingIdx) return true;
    let m: RegExpExecArray | null = null;
    for (const re of idxRes) if ((m = re.exec(name))) break;
    if (!m) return false;
    const i = Number(m[1]);
    return typeof idx === 'number' ? i === idx : (idx as readonly number[]).includes(i);
  };
}

/** Checks layersToTransform / layersPattern / excludeModules values (options or config fields). */
export function checkPeftTargetFields(where: string, names: { idx: string; pattern: string; exclude: string }, idx: unknown, pattern: unknown, exclude: unknown): void {
  const isIndex = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (idx != null && !isIndex(idx) && !(Array.isArray(idx) && idx.every(isIndex))) {
    throw typeError(where, names.idx, 'a layer index or a list of layer indices (non-negative integers)', idx);
  }
  if (pattern != null && typeof pattern !== 'string' && !(Array.isArray(pattern) && pattern.every((p) => typeof p === 'string'))) {
    throw typeError(where, names.pattern, 'a name or a list of names', pattern);
  }
  if (exclude != null && typeof exclude !== 'string' && !(Array.isArray(exclude) && exclude.every((p) => typeof p === 'string'))) {
    throw typeError(where, names.exclude, 'a list of module names or a regex string', exclude);
  }
}

export interface InjectLoraOptions extends LoRAOptions {
  /** Selects layers: called with each Linear's dotted name and the layer. */
  filter?: LoraFilter;
  /**
   * Module names: a list, each entry matching a name equal to it or ending with '.' plus it ('q_proj',
   * 'self_attn.q_proj'); a string, a regular expression that must match the whole name (PEFT's
   * target_modules); or a RegExp tested on the full name.
   */
  targetModules?: readonly string[] | string | RegExp;
  /** PEFT's layers_to_transform: with a list of targetModules, only layers of this index (or these). */
  layersToTransform?: number | readonly number[];
  /** PEFT's layers_pattern: the name part before the layer index (default: the first '.<part>.<digits>.'). */
  layersPattern?: string | readonly string[];
  /** PEFT's exclude_modules: a list as targetModules, or a full-match regex string; never adapted. */
  excludeModules?: string | readonly string[];
  /**
   * PEFT's modules_to_save: modules whose name ends with one of these are trained whole, as a copy
   * (ModulesToSaveWrapper; the original is kept for disabling), and get no LoRA layer.
   */
  modulesToSave?: readonly string[];
  /**
   * PEFT's rank_pattern: r by layer, as a map from a pattern to r (the first key that matches the end of
   * the name at a dot, as a regex, wins) or a function of the name (undefined: options.r).
   */
  rankPattern?: Readonly<Record<string, number>> | ((name: string) => number | undefined);
  /** PEFT's alpha_pattern: alpha by layer, as rankPattern. */
  alphaPattern?: Readonly<Record<string, number>> | ((name: string) => number | undefined);
  /** Freeze every parameter that is not a LoRA A or B. Default true. */
  freezeBase?: boolean;
  /**
   * PEFT's adapter_name: the layers become (or join) the named adapter. A new name next to an installed
   * adapter is added without becoming active (setAdapter switches), as PEFT's add_adapter.
   */
  adapterName?: string;
  /**
   * Allow names in targetModules that match no layer of the model (by default each must match at
   * least one, so a misspelt name cannot pass). Default false.
   */
  allowUnmatchedTargets?: boolean;
}

function nameMatches(name: string, targets: readonly string[] | RegExp): boolean {
  if (targets instanceof RegExp) {
    targets.lastIndex = 0;
    return targets.test(name);
  }
  return targets.some((t) => name === t || name.endsWith(`.${t}`));
}

/**
 * Replaces the selected Linear layers of `model` by LoRALinear wrappers and
 * returns their names in namedModules order. Without filter and targetModules
 * every Linear is selected. Layers already wrapped count as selected and are
 * left alone (so a repeated call returns []); a selection that matches nothing
 * throws, since a misspelt target must not pass silently. A Linear held at two
 * places is one module with one name, its first in namedModules order: as in
 * PEFT, it is wrapped there and the other place keeps the bare layer (which
 * does not apply the adapter, until a merge changes the weight they share).
 */
export function injectLora(model: Module, options?: InjectLoraOptions): string[] {
  const where = 'injectLora';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  const o = checkOptions(where, options);
  if (o.adapterName !== undefined) {
    const name = checkAdapterName(where, 'options.adapterName', o.adapterName);
    const rest = { ...o };
    delete rest.adapterName;
    return _inAdapterSlot(where, model, name, () => injectLora(model, rest as InjectLoraOptions));
  }
  checkKnownKeys(where, o, [...LORA_KEYS, 'filter', 'targetModules', 'freezeBase', 'allowUnmatchedTargets', 'layersToTransform', 'layersPattern', 'excludeModules', 'rankPattern', 'alphaPattern', 'modulesToSave', 'adapterName']);
  const loraOpts = resolveLoraOptions(where, o);
  const rankOf = patternOption(where, 'options.rankPattern', o.rankPattern, loraOpts.r, true);
  const alphaOf = patternOption(where, 'options.alphaPattern', o.alphaPattern, loraOpts.alpha, false);
  const filter = o.filter as LoraFilter | undefined;
  if (filter !== undefined && typeof filter !== 'function') throw typeError(where, 'options.filter', 'a function (name, module) => boolean', filter);
  const targetOpt = o.targetModules as readonly string[] | string | RegExp | undefined;
  if (targetOpt !== undefined && !(targetOpt instanceof RegExp) && typeof targetOpt !== 'string') {
    if (!Array.isArray(targetOpt) || targetOpt.length === 0 || targetOpt.some((t) => typeof t !== 'string' || t === '')) {
      throw typeError(where, 'options.targetModules', 'a non-empty array of module names, a regex string or a RegExp', targetOpt);
    }
  }
  checkPeftTargetFields(where, { idx: 'options.layersToTransform', pattern: 'options.layersPattern', exclude: 'options.excludeModules' },
    o.layersToTransform, o.layersPattern, o.excludeModules);
  if (o.layersToTransform !== undefined && !Array.isArray(targetOpt)) {
    // PEFT narrows only list targets by layer index (a regex names the layers itself).
    throw typeError(where, 'options.targetModules', 'a list of names when options.layersToTransform is given (a regex selects layers by itself, as in PEFT)', targetOpt);
  }
  const toSave = o.modulesToSave as readonly string[] | undefined;
  if (toSave !== undefined && (!Array.isArray(toSave) || toSave.some((t) => typeof t !== 'string' || t === ''))) {
    throw typeError(where, 'options.modulesToSave', 'an array of module names', toSave);
  }
  // Lists and regex strings select as PEFT's check_target_module_exists; a RegExp is tested on the
  // name; exclusions apply to either (and to a selection by filter alone).
  const listOrString = Array.isArray(targetOpt) || typeof targetOpt === 'string';
  const peftMatch = listOrString || o.excludeModules !== undefined || toSave?.length
    ? peftTargetMatcher(where, {
      modulesToSave: toSave,
      targetModules: listOrString ? targetOpt as readonly string[] | string : '.*',
      layersToTransform: o.layersToTransform as number | number[] | undefined,
      layersPattern: o.layersPattern as string | string[] | undefined,
      excludeModules: o.excludeModules as string | string[] | undefined,
    }, (f) => ({ target_modules: 'options.targetModules', exclude_modules: 'options.excludeModules', layers_pattern: 'options.layersPattern' })[f] ?? f)
    : null;
  const targets = targetOpt as readonly string[] | string | RegExp | undefined;
  const freezeBase = o.freezeBase === undefined ? true : checkBool(where, 'options.freezeBase', o.freezeBase);
  const allowUnmatched = o.allowUnmatchedTargets === undefined ? false : checkBool(where, 'options.allowUnmatchedTargets', o.allowUnmatchedTargets);

  if (toSave?.length) {
    const found = modulesToSaveOf(model, toSave).length + modulesToSaveLayers(model).filter(([n]) => toSave.some((e) => n.endsWith(e))).length;
    if (!found) throw new RangeError(`${where}: options.modulesToSave ${describe(toSave)} names no module of the model`);
  }
  // Inside a module to save nothing is adapted (its copy is trained whole).
  const saved = new Set<Module>();
  for (const [, w] of modulesToSaveLayers(model)) for (const d of [...w.originalModule.modules(), ...w.modulesToSave.modules()]) saved.add(d);
  const selects = (name: string, m: Module): boolean => {
    if (saved.has(m)) return false;
    if (peftMatch && !peftMatch(name)) return false;
    if (targetOpt instanceof RegExp && !nameMatches(name, targetOpt)) return false;
    if (filter !== undefined) {
      const v = filter(name, m);
      if (typeof v !== 'boolean') throw typeError(where, `options.filter('${name}', …)`, 'a boolean', v);
      return v;
    }
    return true;
  };

  const inner = new Set<Module>(); // origLinears of existing wrappers: never wrapped again
  const existing: [string, LoRALinear][] = [];
  const chosen: [string, Linear][] = [];
  const chosenEmb: [string, Embedding][] = [];
  const linearNames: string[] = [];
  let selected = 0;
  for (const [name, m] of model.namedModules()) {
    if (m instanceof LoRALinear) {
      inner.add(m.origLinear);
      existing.push([name, m]);
      linearNames.push(name);
      if (selects(name, m.origLinear)) selected++;
    } else if (m instanceof Linear && !inner.has(m)) {
      linearNames.push(name);
      if (selects(name, m)) {
        selected++;
        chosen.push([name, m]);
      }
    } else if (m instanceof LoRAEmbedding) {
      inner.add(m.origEmbedding);
      if (targetOpt !== undefined) {
        linearNames.push(name);
        if (selects(name, m.origEmbedding)) selected++;
      }
    } else if (m instanceof Embedding && !inner.has(m) && targetOpt !== undefined) {
      // Embeddings are adapted when targetModules names them (as in PEFT), never by default.
      linearNames.push(name);
      if (selects(name, m)) {
        selected++;
        chosenEmb.push([name, m]);
      }
    }
  }
  const layerList = () => (linearNames.length ? linearNames.slice(0, 20).map((n) => `'${n}'`).join(', ') + (linearNames.length > 20 ? ', …' : '') : 'none');
  if ((filter !== undefined || targets !== undefined || peftMatch) && selected === 0) {
    const what = targets !== undefined ? `options.targetModules ${targets instanceof RegExp ? String(targets) : describe(targets)}` : o.excludeModules !== undefined ? 'options.excludeModules' : 'options.filter';
    throw new RangeError(`${where}: ${what} selected no Linear layer; the model's Linear layers are: ${layerList()}`);
  }
  if (Array.isArray(targets) && !allowUnmatched) {
    // Every name must match some layer: ['q_proj', 'vproj'] must not quietly adapt q_proj alone.
    const unmatched = targets.filter((t) => !linearNames.some((n) => nameMatches(n, [t])));
    if (unmatched.length) {
      throw new RangeError(`${where}: options.targetModules ${unmatched.map((t) => `'${t}'`).join(', ')} ${unmatched.length > 1 ? 'match' : 'matches'} no Linear layer ` +
        `(pass allowUnmatchedTargets: true to allow it); the model's Linear layers are: ${layerList()}`);
    }
  }
  for (const [name] of chosen) {
    if (name === '') throw new TypeError(`${where}: the model itself is a Linear; wrap it directly with new LoRALinear(model, options)`);
  }
  if (toSave?.length) _wrapModulesToSave(where, model, toSave);
  // One adapter per model: ranks and alphas may differ by layer (saved as PEFT's rank_pattern and
  // alpha_pattern), dropout and rsLoRA scaling may not (an adapter config has one of each).
  if (chosen.length && existing.length) {
    const [firstName, first] = existing[0];
    if (first.dropout !== loraOpts.dropout || first.useRslora !== loraOpts.useRslora) {
      throw new RangeError(`${where}: the model already has LoRA layers with dropout=${first.dropout}, useRslora=${first.useRslora} ('${firstName}'); ` +
        `new layers with dropout=${loraOpts.dropout}, useRslora=${loraOpts.useRslora} could not be saved as one adapter (PEFT has one lora_dropout and one use_rslora per adapter)`);
    }
    if (first.useDora !== loraOpts.useDora || (first.loraBias !== null) !== loraOpts.loraBias) {
      throw new RangeError(`${where}: the model already has LoRA layers with useDora=${first.useDora}, loraBias=${first.loraBias !== null} ('${firstName}'); ` +
        `new layers with useDora=${loraOpts.useDora}, loraBias=${loraOpts.loraBias} could not be saved as one adapter (PEFT has one use_dora and one lora_bias per adapter)`);
    }
  }
  if (chosenEmb.length && (loraOpts.useDora || loraOpts.loraBias)) {
    throw new RangeError(`${where}: options.${loraOpts.useDora ? 'useDora' : 'loraBias'} is not supported on an Embedding ('${chosenEmb[0][0]}')`);
  }
  const made = chosen.map(([name, lin]) => [name, new LoRALinear(lin, { ...loraOpts, r: rankOf(name), alpha: alphaOf(name) })] as const);
  for (const [name, layer] of made) model.setSubmodule(name, layer);
  for (const [name, emb] of chosenEmb) {
    if (name === '') throw new TypeError(`${where}: the model itself is an Embedding; wrap it directly with new LoRAEmbedding(model, options)`);
    model.setSubmodule(name, new LoRAEmbedding(emb, { r: rankOf(name), alpha: alphaOf(name), useRslora: loraOpts.useRslora, autocastAdapterDtype: loraOpts.autocastAdapterDtype }));
  }

  if (freezeBase) {
    const adapters = new Set<Tensor>(getLoraAB(model));
    for (const p of model.parameters()) if (!adapters.has(p)) p.requiresGrad_(false);
  }
  const names = new Set([...chosen, ...chosenEmb].map(([n]) => n));
  return [...model.namedModules()].map(([n]) => n).filter((n) => names.has(n));
}

/**
 * name → value of a rankPattern / alphaPattern option: PEFT's get_pattern_key for a map (the first
 * key k with the name matching (.*\.)?(k)$), or the user's function; the default otherwise.
 */
function patternOption(where: string, what: string, v: unknown, dflt: number, isRank: boolean): (name: string) => number {
  const check = (x: unknown, key: string): number => {
    if (isRank ? !(typeof x === 'number' && Number.isSafeInteger(x) && x >= 0) : !(typeof x === 'number' && Number.isFinite(x))) {
      throw typeError(where, key, isRank ? 'a non-negative integer' : 'a finite number', x);
    }
    return x as number;
  };
  if (v === undefined) return () => dflt;
  if (typeof v === 'function') {
    return (name) => {
      const x = (v as (n: string) => unknown)(name);
      return x === undefined ? dflt : check(x, `${what}('${name}')`);
    };
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw typeError(where, what, 'an object mapping name patterns to numbers, or a function of the name', v);
  const entries = Object.entries(v as Record<string, unknown>).map(([k, x]) => [compile(where, `${what} key`, k, (s) => `^(?:.*\\.)?(?:${s})$`), check(x, `${what}[${JSON.stringify(k)}]`)] as const);
  return (name) => entries.find(([re]) => re.test(name))?.[1] ?? dflt;
}

/** True for a Linear whose last name part is q_proj, k_proj or v_proj (any case). */
export function qkvFilter(name: string, module: Module): boolean {
  if (!(module instanceof Linear)) return false;
  const last = String(name).split('.').pop() as string;
  return /^[qkv]_proj$/i.test(last);
}

/** Every parameter with requiresGrad (after injectLora: the adapters). */
export function getLoraParameters(model: Module): Tensor[] {
  if (!(model instanceof Module)) throw typeError('getLoraParameters', 'model', 'a Module', model);
  return [...model.parameters()].filter((p) => p.requiresGrad);
}

/**
 * The trainable tensors of every LoRALinear with r > 0, in namedModules order: A, B and, where the
 * layer has them, its loraBias and DoRA magnitude; and the parameters of the copies of the modules
 * to save (ModulesToSaveWrapper).
 */
export function getLoraAB(model: Module): Tensor[] {
  if (!(model instanceof Module)) throw typeError('getLoraAB', 'model', 'a Module', model);
  const out: Tensor[] = [];
  for (const m of model.modules()) {
    if (m instanceof ModulesToSaveWrapper) for (const p of m.modulesToSave.parameters()) out.push(p);
    if (m instanceof LoRAEmbedding && m.A && m.B) out.push(m.A, m.B);
    if (m instanceof LoRALinear && m.A && m.B) {
      out.push(m.A, m.B);
      if (m.loraBias) out.push(m.loraBias);
      if (m.magnitude) out.push(m.magnitude);
    }
  }
  return out;
}

/** The LoRALinear layers of a model with their names. */
export function loraLayers(model: Module): [string, LoRALinear][] {
  if (!(model instanceof Module)) throw typeError('loraLayers', 'model', 'a Module', model);
  return [...model.namedModules()].filter((e): e is [string, LoRALinear] => e[1] instanceof LoRALinear);
}

/**
 * Runs fn with every adapter of `model` switched off (forward is the base
 * model's), then switches them back on, also when fn throws. Merged adapters
 * cannot be switched off: unmerge them first.
 */
export function withAdaptersDisabled<T>(model: Module, fn: () => T): T {
  const where = 'withAdaptersDisabled';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  if (typeof fn !== 'function') throw typeError(where, 'fn', 'a function', fn);
  const layers = [...loraLayers(model), ...loraEmbeddingLayers(model)];
  const merged = layers.filter(([, m]) => m.merged).map(([n]) => n);
  if (merged.length) throw new Error(`${where}: adapters of ${merged.join(', ')} are merged into their weights; call unmergeLora(model) first`);
  const all: (LoRALinear | LoRAEmbedding | ModulesToSaveWrapper)[] = [...layers.map(([, m]) => m), ...modulesToSaveLayers(model).map(([, m]) => m)];
  const prev = all.map((m) => m.enabled);
  for (const m of all) m.enabled = false;
  try {
    return fn();
  } finally {
    all.forEach((m, i) => { m.enabled = prev[i]; });
  }
}

/**
 * Merges every adapter into its weight. Every layer's tensors are checked
 * first (a disposed one fails the call before any weight changes). With safe,
 * each merge is first tried on a copy of the weight (the same kernel, so the
 * same result), and a layer whose merge would produce NaN/Inf fails the call
 * before any weight changes: all of them stay bit-identical. Returns the names
 * of the layers merged by this call.
 *
 * As PEFT's merge_adapter and merge_and_unload: disabled adapters (enabled =
 * false) are merged too, and a disabled layer's next forward unmerges it again
 * (its output is the base layer's); a Linear used at two places was wrapped at
 * its first name only (see injectLora), and the merge changes the weight both
 * places use. A weight tied to another module is untied instead (the layer
 * merges into its own copy; unmerging ties it back).
 */
export function mergeLora(model: Module, options?: { safe?: boolean }): string[] {
  const where = 'mergeLora';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['safe']);
  const safe = o.safe === undefined ? false : checkBool(where, 'options.safe', o.safe);
  const todo = loraLayers(model).filter(([, m]) => !m.merged && m.r > 0 && m.A && m.B);
  const embTodo = loraEmbeddingLayers(model).filter(([, m]) => !m.merged && m.r > 0 && m.A && m.B);
  for (const [name, m] of embTodo) {
    try {
      m._checkMergeable(where);
      const W = m.origEmbedding.weight;
      // An embedding tied to the head: merging would change the head too (saveMerged writes both apart).
      for (const o of model.modules()) {
        if (o !== m.origEmbedding && Object.values(o).includes(W)) throw new Error('its weight is tied to another module, which the merge would change too (saveMerged writes the merged model without changing it)');
      }
      if (safe) {
        const t = m._mergedWeight(W, m.A!, m.B!);
        try {
          if (!allFinite(t)) throw new Error('the merged weight would contain NaN or Inf (check A and B for non-finite values)');
        } finally {
          t.dispose();
        }
      }
    } catch (e) {
      throw new Error(`${where}: layer '${name}': ${(e as Error).message}; no layer was merged`, { cause: e });
    }
  }
  for (const [name, m] of todo) {
    try {
      const W = m.origLinear.weight;
      m._checkMergeable(where);
      if (!safe) continue;
      if (!m.useDora && !m.loraBias) {
        const trial = zeros([...W.shape], { dtype: W.dtype as 'float32', device: W.device as 'cpu' });
        try {
          copy_(trial, W);
          if (!ops.loraMerge(trial, m.A!, m.B!, m.scale, true)) {
            throw new Error('the merged weight would contain NaN or Inf (check A and B for non-finite values)');
          }
        } finally {
          trial.dispose();
        }
      } else {
        const t = m._mergedTensors();
        try {
          if (!allFinite(t.weight) || (t.bias && !allFinite(t.bias))) {
            throw new Error('the merged weight would contain NaN or Inf (check the adapter\'s tensors for non-finite values)');
          }
        } finally {
          t.weight.dispose();
          t.bias?.dispose();
        }
      }
    } catch (e) {
      const err = new Error(`${where}: layer '${name}': ${(e as Error).message}; no layer was merged`, { cause: e });
      if ((e as NodeJS.ErrnoException).code) (err as NodeJS.ErrnoException).code = (e as NodeJS.ErrnoException).code;
      throw err;
    }
  }
  const done: LoRALinear[] = [];
  const names: string[] = [];
  for (const [name, m] of todo) {
    // A weight held elsewhere too (an lm_head tied to the embedding) is untied first: the layer
    // gets its own copy to merge into, and the other holders keep the original values (unmerging
    // ties the layer to it again).
    const W = m.origLinear.weight;
    const shared = holdsElsewhere(model, m.origLinear, W) ? W : null;
    if (shared) m.origLinear.weight = keep(noGrad(() => W.clone()));
    try {
      m.mergeToOrig({ safe });
    } catch (e) {
      if (shared) retie(m, shared);
      for (const d of done) d.unmergeFromOrig();
      throw new Error(`${where}: layer '${name}': ${(e as Error).message}; no layer was merged`);
    }
    m._untiedFrom = shared;
    done.push(m);
    names.push(name);
  }
  for (const [name, m] of embTodo) {
    m.mergeToOrig();
    names.push(name);
  }
  return names;
}

/** True when `t`, the weight of `layer`, is also a member of another module of `model`. */
function holdsElsewhere(model: Module, layer: Linear, t: Tensor): boolean {
  for (const m of model.modules()) {
    for (const [key, v] of Object.entries(m)) {
      if (v === t && !(m === layer && key === 'weight')) return true;
    }
  }
  return false;
}

/** Undoes the untying of mergeLora: the layer holds the shared weight again. */
function retie(m: LoRALinear, shared: Tensor): void {
  const copy = m.origLinear.weight;
  m.origLinear.weight = shared;
  if (copy !== shared) copy.dispose();
}

/**
 * Unmerges every merged adapter (subtracting what each merge added, or tying an
 * untied weight back); returns the names of the layers unmerged.
 */
export function unmergeLora(model: Module): string[] {
  if (!(model instanceof Module)) throw typeError('unmergeLora', 'model', 'a Module', model);
  const out: string[] = [];
  for (const [name, m] of [...loraLayers(model), ...loraEmbeddingLayers(model)]) {
    if (!m.merged) continue;
    m.unmergeFromOrig();
    out.push(name);
  }
  return out;
}

// ------------------------------------------------------------ named adapters

type AdapterLayer = LoRALinear | LoRAEmbedding | ModulesToSaveWrapper;
type Installed = [string, AdapterLayer][];
/**
 * The named adapters of a model, as PEFT's adapter_name: the active one's layers are in the module
 * tree, the others are kept here, each as the layers that go in place of the plain modules.
 */
interface Registry { active: string; stored: Map<string, Installed> }
const registries = new WeakMap<Module, Registry>();

function registryOf(model: Module): Registry {
  let r = registries.get(model);
  if (!r) {
    r = { active: 'default', stored: new Map() };
    registries.set(model, r);
  }
  return r;
}

function checkAdapterName(where: string, what: string, v: unknown): string {
  if (typeof v !== 'string' || v === '' || /[/\\]/.test(v) || v === '.' || v === '..') {
    throw typeError(where, what, 'a non-empty name without a path separator (it names a subfolder when saved)', v);
  }
  return v;
}

const baseOfLayer = (m: AdapterLayer): Module =>
  m instanceof LoRALinear ? m.origLinear : m instanceof LoRAEmbedding ? m.origEmbedding : m.originalModule;

/** The adapter layers now in the tree, in namedModules order. */
function installedLayers(model: Module): Installed {
  return [...model.namedModules()].filter((e): e is [string, AdapterLayer] =>
    e[1] instanceof LoRALinear || e[1] instanceof LoRAEmbedding || e[1] instanceof ModulesToSaveWrapper);
}

/** Takes the active adapter's layers out of the tree (the plain modules go back) and returns them. */
function uninstall(where: string, model: Module): Installed {
  const layers = installedLayers(model);
  const merged = layers.filter(([, m]) => !(m instanceof ModulesToSaveWrapper) && m.merged).map(([n]) => n);
  if (merged.length) throw new Error(`${where}: adapters of ${merged.slice(0, 4).join(', ')} are merged into their weights; call unmergeLora(model) first`);
  if (layers.some(([n]) => n === '')) throw new TypeError(`${where}: the model itself is an adapter layer; named adapters need a model around their layers`);
  for (const [name, m] of layers) model.setSubmodule(name, baseOfLayer(m));
  return layers;
}

/** Puts an adapter's layers in the tree, each where its plain module is. */
function install(where: string, model: Module, layers: Installed): void {
  for (const [name, m] of layers) {
    let at: Module | null = null;
    try {
      at = model.getSubmodule(name);
    } catch {
      // reported below
    }
    if (at !== baseOfLayer(m)) throw new Error(`${where}: '${name}' no longer holds the module the adapter was made for`);
  }
  for (const [name, m] of layers) model.setSubmodule(name, m);
}

/**
 * Installs the adapter `name` in place of the active one (a new name: with no adapter layers installed)
 * and returns what puts the active one back, keeping what was built under `name`; null when `name` is
 * the active adapter, or becomes it because the model has no adapter layers.
 */
function enterAdapterSlot(where: string, model: Module, name: string): (() => void) | null {
  const reg = registryOf(model);
  if (name === reg.active || (!installedLayers(model).length && !reg.stored.size)) {
    reg.active = name;
    return null;
  }
  const cur = uninstall(where, model);
  const leave = (): void => {
    reg.stored.set(name, uninstall(where, model));
    install(where, model, cur);
  };
  const mine = reg.stored.get(name);
  try {
    if (mine) install(where, model, mine);
  } catch (e) {
    leave();
    throw e;
  }
  return leave;
}

/** @internal Runs fn with the adapter `name` installed (see enterAdapterSlot), then puts the active one back. */
export function _inAdapterSlot<T>(where: string, model: Module, name: string, fn: () => T): T {
  const leave = enterAdapterSlot(where, model, name);
  try {
    return fn();
  } finally {
    leave?.();
  }
}

/** @internal The async form of _inAdapterSlot (the swap lasts while fn runs). */
export async function _inAdapterSlotAsync<T>(where: string, model: Module, name: string, fn: () => Promise<T>): Promise<T> {
  const leave = enterAdapterSlot(where, model, name);
  try {
    return await fn();
  } finally {
    leave?.();
  }
}

/** @internal Names of the model's adapters: the active one first (when it has layers), then the others. */
export function _adapterNames(model: Module): { active: string | null; stored: string[] } {
  const reg = registries.get(model);
  const active = installedLayers(model).length ? (reg?.active ?? 'default') : null;
  return { active, stored: reg ? [...reg.stored.keys()] : [] };
}

/** The name of the active adapter (PEFT's active_adapter; 'default' unless named), or null when none is installed. */
export function activeAdapter(model: Module): string | null {
  if (!(model instanceof Module)) throw typeError('activeAdapter', 'model', 'a Module', model);
  return _adapterNames(model).active;
}

/** Every adapter of the model by name, the active one first. */
export function listAdapters(model: Module): string[] {
  if (!(model instanceof Module)) throw typeError('listAdapters', 'model', 'a Module', model);
  const { active, stored } = _adapterNames(model);
  return [...(active !== null ? [active] : []), ...stored];
}

/**
 * PEFT's set_adapter: makes the named adapter the active one (its layers go in the tree, the active
 * one's are kept aside). Only the active adapter computes and trains (getLoraAB lists its tensors).
 * Merged adapters must be unmerged first.
 */
export function setAdapter(model: Module, name: string): void {
  const where = 'setAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  checkAdapterName(where, 'name', name);
  const reg = registryOf(model);
  if (name === reg.active && (installedLayers(model).length || !reg.stored.size)) {
    if (!installedLayers(model).length) throw new RangeError(`${where}: the model has no adapter '${name}'`);
    return;
  }
  const target = reg.stored.get(name);
  if (!target) throw new RangeError(`${where}: the model has no adapter '${name}' (it has: ${listAdapters(model).map((n) => `'${n}'`).join(', ') || 'none'})`);
  const cur = uninstall(where, model);
  try {
    install(where, model, target);
  } catch (e) {
    install(where, model, cur);
    throw e;
  }
  reg.stored.delete(name);
  if (cur.length) reg.stored.set(reg.active, cur);
  reg.active = name;
}

/**
 * PEFT's delete_adapter: removes the named adapter and frees its tensors. Deleting the active one
 * makes the first of the others active (none left: the model is the plain one).
 */
export function deleteAdapter(model: Module, name: string): void {
  const where = 'deleteAdapter';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  checkAdapterName(where, 'name', name);
  const reg = registryOf(model);
  const { active } = _adapterNames(model);
  let layers: Installed;
  if (name === active) {
    layers = uninstall(where, model);
    const next = [...reg.stored.keys()][0];
    if (next !== undefined) {
      install(where, model, reg.stored.get(next)!);
      reg.stored.delete(next);
      reg.active = next;
    } else {
      reg.active = 'default';
    }
  } else {
    const s = reg.stored.get(name);
    if (!s) throw new RangeError(`${where}: the model has no adapter '${name}' (it has: ${listAdapters(model).map((n) => `'${n}'`).join(', ') || 'none'})`);
    layers = s;
    reg.stored.delete(name);
  }
  freeLayers(layers);
}

/** Frees the adapter tensors of layers taken out of a model. */
function freeLayers(layers: Installed): void {
  for (const [, m] of layers) {
    if (m instanceof ModulesToSaveWrapper) {
      for (const p of m.modulesToSave.parameters()) if (!p.isDisposed) p.dispose();
      continue;
    }
    for (const t of m._takeMergedState()) t.dispose();
    const extra = m instanceof LoRALinear ? [m.loraBias, m.magnitude] : [];
    for (const t of [m.A, m.B, ...extra]) if (t && !t.isDisposed) t.dispose();
  }
}

/** @internal The stored (inactive) adapters' layers, by name (for saving them). */
export function _storedAdapter(model: Module, name: string): Installed | undefined {
  return registries.get(model)?.stored.get(name);
}

/** @internal Drops every inactive adapter (unloading removes them all, as in PEFT). */
function dropStored(model: Module): void {
  const reg = registries.get(model);
  if (!reg) return;
  for (const layers of reg.stored.values()) freeLayers(layers);
  registries.delete(model);
}

// ------------------------------------------------- PEFT's model-level helpers

/**
 * [trainable, all]: the number of parameter elements with requiresGrad and of all parameters, each
 * tensor counted once (tied weights too), as PEFT's get_nb_trainable_parameters.
 */
export function getNbTrainableParameters(model: Module): [number, number] {
  if (!(model instanceof Module)) throw typeError('getNbTrainableParameters', 'model', 'a Module', model);
  let trainable = 0;
  let all = 0;
  for (const p of model.parameters()) {
    all += p.numel;
    if (p.requiresGrad) trainable += p.numel;
  }
  return [trainable, all];
}

/**
 * Prints (console.log) and returns PEFT's print_trainable_parameters line:
 * "trainable params: 4,096 || all params: 1,234,567 || trainable%: 0.3318".
 */
export function printTrainableParameters(model: Module): string {
  const where = 'printTrainableParameters';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  const [trainable, all] = getNbTrainableParameters(model);
  if (all === 0) throw new RangeError(`${where}: the model has no parameters`);
  const n = (v: number) => v.toLocaleString('en-US');
  const line = `trainable params: ${n(trainable)} || all params: ${n(all)} || trainable%: ${(100 * trainable / all).toFixed(4)}`;
  console.log(line);
  return line;
}

/**
 * Takes a LoRA layer out of the model: its wrapped Linear goes back to its place (to the caller, for
 * the root) and the adapter's tensors are freed.
 */
function dropLayer(model: Module, name: string, m: LoRALinear | LoRAEmbedding): void {
  const copies = m._takeMergedState();
  for (const t of copies) t.dispose();
  const extra = m instanceof LoRALinear ? [m.loraBias, m.magnitude] : [];
  for (const t of [m.A, m.B, ...extra]) if (t && !t.isDisposed) t.dispose();
  m.A = null;
  m.B = null;
  if (m instanceof LoRALinear) {
    m.loraBias = null;
    m.magnitude = null;
  }
  if (name !== '') model.setSubmodule(name, m instanceof LoRALinear ? m.origLinear : m.origEmbedding);
}

/**
 * PEFT's merge_and_unload: merges every adapter into its weight (see mergeLora; with safe, a merge
 * that would give NaN/Inf fails before any weight changes) and puts each wrapped Linear back in place
 * of its LoRA layer, so the model is a plain module tree again. The adapters' tensors are freed.
 * Returns the model (the wrapped Linear when the model itself is a LoRALinear).
 */
export function mergeAndUnload<M extends Module>(model: M, options?: { safe?: boolean }): M | Linear {
  const where = 'mergeAndUnload';
  if (!(model instanceof Module)) throw typeError(where, 'model', 'a Module', model);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['safe']);
  mergeLora(model, o.safe === undefined ? undefined : { safe: checkBool(where, 'options.safe', o.safe) });
  return unloadLayers(model);
}

/**
 * PEFT's unload: removes every LoRA layer without merging, putting each wrapped Linear back in its
 * place. As in PEFT, an adapter merged before stays in its weight (unmergeLora first to get the base
 * weights back). The adapters' tensors are freed. Returns the model (the wrapped Linear when the model
 * itself is a LoRALinear).
 */
export function unload<M extends Module>(model: M): M | Linear {
  if (!(model instanceof Module)) throw typeError('unload', 'model', 'a Module', model);
  return unloadLayers(model);
}

/** What mergeAndUnload and unload share (PEFT's _unload_and_optionally_merge after any merge). */
function unloadLayers<M extends Module>(model: M): M | Linear {
  const layers = loraLayers(model);
  for (const [name, m] of layers) dropLayer(model, name, m);
  for (const [name, m] of loraEmbeddingLayers(model)) dropLayer(model, name, m);
  const root = layers.find(([n]) => n === '');
  unwrapModulesToSave(model);
  dropStored(model);
  return root ? root[1].origLinear : model;
}

/** As PEFT's unloading: each module to save is replaced by its trained copy (the original is dropped). */
function unwrapModulesToSave(model: Module): void {
  for (const [name, w] of modulesToSaveLayers(model)) if (name !== '') model.setSubmodule(name, w.modulesToSave);
}

