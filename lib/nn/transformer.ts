// Transformer building blocks in the Hugging Face Llama layout: token
// embedding, RMSNorm, rotary position embedding ("rotate half") with its
// cos/sin tables, and scaled dot-product attention with grouped KV heads.
// Each op is one fused native call forward and one backward (lib/ops/transformer.ts);
// arguments are checked here first. Also the Embedding and RMSNorm modules.
import { DType, Tensor } from '../tensor';
import { FloatDType, FLOAT_DTYPES } from '../dtype';
import { ones, randn, tensor } from '../creation';
import { assertTensor, requireFloat, requireSame, requireSameDevice } from '../checks';
import { isHalf } from '../dtype';
import { isGradEnabled } from '../autograd';
import { DeviceSpec, parseDevice } from '../device';
import * as ops from '../ops/transformer';
import { Module } from './module';
import { pyFloat, pyValue } from '../printing';
import { checkBool, checkInt, checkKnownKeys, checkNumber, checkOneOf, checkOptions, rangeError, typeError } from '../errors';


const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

/** The multi-index of flat element i of a tensor of `shape`, as "[a, b]" (or "[i]" for 1-D/0-D). */
function multiIndex(shape: readonly number[], i: number): string {
  if (shape.length <= 1) return `[${i}]`;
  const idx: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(i % shape[d]);
    i = Math.floor(i / shape[d]);
  }
  return `[${idx.join(', ')}]`;
}

/** Cos/sin (or any other constant) must not ask for a gradient the op does not give. */
function requireConstant(where: string, t: Tensor, what: string): void {
  if (t.requiresGrad && isGradEnabled()) {
    throw rangeError(where, `${what}.requiresGrad`, `false (${what} is a constant table and gets no gradient; pass ${what}.detach())`, true);
  }
}

// ================================================================ embedding

/** The options torch's F.embedding and nn.Embedding take beyond the ids and weight. */
export interface EmbeddingLookupOptions {
  /** This row (negative from the end) gets no gradient; nn.Embedding also starts it at zeros. */
  paddingIdx?: number | null;
  /** Rows looked up whose normType-norm exceeds maxNorm are scaled down to it in place first. */
  maxNorm?: number | null;
  /** The p of the norm for maxNorm; default 2. */
  normType?: number;
  /** Each row's gradient divided by how often its id occurs in the call's ids. */
  scaleGradByFreq?: boolean;
  /** Sparse gradients: not supported (refused). */
  sparse?: boolean;
}

interface LookupSettings {
  paddingIdx: number | null;
  maxNorm: number | null;
  normType: number;
  scaleGradByFreq: boolean;
}

const LOOKUP_KEYS = ['paddingIdx', 'maxNorm', 'normType', 'scaleGradByFreq', 'sparse'] as const;

/** The lookup options, checked as torch checks them; paddingIdx normalised to [0, V). */
function readLookupOptions(where: string, o: Record<string, unknown>, V: number): LookupSettings {
  let paddingIdx: number | null = null;
  if (o.paddingIdx !== undefined && o.paddingIdx !== null) {
    const p = checkInt(where, 'options.paddingIdx', o.paddingIdx, -(2 ** 53));
    if (p < -V || p >= V) throw rangeError(where, 'options.paddingIdx', `in [${-V}, ${V}) (within numEmbeddings)`, p);
    paddingIdx = p < 0 ? p + V : p;
  }
  let maxNorm: number | null = null;
  if (o.maxNorm !== undefined && o.maxNorm !== null) {
    maxNorm = checkNumber(where, 'options.maxNorm', o.maxNorm);
    if (maxNorm < 0) throw rangeError(where, 'options.maxNorm', 'a number >= 0', maxNorm);
  }
  let normType = 2;
  if (o.normType !== undefined) {
    if (typeof o.normType !== 'number' || Number.isNaN(o.normType)) throw typeError(where, 'options.normType', 'a number (Infinity for the max norm)', o.normType);
    if (o.normType < 0) throw rangeError(where, 'options.normType', 'a number >= 0', o.normType);
    normType = o.normType;
  }
  const scaleGradByFreq = o.scaleGradByFreq === undefined ? false : checkBool(where, 'options.scaleGradByFreq', o.scaleGradByFreq);
  if (o.sparse !== undefined && checkBool(where, 'options.sparse', o.sparse)) {
    throw rangeError(where, 'options.sparse', 'false (sparse gradients are not supported; the weight gets a dense gradient)', true);
  }
  return { paddingIdx, maxNorm, normType, scaleGradByFreq };
}

function embeddingImpl(where: string, ids: unknown, weight: unknown, settings?: LookupSettings): Tensor {
  assertTensor(where, 'ids', ids);
  assertTensor(where, 'weight', weight);
  requireFloat(where, weight, 'weight');
  if (weight.ndim !== 2) throw rangeError(where, 'weight', 'a 2-D tensor [numEmbeddings, embeddingDim]', weight);
  ids._checkLive(where);
  if (ids.dtype !== 'int32') throw typeError(where, 'ids', "an int32 tensor of token ids (tensor(ids, { dtype: 'int32' }))", ids);
  if (ids.device !== weight.device) {
    throw new RangeError(`${where}: ids is on ${ids.device} but weight is on ${weight.device}; move one with .to()`);
  }
  const V = weight.shape[0];
  const flat = ids._int32Values(where);
  for (let i = 0; i < flat.length; i++) {
    const id = flat[i];
    if (id < 0 || id >= V) throw rangeError(where, `ids${multiIndex(ids.shape, i)}`, `in [0, ${V}) (weight.shape[0])`, id);
  }
  if (!settings) return ops.embedding(ids, weight, flat, null);
  const { paddingIdx, maxNorm, normType, scaleGradByFreq } = settings;
  if (maxNorm !== null && flat.length) {
    // torch.embedding_renorm_ on the ids looked up, in place and outside autograd, before the lookup.
    const unique = Int32Array.from(new Set(flat)).sort();
    if (ops.embeddingRenorm_(weight, unique, maxNorm, normType)) weight._bumpVersion();
  }
  let rowScale: Float64Array | null = null;
  if ((paddingIdx !== null || scaleGradByFreq) && weight.requiresGrad && isGradEnabled()) {
    rowScale = new Float64Array(V).fill(1);
    if (scaleGradByFreq) {
      const counts = new Float64Array(V);
      for (let i = 0; i < flat.length; i++) counts[flat[i]]++;
      for (let v = 0; v < V; v++) if (counts[v] > 1) rowScale[v] = 1 / counts[v];
    }
    if (paddingIdx !== null) rowScale[paddingIdx] = 0;
  }
  return ops.embedding(ids, weight, flat, rowScale);
}

/**
 * Looks up rows of weight [V, D] for int32 ids of any shape: returns [...ids.shape, D].
 * The gradient of weight scatter-adds the output gradient's rows (repeated ids add up);
 * ids get none. An id outside [0, V) is a RangeError. Options as torch's F.embedding:
 * paddingIdx (that row gets no gradient), maxNorm and normType (looked-up rows renormalised
 * in place first), scaleGradByFreq; sparse is refused.
 */
export function embedding(ids: Tensor, weight: Tensor, options?: EmbeddingLookupOptions): Tensor {
  const where = 'embedding';
  if (options === undefined) return embeddingImpl(where, ids, weight);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, LOOKUP_KEYS);
  assertTensor(where, 'weight', weight);
  return embeddingImpl(where, ids, weight, readLookupOptions(where, o, weight.ndim === 2 ? weight.shape[0] : 0));
}

// ================================================================== rmsNorm

function rmsNormImpl(where: string, x: unknown, weight: unknown, eps: unknown): Tensor {
  assertTensor(where, 'x', x);
  requireFloat(where, x, 'x');
  if (x.ndim < 1) throw rangeError(where, 'x', 'a tensor with at least 1 dim [..., D]', x);
  const D = x.shape[x.ndim - 1];
  let w: Tensor | null = null;
  if (weight !== null && weight !== undefined) {
    assertTensor(where, 'weight', weight);
    requireFloat(where, weight, 'weight');
    requireSame(where, x, 'x', weight, 'weight');
    if (weight.ndim !== 1 || weight.shape[0] !== D) {
      throw rangeError(where, 'weight', `a 1-D tensor of ${D} elements (x.shape[-1]) or null`, weight);
    }
    w = weight;
  }
  checkNumber(where, 'eps', eps);
  if ((eps as number) < 0) throw rangeError(where, 'eps', 'a number >= 0', eps);
  return ops.rmsNorm(x, w, eps as number);
}

/**
 * RMS normalisation over the last dim, as Hugging Face's LlamaRMSNorm:
 * y = weight * (x / sqrt(mean(x², -1) + eps)), the statistics in double.
 * weight [D] or null (no scaling). Gradients for x and weight, each only when needed.
 */
export function rmsNorm(x: Tensor, weight: Tensor | null = null, eps = 1e-6): Tensor {
  return rmsNormImpl('rmsNorm', x, weight, eps);
}

// =================================================================== rotary

/**
 * Rotary position embedding in the "rotate half" layout of Hugging Face's Llama:
 * out = x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., Dh/2:], x[..., :Dh/2]).
 * x [B, H, T, Dh] (Dh even), cos/sin [T, Dh] (constants: see rotaryTables). Gradient for x only.
 */
export function applyRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const where = 'applyRotary';
  assertTensor(where, 'x', x);
  assertTensor(where, 'cos', cos);
  assertTensor(where, 'sin', sin);
  requireFloat(where, x, 'x');
  requireFloat(where, cos, 'cos');
  requireFloat(where, sin, 'sin');
  // A bfloat16/float16 x also takes float32 tables (transformers computes them in float32).
  if (isHalf(x.dtype) && cos.dtype === 'float32') {
    requireSameDevice(where, x, 'x', cos, 'cos');
    requireSame(where, cos, 'cos', sin, 'sin');
  } else {
    requireSame(where, x, 'x', cos, 'cos');
    requireSame(where, x, 'x', sin, 'sin');
  }
  if (x.ndim !== 4) throw rangeError(where, 'x', 'a 4-D tensor [B, H, T, Dh]', x);
  const T = x.shape[2];
  const Dh = x.shape[3];
  if (Dh % 2 !== 0) throw rangeError(where, 'x.shape[3] (head dim)', 'even (rotate_half splits it into two halves)', Dh);
  for (const [t, name] of [[cos, 'cos'], [sin, 'sin']] as const) {
    if (t.ndim !== 2 || t.shape[0] !== T || t.shape[1] !== Dh) {
      throw rangeError(where, name, `a 2-D tensor of shape ${shapeStr([T, Dh])} ([T, Dh] of x)`, t);
    }
    requireConstant(where, t, name);
  }
  return ops.rotary(x, cos, sin);
}

/** Llama 3 frequency scaling (transformers' rope_type 'llama3'). */
export interface Llama3RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}
/** Linear scaling (transformers' rope_type 'linear'): inv_freq / factor, i.e. positions / factor. */
export interface LinearRopeScaling {
  type: 'linear';
  factor: number;
}
export type RopeScaling = Llama3RopeScaling | LinearRopeScaling;

export interface RotaryTablesOptions {
  /** Base of the frequencies (rope_theta). */
  theta: number;
  /** Frequency scaling (rope_scaling); none by default. */
  scaling?: RopeScaling | null;
  /** dtype of the tables; default 'float32' (a half dtype: the float32 tables rounded once). */
  dtype?: FloatDType;
  /** Position of the first row; default 0. */
  positionOffset?: number;
  /** Where the tables are made; default 'cpu'. */
  device?: DeviceSpec;
}

function checkPositiveNumber(where: string, what: string, v: unknown): number {
  checkNumber(where, what, v);
  if ((v as number) <= 0) throw rangeError(where, what, 'a number > 0', v);
  return v as number;
}

/** inv_freq [headDim / 2] as transformers computes it for Llama (default, 'linear' or 'llama3'). */
function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling | null): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  if (scaling === null) return inv;
  if (scaling.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] /= scaling.factor;
    return inv;
  }
  // _compute_llama3_parameters: long wavelengths are divided by factor, short ones kept,
  // the band between interpolated smoothly.
  const { factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: oldLen } = scaling;
  const lowFreqWavelen = oldLen / low;
  const highFreqWavelen = oldLen / high;
  for (let i = 0; i < half; i++) {
    const f = inv[i];
    const wavelen = (2 * Math.PI) / f;
    const llama = wavelen > lowFreqWavelen ? f / factor : f;
    const smooth = (oldLen / wavelen - low) / (high - low);
    const smoothed = ((1 - smooth) * llama) / factor + smooth * llama;
    const medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    inv[i] = medium ? smoothed : llama;
  }
  return inv;
}

function readScaling(where: string, v: unknown): RopeScaling | null {
  if (v === undefined || v === null) return null;
  const o = checkOptions(where, v);
  const type = checkOneOf(where, 'options.scaling.type', o.type, ['llama3', 'linear'] as const);
  if (type === 'linear') {
    checkKnownKeys(where, o, ['type', 'factor']);
    return { type, factor: checkPositiveNumber(where, 'options.scaling.factor', o.factor) };
  }
  checkKnownKeys(where, o, ['type', 'factor', 'lowFreqFactor', 'highFreqFactor', 'originalMaxPositionEmbeddings']);
  const factor = checkPositiveNumber(where, 'options.scaling.factor', o.factor);
  const lowFreqFactor = checkPositiveNumber(where, 'options.scaling.lowFreqFactor', o.lowFreqFactor);
  const highFreqFactor = checkPositiveNumber(where, 'options.scaling.highFreqFactor', o.highFreqFactor);
  if (highFreqFactor <= lowFreqFactor) {
    throw rangeError(where, 'options.scaling.highFreqFactor', `> options.scaling.lowFreqFactor (${lowFreqFactor})`, highFreqFactor);
  }
  const originalMaxPositionEmbeddings = checkPositiveNumber(where, 'options.scaling.originalMaxPositionEmbeddings', o.originalMaxPositionEmbeddings);
  return { type, factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings };
}

const ROTARY_TABLE_MAX = 2 ** 31 - 1;

/**
 * The cos/sin tables [T, headDim] of rotary position embedding for positions
 * positionOffset .. positionOffset + T - 1, as transformers' Llama builds them:
 * inv_freq_i = 1 / theta^(2i / headDim) (i < headDim / 2), adjusted by `scaling`
 * ('llama3' as _compute_llama3_parameters, 'linear' as inv_freq / factor);
 * emb = concat(freqs, freqs) with freqs = position * inv_freq; cos(emb), sin(emb).
 * Computed in float64, stored in `dtype` (default float32); a half dtype is rounded from the
 * float32 table, as transformers computes the tables in fp32 and casts them to the activations' dtype.
 */
export function rotaryTables(T: number, headDim: number, options: RotaryTablesOptions): { cos: Tensor; sin: Tensor } {
  const where = 'rotaryTables';
  checkInt(where, 'T', T);
  checkInt(where, 'headDim', headDim);
  if (headDim === 0 || headDim % 2 !== 0) throw rangeError(where, 'headDim', 'a positive even integer', headDim);
  // Before allocating: the tables are built in host arrays, whose length JS engines limit.
  const maxT = Math.floor(ROTARY_TABLE_MAX / headDim);
  if (T > maxT) throw rangeError(where, 'T', `at most ${maxT} for headDim ${headDim} (a table [T, headDim] holds at most 2^31 - 1 elements)`, T);
  if (options === undefined) throw typeError(where, 'options', 'an object with at least { theta }', options);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['theta', 'scaling', 'dtype', 'positionOffset', 'device']);
  const theta = checkPositiveNumber(where, 'options.theta', o.theta);
  const scaling = readScaling(where, o.scaling);
  const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
  const offset = o.positionOffset === undefined ? 0 : checkInt(where, 'options.positionOffset', o.positionOffset);

  const inv = ropeInvFreq(headDim, theta, scaling);
  const half = headDim / 2;
  const cos = new Float64Array(T * headDim);
  const sin = new Float64Array(T * headDim);
  for (let t = 0; t < T; t++) {
    const pos = offset + t;
    const row = t * headDim;
    for (let i = 0; i < half; i++) {
      const a = pos * inv[i];
      const c = Math.cos(a);
      const s = Math.sin(a);
      cos[row + i] = c;
      cos[row + half + i] = c;
      sin[row + i] = s;
      sin[row + half + i] = s;
    }
  }
  const shape = [T, headDim];
  return {
    cos: tensor(dtype === 'float64' ? cos : Float32Array.from(cos), { dtype, shape, device: o.device as DeviceSpec | undefined }),
    sin: tensor(dtype === 'float64' ? sin : Float32Array.from(sin), { dtype, shape, device: o.device as DeviceSpec | undefined }),
  };
}

// ================================================================ attention

export interface AttentionOptions {
  /**
   * Query i sees keys 0..i + S - T (needs S >= T). Default true. With S == T that is keys 0..i;
   * with S > T the queries are the last T of S positions (bottom-right aligned, as
   * flash-attention: a decode step over cached keys). torch's is_causal aligns top-left instead,
   * so S > T differs from it; S < T is refused.
   */
  causal?: boolean;
  /** Multiplies q k^T before the softmax. Default 1 / sqrt(Dh). */
  scale?: number;
  /**
   * int32 [B, T], causal only: query i of row b sees keys keyStarts[b][i]..i + S - T
   * (0 <= value <= i + S - T).
   * Expresses padding (a padded query sees itself) and packed documents (each token's document
   * start) without a [T, T] mask; LlamaForCausalLM builds it from attentionMask / positionIds.
   */
  keyStarts?: Tensor;
  /**
   * 'BHTD' (the default): q [B, Hq, T, Dh], k [B, Hkv, S, Dh], v [B, Hkv, S, Dv], output
   * [B, Hq, T, Dv], as torch. 'BTHD': q [B, T, Hq, Dh], k [B, S, Hkv, Dh], v [B, S, Hkv, Dv],
   * output [B, T, Hq, Dv] (flash-attn's layout): what a linear projection gives after a reshape,
   * so no transposed copies on the way in or out.
   */
  layout?: 'BHTD' | 'BTHD';
}

/**
 * softmax(scale * q k^T [+ causal mask]) v with grouped KV heads:
 * q [B, Hq, T, Dh], k [B, Hkv, S, Dh], v [B, Hkv, S, Dv] (Dv is usually Dh) -> [B, Hq, T, Dv],
 * or with options.layout 'BTHD' the same as [B, T, H, D] tensors.
 * Hq must be a multiple of Hkv; query head h reads kv head floor(h / (Hq / Hkv)), as
 * transformers' repeat_kv. Causal masking (the default) needs S >= T (bottom-right aligned). The softmax is
 * max-subtracted; forward keeps only the row logsumexp [B, Hq, T] and backward recomputes
 * the probabilities from it. Gradients for q, k and v, each only when needed. float32, float64,
 * bfloat16 and float16 (float arithmetic inside; on CUDA, tensor cores for the 16-bit types).
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, options?: AttentionOptions): Tensor {
  const where = 'scaledDotProductAttention';
  assertTensor(where, 'q', q);
  assertTensor(where, 'k', k);
  assertTensor(where, 'v', v);
  requireFloat(where, q, 'q');
  requireFloat(where, k, 'k');
  requireFloat(where, v, 'v');
  requireSame(where, q, 'q', k, 'k');
  requireSame(where, q, 'q', v, 'v');
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['causal', 'scale', 'keyStarts', 'layout']);
  if (o.layout !== undefined && o.layout !== 'BHTD' && o.layout !== 'BTHD') {
    throw rangeError(where, 'options.layout', "'BHTD' or 'BTHD'", o.layout);
  }
  const bthd = o.layout === 'BTHD';
  // Dims of the heads (h) and of the length (t) in the layout.
  const h = bthd ? 2 : 1;
  const t = bthd ? 1 : 2;
  const name = bthd ? ['B, T, Hq, Dh', 'B, S, Hkv, Dh', 'B, S, Hkv, Dv'] : ['B, Hq, T, Dh', 'B, Hkv, S, Dh', 'B, Hkv, S, Dv'];
  if (q.ndim !== 4) throw rangeError(where, 'q', `a 4-D tensor [${name[0]}]`, q);
  if (k.ndim !== 4) throw rangeError(where, 'k', `a 4-D tensor [${name[1]}]`, k);
  if (v.ndim !== 4) throw rangeError(where, 'v', `a 4-D tensor [${name[2]}]`, v);
  const [B, Dh] = [q.shape[0], q.shape[3]];
  const Hq = q.shape[h];
  const T = q.shape[t];
  const [Bk, Dk] = [k.shape[0], k.shape[3]];
  const Hkv = k.shape[h];
  const S = k.shape[t];
  if (Bk !== B) throw rangeError(where, 'k.shape[0] (batch)', `${B} (q.shape[0])`, Bk);
  if (Dk !== Dh) throw rangeError(where, 'k.shape[3] (head dim)', `${Dh} (q.shape[3])`, Dk);
  if (v.shape[0] !== B || v.shape[h] !== Hkv || v.shape[t] !== S) {
    throw rangeError(where, 'v.shape', bthd ? `[${B}, ${S}, ${Hkv}, Dv] (k's batch, length and heads)` : `[${B}, ${Hkv}, ${S}, Dv] (k's batch, heads and length)`, v.shape);
  }
  if (Hkv === 0) throw rangeError(where, `k.shape[${h}] (kv heads)`, 'at least 1', Hkv);
  if (Hq % Hkv !== 0) throw rangeError(where, `q.shape[${h}] (query heads)`, `a multiple of k.shape[${h}] (${Hkv} kv heads)`, Hq);
  const causal = o.causal === undefined ? true : checkBool(where, 'options.causal', o.causal);
  const scale = o.scale === undefined ? (Dh > 0 ? 1 / Math.sqrt(Dh) : 1) : checkNumber(where, 'options.scale', o.scale);
  if (causal && S < T) {
    throw rangeError(where, `k.shape[${t}] (key length)`, `at least ${T} (q.shape[${t}]) with causal masking (or pass { causal: false })`, S);
  }
  const starts = o.keyStarts === undefined ? null : checkKeyStarts(where, o.keyStarts, B, T, q, causal, S - T);
  return ops.attention(q, k, v, causal, scale, starts, bthd);
}

/** options.keyStarts: an int32 tensor [B, T] on q's device, causal, each value in [0, i]. */
function checkKeyStarts(where: string, st: unknown, B: number, T: number, q: Tensor, causal: boolean, off: number): Tensor {
  if (!(st instanceof Tensor)) throw typeError(where, 'options.keyStarts', `an int32 tensor [${B}, ${T}]`, st);
  st._checkLive(where, 'options.keyStarts');
  if (st.dtype !== 'int32' || st.ndim !== 2 || st.shape[0] !== B || st.shape[1] !== T) {
    throw rangeError(where, 'options.keyStarts', `an int32 tensor of shape ${shapeStr([B, T])} ([B, T] of q)`, st);
  }
  requireSameDevice(where, st, 'options.keyStarts', q, 'q');
  if (!causal) throw rangeError(where, 'options.causal', 'true with options.keyStarts', false);
  const flat = st._int32Values(where);
  for (let n = 0; n < flat.length; n++) {
    const i = (n % T) + off;
    if (flat[n] < 0 || flat[n] > i) throw rangeError(where, `options.keyStarts${multiIndex([B, T], n)}`, `a key index in [0, ${i}] (at most the query's own position)`, flat[n]);
  }
  return st;
}

// ================================================================== modules

export interface EmbeddingOptions extends EmbeddingLookupOptions {
  dtype?: FloatDType;
  device?: DeviceSpec;
}

/**
 * A lookup table: weight [numEmbeddings, embeddingDim], initialised N(0, 1) as torch.nn.Embedding,
 * the paddingIdx row (if any) at zeros. Options as torch's: paddingIdx, maxNorm, normType,
 * scaleGradByFreq (sparse is refused).
 */
export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  /** The row that gets no gradient (normalised to [0, numEmbeddings)), or null. */
  readonly paddingIdx: number | null;
  readonly maxNorm: number | null;
  readonly normType: number;
  readonly scaleGradByFreq: boolean;
  weight: Tensor;

  constructor(numEmbeddings: number, embeddingDim: number, options?: EmbeddingOptions) {
    super();
    const where = 'Embedding';
    checkInt(where, 'numEmbeddings', numEmbeddings);
    checkInt(where, 'embeddingDim', embeddingDim);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['dtype', 'device', ...LOOKUP_KEYS]);
    const dtype: DType = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    parseDevice(where, 'options.device', o.device);
    const s = readLookupOptions(where, o, numEmbeddings);
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    this.paddingIdx = s.paddingIdx;
    this.maxNorm = s.maxNorm;
    this.normType = s.normType;
    this.scaleGradByFreq = s.scaleGradByFreq;
    this.weight = randn([numEmbeddings, embeddingDim], { dtype, device: o.device as DeviceSpec | undefined });
    if (s.paddingIdx !== null) {
      const rows = this.weight.toArray();
      rows.fill(0, s.paddingIdx * embeddingDim, (s.paddingIdx + 1) * embeddingDim);
      this.weight.copy_(rows);
    }
    this.weight.requiresGrad_(true);
  }

  /** ids: int32 of any shape -> [...ids.shape, embeddingDim]. */
  forward(ids: Tensor): Tensor {
    const { paddingIdx, maxNorm, normType, scaleGradByFreq } = this;
    const plain = paddingIdx === null && maxNorm === null && !scaleGradByFreq;
    return embeddingImpl('Embedding.forward', ids, this.weight, plain ? undefined : { paddingIdx, maxNorm, normType, scaleGradByFreq });
  }

  extraRepr(): string {
    // torch's extra_repr: the settings that differ from the defaults.
    let s = `${this.numEmbeddings}, ${this.embeddingDim}`;
    if (this.paddingIdx !== null) s += `, padding_idx=${this.paddingIdx}`;
    if (this.maxNorm !== null) s += `, max_norm=${pyFloat(this.maxNorm)}`;
    if (this.normType !== 2) s += `, norm_type=${pyFloat(this.normType)}`;
    if (this.scaleGradByFreq) s += ', scale_grad_by_freq=True';
    return s;
  }
}

export interface RMSNormOptions {
  /** Added to the mean square; default 1e-6 (LlamaRMSNorm's default). */
  eps?: number;
  dtype?: FloatDType;
  device?: DeviceSpec;
}

/** LlamaRMSNorm: weight [dim] starts at ones; normalises over the last dim. */
export class RMSNorm extends Module {
  readonly dim: number;
  readonly eps: number;
  weight: Tensor;

  constructor(dim: number, options?: RMSNormOptions) {
    super();
    const where = 'RMSNorm';
    checkInt(where, 'dim', dim);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['eps', 'dtype', 'device']);
    const eps = o.eps === undefined ? 1e-6 : checkNumber(where, 'options.eps', o.eps);
    if (eps < 0) throw rangeError(where, 'options.eps', 'a number >= 0', eps);
    const dtype: DType = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    parseDevice(where, 'options.device', o.device);
    this.dim = dim;
    this.eps = eps;
    this.weight = ones([dim], { dtype, device: o.device as DeviceSpec | undefined }).requiresGrad_(true);
  }

  /** x [..., dim] -> same shape. */
  forward(x: Tensor): Tensor {
    const where = 'RMSNorm.forward';
    assertTensor(where, 'x', x);
    requireFloat(where, x, 'x');
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== this.dim) {
      throw rangeError(where, 'x.shape[-1]', `${this.dim} (dim)`, x.ndim < 1 ? x : x.shape[x.ndim - 1]);
    }
    return rmsNormImpl(where, x, this.weight, this.eps);
  }

  extraRepr(): string {
    // As transformers' LlamaRMSNorm: the weight's shape and eps in Python's notation.
    return `${pyValue([this.dim])}, eps=${pyFloat(this.eps)}`;
  }
}
