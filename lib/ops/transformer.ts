// Transformer blocks in the Hugging Face Llama layout, each one fused native
// call forward and one backward: token embedding, RMSNorm, rotary position
// embedding, the MLP's SwiGLU gate and scaled dot-product attention.
import type { Tensor } from '../tensor';
import { native, NativeTensor } from '../native';
import { defineFunction } from '../autograd';
import { fromArray } from './creation';
import { gradsLike } from './memory';
import { BINARY_OP, DEVICE_TYPE, dtypeCode } from './enums';
import { isHalf } from '../dtype';

/** The positions 0..N-1 of ids (each in [0, V)) sorted by (id, position). */
export function sortedPositions(ids: ArrayLike<number>, V: number): Int32Array {
  const N = ids.length;
  const order = new Int32Array(N);
  if (V <= 4 * N + 4096) {
    // Counting sort: stable, O(N + V).
    const next = new Int32Array(V + 1);
    for (let n = 0; n < N; n++) next[ids[n] + 1]++;
    for (let v = 0; v < V; v++) next[v + 1] += next[v];
    for (let n = 0; n < N; n++) order[next[ids[n]]++] = n;
  } else {
    for (let n = 0; n < N; n++) order[n] = n;
    order.sort((a, b) => ids[a] - ids[b] || a - b);
  }
  return order;
}

/**
 * Rows of weight [V, D] for int32 ids of any shape -> [...ids.shape, D]; hostIds: the ids' values
 * (checked in [0, V) by the caller). The gradient of weight scatter-adds the rows of the output's,
 * each row then multiplied by rowScale[row] when given (0 for a padding row, 1 / count with
 * scaleGradByFreq).
 */
export const embedding = defineFunction<[ids: Tensor, weight: Tensor, hostIds: Int32Array, rowScale: Float64Array | null],
  { saved: Tensor; order: Tensor | null; weightShape: readonly number[]; scale: Tensor | null }>({
  name: 'EmbeddingBackward',
  forward(ctx, ids, weight, hostIds, rowScale) {
    const out = weight._make(native.embeddingForward(ids._h, weight._h), [...ids.shape, weight.shape[1]]);
    if (ctx.needsInputGrad[1]) {
      // Backward reads only the ids: it keeps its own copy, so the caller may
      // dispose or overwrite the ids tensor once forward has run. A GPU also gets
      // their sort order, to add repeated ids' rows in position order as the CPU does.
      const device = weight._device;
      ctx.saved = fromArray(hostIds, ids.shape.slice(), 'int32', device);
      ctx.own(ctx.saved);
      ctx.order = device.type === 'cpu' ? null : fromArray(sortedPositions(hostIds, weight.shape[0]), [hostIds.length], 'int32', device);
      if (ctx.order) ctx.own(ctx.order);
      ctx.weightShape = weight.shape;
      const V = weight.shape[0];
      // A half weight's scales are made from float32 numbers (rounded once natively).
      ctx.scale = rowScale ? fromArray(weight.dtype === 'float64' ? rowScale : Float32Array.from(rowScale), [V, 1], weight.dtype, device) : null;
      if (ctx.scale) ctx.own(ctx.scale);
    }
    return out;
  },
  backward(ctx, g) {
    const { saved, order, weightShape, scale } = ctx;
    let dw = native.embeddingBackward(saved._h, order ? order._h : null, g._h, weightShape[0]);
    if (scale) {
      const scaled = native.binary(BINARY_OP.mul, dw, scale._h);
      native.dispose(dw);
      dw = scaled;
    }
    return [null, g._make(dw, weightShape), null, null];
  },
});

/**
 * torch.embedding_renorm_: each row of weight [V, D] named in `unique` (distinct ids in [0, V))
 * whose normType-norm exceeds maxNorm is scaled in place by maxNorm / (norm + 1e-7), outside
 * autograd. Only the looked-up rows are read; the weight is written only when one changes.
 * Returns whether it was.
 */
export function embeddingRenorm_(weight: Tensor, unique: Int32Array, maxNorm: number, normType: number): boolean {
  const [V, D] = weight.shape;
  const dev = weight._device;
  const idsAll = native.fromArray(unique, [unique.length], dtypeCode('int32'), DEVICE_TYPE[dev.type], dev.index);
  const rowsH = native.embeddingForward(idsAll, weight._h);
  const rows = native.toArray(rowsH);
  native.dispose(rowsH);
  native.dispose(idsAll);
  const f32 = weight.dtype !== 'float64'; // the halves scale in float, as torch's opmath
  const round = f32 ? Math.fround : (v: number) => v;
  const changed: number[] = [];
  const deltas: number[] = [];
  for (let u = 0; u < unique.length; u++) {
    let norm = 0;
    const row = rows.subarray(u * D, (u + 1) * D);
    if (normType === Infinity) for (const v of row) norm = Math.max(norm, Math.abs(v));
    else if (normType === 0) for (const v of row) norm += v !== 0 ? 1 : 0;
    else {
      for (const v of row) norm += Math.abs(v) ** normType;
      norm **= 1 / normType;
    }
    if (!(norm > maxNorm)) continue;
    const scale = round(maxNorm / (norm + 1e-7));
    changed.push(unique[u]);
    // The change of each element, so that weight + delta is the scaled row (exactly while scale >= 1/2).
    for (const v of row) deltas.push(round(v * scale) - v);
  }
  if (!changed.length) return false;
  if (isHalf(weight.dtype)) {
    // A half row cannot take an exact float delta: each changed row is written whole, its
    // values v * scale (in float) rounded once to the half type.
    changed.forEach((id, u) => {
      const row = Float32Array.from(deltas.slice(u * D, (u + 1) * D));
      const old = rows.subarray(unique.indexOf(id) * D, (unique.indexOf(id) + 1) * D);
      for (let d = 0; d < D; d++) row[d] = Math.fround(row[d] + old[d]);
      const t = fromArray(row, [D], weight.dtype, dev);
      native.stridedWrite(weight._h, [D], [1], id * D, t._h);
      t.dispose();
    });
    return true;
  }
  const ids = new Int32Array(changed);
  const mk = (data: Float32Array | Float64Array | Int32Array, shape: number[], dtype: 'int32' | 'float32' | 'float64') =>
    native.fromArray(data, shape, dtypeCode(dtype), DEVICE_TYPE[dev.type], dev.index);
  const idsH = mk(ids, [ids.length], 'int32');
  const orderH = dev.type === 'cpu' ? null : mk(sortedPositions(ids, V), [ids.length], 'int32');
  const deltaH = mk(f32 ? Float32Array.from(deltas) : Float64Array.from(deltas), [ids.length, D], weight.dtype as 'float32');
  // Scattered into a [V, D] of zeros and added: the core has no row write of its own.
  const dense = native.embeddingBackward(idsH, orderH, deltaH, V);
  native.axpy_(weight._h, dense, 1);
  for (const h of [idsH, orderH, deltaH, dense]) if (h) native.dispose(h);
  return true;
}

/**
 * y = weight * (x / sqrt(mean(x², -1) + eps)) over the last dim, weight [D] or null (checked by
 * the caller). Forward keeps the reciprocal RMS of each row for backward.
 */
export const rmsNorm = defineFunction<[x: Tensor, weight: Tensor | null, eps: number], { rstd: NativeTensor }>({
  name: 'RmsNormBackward',
  forward(ctx, x, weight, eps) {
    const [y, rstd] = native.rmsNormForward(x._h, weight ? weight._h : null, eps);
    ctx.own(rstd);
    ctx.rstd = rstd;
    ctx.saveForBackward(x, weight);
    return x._make(y, x.shape);
  },
  backward(ctx, g) {
    const [x, w] = ctx.savedTensors as [Tensor, Tensor | null];
    const grads = native.rmsNormBackward(g._h, x._h, w ? w._h : null, ctx.rstd, ctx.needsInputGrad.slice(0, 2));
    return [...gradsLike(grads, [x, w]), null];
  },
});

/**
 * silu(gate) * up for gate and up of one shape and dtype (checked by the caller): the Llama MLP's
 * gate as one node, saving gate and up (silu(gate) is never kept) and rounding as silu then mul.
 */
export const swiglu = defineFunction<[gate: Tensor, up: Tensor]>({
  name: 'SwiGLUBackward',
  forward(ctx, gate, up) {
    ctx.saveForBackward(gate, up);
    return gate._make(native.swigluForward(gate._h, up._h), gate.shape);
  },
  backward(ctx, g) {
    const [gate, up] = ctx.savedTensors as Tensor[];
    return gradsLike(native.swigluBackward(gate._h, up._h, g._h, ctx.needsInputGrad.slice(0, 2)), [gate, up]);
  },
});

/** x * cos + rotate_half(x) * sin for x [B, H, T, Dh], cos/sin [T, Dh] constants (checked by the caller). */
export const rotary = defineFunction<[x: Tensor, cos: Tensor, sin: Tensor]>({
  name: 'ApplyRotaryBackward',
  forward(ctx, x, cos, sin) {
    ctx.saveForBackward(cos, sin);
    return x._make(native.rotaryForward(x._h, cos._h, sin._h), x.shape);
  },
  backward(ctx, g) {
    const [cos, sin] = ctx.savedTensors as Tensor[];
    return [g._make(native.rotaryBackward(g._h, cos._h, sin._h), g.shape), null, null];
  },
});

/**
 * softmax(scale * q k^T [+ causal mask]) v with grouped KV heads: q [B, Hq, T, Dh],
 * k [B, Hkv, S, Dh], v [B, Hkv, S, Dv] (checked by the caller) -> [B, Hq, T, Dv]; with bthd the
 * same as q [B, T, Hq, Dh], k [B, S, Hkv, Dh], v [B, S, Hkv, Dv] -> [B, T, Hq, Dv]. starts: null
 * or int32 [B, T] (causal only, values in [0, i], checked by the caller): query i of row b sees
 * keys starts[b, i]..i. Forward keeps the row logsumexp (float32 for 16-bit inputs) and the
 * output; backward recomputes the probabilities from them.
 */
export const attention = defineFunction<[q: Tensor, k: Tensor, v: Tensor, causal: boolean, scale: number, starts?: Tensor | null, bthd?: boolean],
  { lse: NativeTensor; causal: boolean; scale: number; bthd: boolean }>({
  name: 'ScaledDotProductAttentionBackward',
  forward(ctx, q, k, v, causal, scale, starts, bthd = false) {
    const [out, lse] = native.attentionForward(q._h, k._h, v._h, causal, scale, starts ? starts._h : null, bthd);
    ctx.own(lse);
    ctx.lse = lse;
    ctx.causal = causal;
    ctx.scale = scale;
    ctx.bthd = bthd;
    const [B, d1, d2] = q.shape;
    const o = q._make(out, [B, d1, d2, v.shape[3]]);
    // The output is read back by backward (D_i = dout_i . out_i), as torch's flash attention saves it.
    ctx.saveForBackward(q, k, v, starts ?? null, o);
    return o;
  },
  backward(ctx, g) {
    const [q, k, v, starts, o] = ctx.savedTensors as [Tensor, Tensor, Tensor, Tensor | null, Tensor];
    const grads = native.attentionBackward(g._h, q._h, k._h, v._h, o._h, ctx.lse, ctx.causal, ctx.scale, ctx.needsInputGrad.slice(0, 3),
      starts ? starts._h : null, ctx.bthd);
    return [...gradsLike(grads, [q, k, v]), null, null, null, null];
  },
});
