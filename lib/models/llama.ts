// The Llama family (Llama 2/3, Mistral, Qwen2/2.5, SmolLM, TinyLlama) as a
// module tree with Hugging Face's parameter names, so checkpoints load by name
// and injectLora(model, { targetModules: ['q_proj', 'v_proj'] }) works as on
// any tree. Attention, RMSNorm, rotary embeddings and the embedding lookup are
// fused native ops with fused backward passes.
import * as fs from 'fs';
import * as path from 'path';
import { Module } from '../nn/module';
import { Linear, ModuleList } from '../nn/layers';
import * as F from '../nn/functional';
import {
  Embedding, RMSNorm, RopeScaling, applyRotary, rotaryTables, scaledDotProductAttention,
} from '../nn/transformer';
import { Tensor, DType } from '../tensor';
import { FloatDType, FLOAT_DTYPES, isHalf } from '../dtype';
import { rand, randn, tensor, zeros } from '../creation';
import { writeAlong_ } from '../ops/views';
import { linearCrossEntropy } from '../ops/loss';
import { checkLinearWeights } from '../checks';
import { tidy } from '../scope';
import { isGradEnabled, noGrad, releaseIntermediate } from '../autograd';
import { checkpoint } from '../checkpoint';
import { DeviceSpec } from '../device';
import { SafetensorsFile } from '../safetensors';
import { READ_LIMITS, pathExists, readJsonFile } from '../fsio';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, checkKnownKeys, describe, rangeError, typeError } from '../errors';

/** A parsed config.json of a supported architecture. */
export interface LlamaConfig {
  modelType: 'llama' | 'mistral' | 'qwen2';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  /** Mistral's (and Qwen2's, when enabled) attention window; longer sequences are refused. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  /** Biases on q/k/v (Qwen2, or Llama's attention_bias), and on o (Llama's attention_bias only). */
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  initializerRange: number;
  /** The config.json object as read, written back by saveMerged. */
  raw: Record<string, unknown>;
}

const ARCHITECTURES: Record<string, LlamaConfig['modelType']> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

/** Reads a Hugging Face config.json object; says clearly what it cannot handle. */
export function parseLlamaConfig(raw: unknown, where = 'parseLlamaConfig'): LlamaConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw typeError(where, 'config', 'a config.json object', raw);
  const c = raw as Record<string, unknown>;
  // Only strings name architectures; own keys only ("constructor" is no architecture).
  const archs = Array.isArray(c.architectures) ? (c.architectures as unknown[]).filter((a): a is string => typeof a === 'string') : [];
  const mt = typeof c.model_type === 'string' ? c.model_type : undefined;
  const supported = Object.keys(ARCHITECTURES).join(', ');
  let modelType: LlamaConfig['modelType'] | undefined = archs.map((a) => (Object.hasOwn(ARCHITECTURES, a) ? ARCHITECTURES[a] : undefined)).find(Boolean);
  if (!modelType && mt && (['llama', 'mistral', 'qwen2'] as const).includes(mt as 'llama')) modelType = mt as LlamaConfig['modelType'];
  if (!modelType) {
    const named = archs.length ? archs.slice(0, 4).map((a) => (a.length > 100 ? `${a.slice(0, 100)}…` : a)).join(', ') : describe(mt);
    throw new RangeError(`${where}: unsupported architecture ${named}; supported: ${supported} (model_type llama, mistral, qwen2)`);
  }
  // Sizes must be exact: above 2^53 a number is no longer an exact integer.
  const int = (key: string, dflt?: number): number => {
    const v = c[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw rangeError(where, `config.${key}`, 'a positive integer (at most 2^53 - 1)', v);
    return v;
  };
  const num = (key: string, dflt: number): number => {
    const v = c[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw rangeError(where, `config.${key}`, 'a positive number', v);
    return v;
  };
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') throw rangeError(where, 'config.hidden_act', '"silu"', act);
  const hiddenSize = int('hidden_size');
  const numAttentionHeads = int('num_attention_heads');
  const numKeyValueHeads = int('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw rangeError(where, 'config.num_key_value_heads', `a divisor of num_attention_heads (${numAttentionHeads})`, numKeyValueHeads);
  }
  const headDim = c.head_dim == null ? hiddenSize / numAttentionHeads : int('head_dim');
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw rangeError(where, 'head dim', 'an even integer (hidden_size / num_attention_heads or config.head_dim)', headDim);
  }
  let ropeScaling: RopeScaling | null = null;
  if (c.rope_scaling != null) {
    if (typeof c.rope_scaling !== 'object' || Array.isArray(c.rope_scaling)) throw rangeError(where, 'config.rope_scaling', 'an object or null', c.rope_scaling);
    const rs = c.rope_scaling as Record<string, unknown>;
    const type = rs.rope_type ?? rs.type;
    // Numbers only: Number('8') or Number([8]) would let a malformed config through.
    const asNumber = (v: unknown): number => (typeof v === 'number' ? v : NaN);
    if (type === 'llama3') {
      ropeScaling = {
        type: 'llama3',
        factor: asNumber(rs.factor),
        lowFreqFactor: asNumber(rs.low_freq_factor),
        highFreqFactor: asNumber(rs.high_freq_factor),
        originalMaxPositionEmbeddings: asNumber(rs.original_max_position_embeddings),
      };
      if (!Object.values(ropeScaling).slice(1).every((v) => Number.isFinite(v) && (v as number) > 0)) {
        throw rangeError(where, 'config.rope_scaling', 'llama3 scaling with positive factor, low_freq_factor, high_freq_factor, original_max_position_embeddings', rs);
      }
    } else if (type === 'linear') {
      ropeScaling = { type: 'linear', factor: asNumber(rs.factor) };
      if (!(Number.isFinite(ropeScaling.factor) && ropeScaling.factor > 0)) throw rangeError(where, 'config.rope_scaling.factor', 'a positive number', rs.factor);
    } else if (type !== 'default') {
      throw rangeError(where, 'config.rope_scaling.rope_type', '"llama3", "linear" or "default" (others are not supported)', type);
    }
  }
  const attentionBias = c.attention_bias === true;
  const window = modelType === 'mistral' || (modelType === 'qwen2' && c.use_sliding_window === true) ? c.sliding_window : null;
  if (window != null && (typeof window !== 'number' || !Number.isSafeInteger(window) || window <= 0)) {
    throw rangeError(where, 'config.sliding_window', 'a positive integer or null', window);
  }
  return {
    modelType,
    vocabSize: int('vocab_size'),
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numHiddenLayers: int('num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    ropeScaling,
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    slidingWindow: (window as number | null | undefined) ?? null,
    tieWordEmbeddings: c.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' || attentionBias,
    oBias: modelType !== 'qwen2' && attentionBias,
    mlpBias: c.mlp_bias === true,
    initializerRange: num('initializer_range', 0.02),
    raw: { ...c },
  };
}

interface BuildOptions {
  dtype: FloatDType;
  device?: DeviceSpec;
}

export class LlamaAttention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;

  constructor(readonly config: LlamaConfig, o: BuildOptions) {
    super();
    const { hiddenSize: D, numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: hd } = config;
    this.q_proj = new Linear(D, H * hd, { bias: config.qkvBias, ...o });
    this.k_proj = new Linear(D, Hkv * hd, { bias: config.qkvBias, ...o });
    this.v_proj = new Linear(D, Hkv * hd, { bias: config.qkvBias, ...o });
    this.o_proj = new Linear(H * hd, D, { bias: config.oBias, ...o });
  }

  /**
   * x [B, T, D] -> [B, T, D], causal, with rotary tables cos/sin [T, headDim] (shared by the
   * rows) or, with layout.perToken, [B * T, headDim] (row b * T + t: the position of token t of
   * row b); layout.keyStarts (int32 [B, T]): the first key each query sees (padding, packing).
   * With a cache (generation) the T tokens follow its `length` cached positions: their keys and
   * values are written there and the queries attend over all of them.
   */
  forward(x: Tensor, cos: Tensor, sin: Tensor, layout?: BatchLayout, cache?: LayerCache): Tensor {
    const [B, T] = x.shape;
    const { numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: hd } = this.config;
    // The projections stay [B, T, heads, hd] (reshapes share storage) and attention reads that
    // layout ('BTHD'), so no transposed copies. Rotary runs over rows (token, head) against
    // tables whose rows repeat per head: [L * n, hd] for tables of L rows (T shared positions,
    // or B * T per-token ones).
    // Each intermediate is freed as soon as it has been read (at once, or when the last node that
    // kept it for backward goes): projections before rotary, the attention's inputs and output.
    // Never x itself: it belongs to the caller.
    const done = (...ts: Tensor[]) => releaseIntermediate(...ts.filter((t) => t._store !== x._store));
    const rope = (t: Tensor, n: number) => {
      const [c, s] = headTables(cos, sin, n);
      const r = applyRotary(t.reshape(-1, 1, c.shape[0], hd), c, s).reshape(B, T, n, hd);
      done(t);
      return r;
    };
    const q = rope(this.q_proj.forward(x), H);
    let k = rope(this.k_proj.forward(x), Hkv);
    let v = this.v_proj.forward(x).reshape(B, T, Hkv, hd);
    if (cache) {
      // This step's keys and values go into the preallocated cache at its fill mark; the
      // queries then see every key so far (causal with S > T aligns them bottom-right).
      writeAlong_(cache.k, k, 1, cache.length);
      writeAlong_(cache.v, v, 1, cache.length);
      done(k, v);
      const S = cache.length + T;
      k = S === cache.k.shape[1] ? cache.k : cache.k.narrow(1, 0, S);
      v = S === cache.v.shape[1] ? cache.v : cache.v.narrow(1, 0, S);
    }
    const o = scaledDotProductAttention(q, k, v, layout?.keyStarts
      ? { causal: true, keyStarts: layout.keyStarts, layout: 'BTHD' }
      : { causal: true, layout: 'BTHD' });
    done(q);
    if (!cache) done(k, v);
    const y = this.o_proj.forward(o.reshape(B, T, H * hd));
    done(o);
    return y;
  }
}

export class LlamaMLP extends Module {
  gate_proj: Linear;
  up_proj: Linear;
  down_proj: Linear;

  constructor(config: LlamaConfig, o: BuildOptions) {
    super();
    const { hiddenSize: D, intermediateSize: I } = config;
    this.gate_proj = new Linear(D, I, { bias: config.mlpBias, ...o });
    this.up_proj = new Linear(D, I, { bias: config.mlpBias, ...o });
    this.down_proj = new Linear(I, D, { bias: config.mlpBias, ...o });
  }

  forward(x: Tensor): Tensor {
    // Intermediates freed once read, as in LlamaAttention.forward.
    const done = (...ts: Tensor[]) => releaseIntermediate(...ts.filter((t) => t._store !== x._store));
    const g = this.gate_proj.forward(x);
    const u = this.up_proj.forward(x);
    const p = F.swiglu(g, u); // silu(g) * u as one op: silu(g) is never stored
    done(g, u);
    const y = this.down_proj.forward(p);
    done(p);
    return y;
  }
}

export class LlamaDecoderLayer extends Module {
  self_attn: LlamaAttention;
  mlp: LlamaMLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;

  constructor(config: LlamaConfig, o: BuildOptions) {
    super();
    this.self_attn = new LlamaAttention(config, o);
    this.mlp = new LlamaMLP(config, o);
    this.input_layernorm = new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: o.dtype, device: o.device });
    this.post_attention_layernorm = new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: o.dtype, device: o.device });
  }

  forward(x: Tensor, cos: Tensor, sin: Tensor, layout?: BatchLayout, cache?: LayerCache): Tensor {
    // Intermediates freed once read, as in LlamaAttention.forward; x belongs to the caller.
    const done = (...ts: Tensor[]) => releaseIntermediate(...ts.filter((t) => t._store !== x._store));
    const n1 = this.input_layernorm.forward(x);
    const a = this.self_attn.forward(n1, cos, sin, layout, cache);
    done(n1);
    const h = x.add(a);
    done(a);
    const n2 = this.post_attention_layernorm.forward(h);
    const m = this.mlp.forward(n2);
    done(n2);
    const y = h.add(m);
    done(h, m);
    return y;
  }
}

export class LlamaModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList<LlamaDecoderLayer>;
  norm: RMSNorm;
  /**
   * cos/sin of every position below `rows`, in float64: computed once for the longest sequence so
   * far (grown, at least doubling, when a longer one comes). A row depends on its position only, so
   * the first T rows are bit for bit the tables rotaryTables(T, ...) makes.
   */
  private _ropeHost: { rows: number; cos: Float64Array; sin: Float64Array } | null = null;
  /**
   * The tables of the last call, reused while the length, dtype and device stay (a training run
   * repeats one length). Not kept: like any intermediate they belong to the caller's tidy() scope
   * or to the garbage collector, so a model that sees many lengths holds one pair at most.
   */
  private _rope: { T: number; cos: Tensor; sin: Tensor } | null = null;
  /**
   * Whether a training forward keeps only each decoder layer's input and recomputes the layer in
   * backward (transformers' gradient_checkpointing; set by LlamaForCausalLM.gradientCheckpointingEnable).
   */
  gradientCheckpointing = false;

  constructor(readonly config: LlamaConfig, o: BuildOptions) {
    super();
    this.embed_tokens = new Embedding(config.vocabSize, config.hiddenSize, { dtype: o.dtype, device: o.device });
    this.layers = new ModuleList(Array.from({ length: config.numHiddenLayers }, () => new LlamaDecoderLayer(config, o)));
    this.norm = new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: o.dtype, device: o.device });
  }

  /** The host tables, grown to hold at least `T` positions. */
  private ropeHost(T: number): { rows: number; cos: Float64Array; sin: Float64Array } {
    const c = this.config;
    const D = c.headDim;
    let host = this._ropeHost;
    if (!host || host.rows < T) {
      const rows = Math.max(T, Math.min(2 * (host?.rows ?? 0), c.maxPositionEmbeddings));
      const t = rotaryTables(rows, D, { theta: c.ropeTheta, scaling: c.ropeScaling, dtype: 'float64' });
      try {
        host = { rows, cos: t.cos.toArray() as Float64Array, sin: t.sin.toArray() as Float64Array };
      } finally {
        t.cos.dispose();
        t.sin.dispose();
      }
      this._ropeHost = host;
    }
    return host;
  }

  private rope(T: number, dtype: DType, device: string): { cos: Tensor; sin: Tensor } {
    const r = this._rope;
    if (r && r.T === T && r.cos.dtype === dtype && r.cos.device === device && !r.cos.isDisposed && !r.sin.isDisposed) return r;
    const D = this.config.headDim;
    const host = this.ropeHost(T);
    // The first T rows, converted as rotaryTables converts (float64 -> dtype).
    const rows = (a: Float64Array) => (dtype === 'float64' ? a.slice(0, T * D) : Float32Array.from(a.subarray(0, T * D)));
    const opts = { dtype: dtype as 'float32', shape: [T, D], device: device as DeviceSpec };
    const next = { T, cos: tensor(rows(host.cos), opts), sin: tensor(rows(host.sin), opts) };
    this._rope = next;
    return next;
  }

  /**
   * Rotary tables [B * T, headDim] for per-token positions (int32 [B * T], each in
   * [0, max_position_embeddings)): row b * T + t holds the table row of positions[b * T + t].
   */
  private ropeAt(positions: Int32Array, dtype: DType, device: string): { cos: Tensor; sin: Tensor } {
    const D = this.config.headDim;
    let top = 0;
    for (let n = 0; n < positions.length; n++) top = Math.max(top, positions[n]);
    const host = this.ropeHost(top + 1);
    const gather = (a: Float64Array) => {
      const out = dtype === 'float64' ? new Float64Array(positions.length * D) : new Float32Array(positions.length * D);
      for (let n = 0; n < positions.length; n++) out.set(a.subarray(positions[n] * D, positions[n] * D + D), n * D);
      return out;
    };
    const opts = { dtype: dtype as 'float32', shape: [positions.length, D], device: device as DeviceSpec };
    return { cos: tensor(gather(host.cos), opts), sin: tensor(gather(host.sin), opts) };
  }

  /**
   * ids int32 [B, T] -> hidden states [B, T, D] after the final norm. layout (from
   * batchLayout(): attention mask, position ids, packed documents): per-token positions and
   * the first key each query sees; without it every row holds one sequence at positions 0..T-1.
   * cache: the keys and values of the positions before these T (layout's starts and positions
   * then index the whole cached sequence); this step's are written into it.
   */
  forward(ids: Tensor, layout?: HostLayout, cache?: KVCache): Tensor {
    let x = this.embed_tokens.forward(ids);
    let cos: Tensor;
    let sin: Tensor;
    let dev: BatchLayout | undefined;
    if (layout && layout.positions) {
      ({ cos, sin } = this.ropeAt(layout.positions, x.dtype, x.device));
    } else {
      ({ cos, sin } = this.rope(ids.shape[1], x.dtype, x.device));
    }
    if (layout && (layout.positions || layout.starts)) {
      const keyStarts = layout.starts ? tensor(layout.starts, { dtype: 'int32', shape: [...ids.shape], device: x.device as DeviceSpec }) : undefined;
      dev = { perToken: layout.positions !== null, keyStarts };
    }
    let i = 0;
    // As transformers: checkpointed layers only while training with a graph (never with a cache).
    const ckpt = this.gradientCheckpointing && this.training && isGradEnabled() && !cache;
    for (const layer of this.layers) {
      const y = ckpt
        ? checkpoint((h) => layer.forward(h, cos, sin, dev), x, layer.parameters(), [cos, sin, dev?.keyStarts])
        : layer.forward(x, cos, sin, dev, cache?.layers[i++]);
      // Each layer's input is freed once no node needs it (with checkpointing: after its backward).
      if (y._store !== x._store) releaseIntermediate(x);
      x = y;
    }
    if (cache) {
      for (const c of cache.layers) c.length += ids.shape[1];
    }
    const out = this.norm.forward(x);
    if (out._store !== x._store) releaseIntermediate(x);
    releaseIntermediate(dev?.keyStarts);
    return out;
  }
}

/**
 * Rotary tables with each row repeated n times ([L, hd] -> [L * n, hd]: row l * n + h is row l),
 * for rows that run over (position, head). Made once per table and head count (every layer
 * shares them), again after the table was disposed.
 */
const headTableCache = new WeakMap<Tensor, Map<number, Tensor>>();
function headTable(t: Tensor, n: number): Tensor {
  if (n === 1) return t;
  let m = headTableCache.get(t);
  if (!m) headTableCache.set(t, (m = new Map()));
  const hit = m.get(n);
  if (hit && !hit.isDisposed) return hit;
  const [L, D] = t.shape;
  const r = t.reshape(L, 1, D).expand(L, n, D).reshape(L * n, D);
  m.set(n, r);
  return r;
}
function headTables(cos: Tensor, sin: Tensor, n: number): [Tensor, Tensor] {
  return [headTable(cos, n), headTable(sin, n)];
}

/** The keys and values of one attention layer, [B, maxLength, Hkv, headDim], filled to `length`. */
interface LayerCache {
  k: Tensor;
  v: Tensor;
  length: number;
}

/**
 * A key/value cache for generate(): per layer, keys and values (after rotary) preallocated to the
 * longest sequence in the model's dtype and on its device, written in place step by step.
 */
class KVCache {
  readonly layers: LayerCache[];

  constructor(config: LlamaConfig, B: number, maxLength: number, dtype: DType, device: string) {
    const shape = [B, maxLength, config.numKeyValueHeads, config.headDim];
    const opts = { dtype: dtype as 'float32', device: device as DeviceSpec };
    this.layers = [];
    try {
      for (let i = 0; i < config.numHiddenLayers; i++) this.layers.push({ k: zeros(shape, opts), v: zeros(shape, opts), length: 0 });
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  dispose(): void {
    for (const c of this.layers) {
      c.k.dispose();
      c.v.dispose();
    }
  }
}

/** Options of LlamaForCausalLM.generate (the names and defaults of transformers' generate). */
export interface GenerateOptions {
  /** Tokens to add to each row at most. Default 20. */
  maxNewTokens?: number;
  /** Sample from the distribution (true) or take the most likely token (false, the default). */
  doSample?: boolean;
  /** Divides the logits before sampling (> 0). Default 1. */
  temperature?: number;
  /** Sample among the k most likely tokens only; 0 = all. Default 50. */
  topK?: number;
  /** Sample among the most likely tokens whose probabilities add up to topP, in (0, 1]. Default 1. */
  topP?: number;
  /** A row ends after one of these tokens. Default: config.json's eos_token_id; null = never. */
  eosTokenId?: number | number[] | null;
  /** The token of finished rows (and of the left padding added to shorter rows). Default: config.json's pad_token_id, else the first eosTokenId, else 0. */
  padTokenId?: number;
  /** With rows of equal length: 1 = token, 0 = padding (left padding only), as transformers. */
  attentionMask?: number[][];
  /** Keep keys and values between steps (default true); false reruns the whole sequence each step. */
  useCache?: boolean;
  /** Called after every step with each row's new token (null for a row already finished) and the step number. */
  onToken?: (tokens: (number | null)[], step: number) => void;
  /** A row ends at the token that completes one of these strings in its new text (needs decode). */
  stopStrings?: string[];
  /** Token ids -> text (e.g. ids => tokenizer.decode(ids)), for stopStrings. */
  decode?: (ids: number[]) => string;
}

export interface FromPretrainedOptions {
  /**
   * The dtype the weights are stored in: a float dtype, or 'auto' for config.json's torch_dtype
   * (else the dtype of the checkpoint's first float tensor), as transformers' torch_dtype="auto".
   * Default 'float32', as transformers without torch_dtype.
   */
  dtype?: FloatDType | 'auto';
  device?: DeviceSpec;
}

/** The dtypes a model's weights can be loaded in. */
export const MODEL_DTYPES: readonly (FloatDType | 'auto')[] = Object.freeze(['auto', ...FLOAT_DTYPES]);

/** transformers' names of the torch dtypes (config.json's torch_dtype), and the checkpoint's. */
const TORCH_DTYPES: Readonly<Record<string, FloatDType>> = {
  float32: 'float32', float: 'float32', float64: 'float64', double: 'float64',
  bfloat16: 'bfloat16', float16: 'float16', half: 'float16',
};
const STORED_DTYPES: Readonly<Record<string, FloatDType>> = { F32: 'float32', F64: 'float64', BF16: 'bfloat16', F16: 'float16' };

/**
 * The dtype of 'auto': config.json's torch_dtype (newer configs call it dtype), else the dtype of
 * the first float tensor in the checkpoint (transformers' get_state_dict_dtype); float32 without either.
 */
function autoDtype(where: string, configPath: string, raw: Record<string, unknown>, first: () => string | undefined): FloatDType {
  const key = raw.torch_dtype != null ? 'torch_dtype' : 'dtype';
  const v = raw[key];
  if (v != null && v !== 'auto') {
    const name = typeof v === 'string' ? v.replace(/^torch\./, '') : v;
    if (typeof name !== 'string' || !Object.hasOwn(TORCH_DTYPES, name)) {
      throw rangeError(where, `${configPath}: ${key}`, `one of "bfloat16", "float16", "float32", "float64" for dtype 'auto' (or pass an explicit options.dtype)`, v);
    }
    return TORCH_DTYPES[name];
  }
  const stored = first();
  return stored !== undefined && Object.hasOwn(STORED_DTYPES, stored) ? STORED_DTYPES[stored] : 'float32';
}

export class LlamaForCausalLM extends Module {
  model: LlamaModel;
  lm_head: Linear;
  readonly config: LlamaConfig;

  /**
   * A model with freshly initialised weights (normal with std
   * initializer_range, as transformers does); fromPretrained() loads a checkpoint.
   */
  constructor(config: LlamaConfig | Record<string, unknown>, options?: FromPretrainedOptions & { init?: boolean }) {
    super();
    const where = 'LlamaForCausalLM';
    const cfg = isParsed(config) ? config : parseLlamaConfig(config, where);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['dtype', 'device', 'init']);
    const dtype = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, FLOAT_DTYPES);
    const build: BuildOptions = { dtype, device: o.device as DeviceSpec | undefined };
    this.config = cfg;
    this.model = new LlamaModel(cfg, build);
    this.lm_head = new Linear(cfg.hiddenSize, cfg.vocabSize, { bias: false, ...build });
    if (cfg.tieWordEmbeddings) this.lm_head.weight = this.model.embed_tokens.weight;
    if (o.init !== false) this.initWeights();
  }

  private initWeights(): void {
    const std = this.config.initializerRange;
    noGrad(() => {
      for (const m of this.modules()) {
        if (m instanceof Linear) {
          m.weight.copy_(randn([...m.weight.shape], { std, dtype: m.weight.dtype as 'float32' }));
          m.bias?.zero_();
        } else if (m instanceof Embedding) {
          m.weight.copy_(randn([...m.weight.shape], { std, dtype: m.weight.dtype as 'float32' }));
        }
      }
    });
  }

  /**
   * Activation checkpointing per decoder layer, as transformers' gradient_checkpointing_enable: in
   * training mode with grad enabled, each layer keeps only its input during forward and runs again
   * in backward, with the same dropout masks (the random state is replayed), so the gradients are
   * bit for bit those without it, for about one more forward pass of compute. Memory of the
   * activations drops from every layer's to one layer's plus each layer's input.
   */
  gradientCheckpointingEnable(): void {
    this.model.gradientCheckpointing = true;
  }

  /** Turns activation checkpointing off again (transformers' gradient_checkpointing_disable). */
  gradientCheckpointingDisable(): void {
    this.model.gradientCheckpointing = false;
  }

  /** Whether activation checkpointing is on (transformers' is_gradient_checkpointing). */
  get isGradientCheckpointing(): boolean {
    return this.model.gradientCheckpointing;
  }

  /** Where the model's weights are ('cpu' or 'cuda:N'). */
  device(): string {
    return this.model.embed_tokens.weight.device;
  }

  /**
   * Logits [B, T, vocab] for token ids given as number[][] (equal lengths) or an int32 tensor
   * [B, T]. options.attentionMask (1 = token, 0 = padding, left or right), options.positionIds
   * or options.cuSeqLens (packed documents): see BatchOptions. Logits at padded positions are
   * defined (finite) but meaningless.
   */
  forward(inputIds: number[][] | Tensor, options?: BatchOptions): Tensor {
    const where = 'LlamaForCausalLM.forward';
    const ids = toIds(where, 'inputIds', inputIds, this.config.vocabSize, this.device());
    checkLength(where, ids.shape[1], this.config);
    let layout: HostLayout | undefined;
    try {
      layout = batchLayout(where, options, ids.shape[0], ids.shape[1], this.config);
    } catch (e) {
      if (ids !== inputIds) ids.dispose();
      throw e;
    }
    const logits = this.head(this.model.forward(ids, layout));
    if (ids !== inputIds) ids.dispose();
    return logits;
  }

  /**
   * The head's logits, in float32 for a half model: the half values upcast exactly, as transformers'
   * LlamaForCausalLM did (logits.float()) and its loss still does, so the loss, sampling and softmax
   * over them run in float32.
   */
  private head(hidden: Tensor): Tensor {
    const logits = this.lm_head.forward(hidden);
    if (!isHalf(logits.dtype)) return logits;
    const wide = logits.to('float32');
    releaseIntermediate(logits);
    return wide;
  }

  /**
   * The causal language-modelling loss as transformers computes it: position t
   * predicts labels[t + 1]; labels default to the inputs; -100 is ignored. With options (see
   * BatchOptions) a position predicts nothing where it or the next is padding, or where the next
   * starts a new packed document, so a padded or packed batch gives the loss of its sequences
   * run one at a time (the mean over all their predicted tokens).
   */
  loss(inputIds: number[][] | Tensor, labels?: number[][] | Tensor, options?: BatchOptions): Tensor {
    const where = 'LlamaForCausalLM.loss';
    const ids = toIds(where, 'inputIds', inputIds, this.config.vocabSize, this.device());
    const [B, T] = ids.shape;
    let lab: ArrayLike<number>;
    let layout: HostLayout | undefined;
    try {
      checkLength(where, T, this.config);
      lab = labels === undefined ? ids._int32Values(where) : labelsArray(where, labels, B, T, this.config.vocabSize);
      layout = batchLayout(where, options, B, T, this.config);
    } catch (e) {
      if (ids !== inputIds) ids.dispose();
      throw e;
    }
    const targets = new Array<number>(B * T);
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const n = b * T + t;
        targets[n] = t + 1 < T && (!layout || layout.predicts[n]) ? lab[n + 1] : -100;
      }
    }
    const hidden = this.model.forward(ids, layout);
    if (ids !== inputIds) ids.dispose();
    // A position that predicts nothing (the last of each row, padding, a label of -100) adds
    // nothing to the loss, and its logits' gradient is zero, so its hidden state's is too: the
    // head and the cross entropy run on the predicting rows only (gathered, their gradient
    // scattered back as zeros elsewhere), the same loss and gradients for less of the largest
    // product (the prompt of an instruction-tuning row, a batch's padding).
    const keep: number[] = [];
    for (let n = 0; n < B * T; n++) if (targets[n] !== -100) keep.push(n);
    const flat = hidden.reshape(B * T, this.config.hiddenSize);
    let rows = flat;
    let index: Tensor | undefined;
    let kept = targets;
    if (keep.length > 0 && keep.length < B * T) {
      index = tensor(keep, { dtype: 'int32', device: hidden.device as DeviceSpec });
      rows = flat.indexSelect(0, index);
      kept = keep.map((n) => targets[n]);
      releaseIntermediate(hidden);
    }
    // Half logits go to the loss as they are: the cross entropy computes in float32 inside, its loss
    // is float32 and the logits' gradient is rounded once to their dtype, which is what transformers'
    // upcast (logits.float()) gives, without a float32 copy of the logits and of their gradient.
    const head = this.lm_head;
    if (head instanceof Linear && head.bias === null) {
      // The head and its cross entropy as one node (a LoRA-wrapped head takes the path below):
      // the backward forms the hidden states' gradient from the logits without the logits'
      // gradient in memory ([rows, vocab], as large as the logits).
      checkLinearWeights(where, rows, head.weight, null, { weight: 'lm_head.weight', bias: 'lm_head.bias' });
      const targetIds = tensor(Int32Array.from(kept), { dtype: 'int32', shape: [kept.length], device: hidden.device as DeviceSpec });
      const loss = linearCrossEntropy(rows, head.weight, targetIds, -100, keep.length);
      releaseIntermediate(rows, index);
      return loss;
    }
    const logits = head.forward(rows);
    if (logits._store !== rows._store) releaseIntermediate(rows);
    const loss = F.crossEntropy(logits, kept, { ignoreIndex: -100 });
    releaseIntermediate(logits, index);
    return loss;
  }

  /**
   * Continues each row of inputIds and returns the rows (as given) with their new tokens, each
   * ending at its first end-of-sequence token or at the token that completes a stop string.
   * Rows may differ in length: they are left-padded (as transformers' generate wants), or pass
   * rows of equal length with options.attentionMask (1 = token, 0 = padding, left padding only);
   * positions come from the mask and padded keys are never attended. Greedy by default; with
   * doSample, temperature, top-k and top-p filter the distribution as in transformers, and the
   * draws come from the global generator (manualSeed makes them repeatable). A finished row
   * takes padTokenId while the others go on. With the key/value cache (the default) the prompt
   * runs once and every later step runs the one new token per row; useCache: false runs the
   * whole sequence every step (the same tokens, slower). Runs without a graph and with dropout
   * off (the modules' training flags are restored after).
   */
  generate(inputIds: number[][], options?: GenerateOptions): number[][] {
    const where = 'LlamaForCausalLM.generate';
    if (!Array.isArray(inputIds)) throw typeError(where, 'inputIds', 'number[][] (rows of token ids)', inputIds);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['maxNewTokens', 'doSample', 'temperature', 'topK', 'topP', 'eosTokenId', 'padTokenId', 'attentionMask',
      'useCache', 'onToken', 'stopStrings', 'decode']);
    const maxNew = o.maxNewTokens === undefined ? 20 : checkInt(where, 'options.maxNewTokens', o.maxNewTokens);
    const doSample = o.doSample === undefined ? false : checkBool(where, 'options.doSample', o.doSample);
    const temperature = o.temperature === undefined ? 1 : checkNumber(where, 'options.temperature', o.temperature);
    if (temperature <= 0) throw rangeError(where, 'options.temperature', 'a number > 0 (use doSample: false for greedy decoding)', temperature);
    const topK = o.topK === undefined ? 50 : checkInt(where, 'options.topK', o.topK);
    const topP = o.topP === undefined ? 1 : checkNumber(where, 'options.topP', o.topP);
    if (!(topP > 0 && topP <= 1)) throw rangeError(where, 'options.topP', 'in (0, 1]', topP);
    const useCache = o.useCache === undefined ? true : checkBool(where, 'options.useCache', o.useCache);
    const onToken = o.onToken;
    if (onToken !== undefined && typeof onToken !== 'function') throw typeError(where, 'options.onToken', 'a function (tokens, step) => void', onToken);
    const V = this.config.vocabSize;
    const eos = new Set<number>();
    const eosGiven = o.eosTokenId === undefined ? this.config.raw.eos_token_id : o.eosTokenId;
    if (eosGiven !== null && eosGiven !== undefined) {
      const list = Array.isArray(eosGiven) ? eosGiven : [eosGiven];
      list.forEach((id, i) => {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw rangeError(where, o.eosTokenId === undefined ? 'config eos_token_id' : Array.isArray(eosGiven) ? `options.eosTokenId[${i}]` : 'options.eosTokenId', `a token id in [0, ${V})`, id);
        }
        eos.add(id as number);
      });
    }
    // transformers: pad_token_id, else the (first) end-of-sequence token.
    let pad: number;
    if (o.padTokenId !== undefined) {
      pad = checkInt(where, 'options.padTokenId', o.padTokenId);
      if (pad < 0 || pad >= V) throw rangeError(where, 'options.padTokenId', `a token id in [0, ${V})`, pad);
    } else {
      const p = this.config.raw.pad_token_id;
      pad = Number.isInteger(p) && (p as number) >= 0 && (p as number) < V ? (p as number) : eos.size ? [...eos][0] : 0;
    }
    let stops: string[] = [];
    let decode: ((ids: number[]) => string) | null = null;
    if (o.stopStrings !== undefined) {
      if (!Array.isArray(o.stopStrings) || o.stopStrings.some((x) => typeof x !== 'string' || x.length === 0)) {
        throw typeError(where, 'options.stopStrings', 'an array of non-empty strings', o.stopStrings);
      }
      stops = o.stopStrings as string[];
      if (stops.length && typeof o.decode !== 'function') {
        throw typeError(where, 'options.decode', 'a function (ids: number[]) => string (e.g. ids => tokenizer.decode(ids)) with options.stopStrings', o.decode);
      }
      decode = o.decode as (ids: number[]) => string;
    } else if (o.decode !== undefined && typeof o.decode !== 'function') {
      throw typeError(where, 'options.decode', 'a function (ids: number[]) => string', o.decode);
    }

    // The prompt: rows as given, left-padded to one length when they differ.
    const B = inputIds.length;
    if (B === 0) throw rangeError(where, 'inputIds', 'at least one row', inputIds);
    inputIds.forEach((r, b) => {
      if (!Array.isArray(r) || r.length === 0) throw rangeError(where, `inputIds[${b}]`, 'a non-empty array of token ids', r);
    });
    const T0 = Math.max(...inputIds.map((r) => r.length));
    let mask: number[][];
    let prompt: number[][];
    if (o.attentionMask !== undefined) {
      prompt = inputIds.map((r) => r.slice());
      // Rows of one length with a mask (checked as forward() checks them).
      toIds(where, 'inputIds', prompt, V, 'cpu').dispose();
      const m = intMatrix(where, 'options.attentionMask', o.attentionMask, B, inputIds[0].length);
      mask = prompt.map((_, b) => Array.from(m.subarray(b * T0, b * T0 + T0)));
      batchLayout(where, { attentionMask: mask }, B, T0, this.config); // values 0/1, no row all padding
      mask.forEach((row, b) => {
        const first = row.indexOf(1);
        if (first >= 0 && row.slice(first).some((x) => x !== 1)) {
          throw rangeError(where, `options.attentionMask[${b}]`, 'left padding (zeros, then ones to the end: generate continues the last token)', row);
        }
      });
    } else {
      prompt = inputIds.map((r) => [...new Array<number>(T0 - r.length).fill(pad), ...r]);
      mask = inputIds.map((r) => [...new Array<number>(T0 - r.length).fill(0), ...new Array<number>(r.length).fill(1)]);
    }
    // The prompt rows are checked (and their length against the model) as forward() checks them.
    const first = toIds(where, 'inputIds', prompt, V, 'cpu');
    first.dispose();
    checkLength(where, T0 + maxNew, this.config);
    const padded = mask.some((row) => row[0] === 0);
    const promptLayout = padded ? batchLayout(where, { attentionMask: mask }, B, T0, this.config) : undefined;
    const padCount = mask.map((row) => row.indexOf(1));

    const rows = prompt.map((r) => r.slice());
    const fresh: number[][] = inputIds.map(() => []);
    const done = rows.map(() => false);
    const modes = [...this.modules()].map((m) => [m, m.training] as const);
    this.eval();
    let cache: KVCache | null = null;
    try {
      noGrad(() => {
        if (useCache && maxNew > 0) cache = new KVCache(this.config, B, T0 + maxNew, this.model.embed_tokens.weight.dtype, this.device());
        for (let step = 0; step < maxNew && done.some((d) => !d); step++) {
          // Each step's tensors (the rotary tables among them) are freed when it ends.
          const logits = tidy(() => {
            if (!cache) return this.lastLogits(rows, padded ? { attentionMask: rows.map((r, b) => [...mask[b], ...new Array<number>(r.length - T0).fill(1)]) } : undefined);
            if (step === 0) return this.stepLogits(prompt, promptLayout, cache);
            // One new token per row at position (its real tokens so far); it sees its row's keys
            // from the first real one on.
            const T = rows[0].length;
            const positions = Int32Array.from(padCount, (p) => T - 1 - p);
            const starts = Int32Array.from(padCount);
            return this.stepLogits(rows.map((r) => [r[T - 1]]), { positions, starts, predicts: new Uint8Array(B) }, cache);
          });
          const u = doSample ? rand([B]).toArray() : null;
          const picked: (number | null)[] = rows.map((row, b) => {
            // Finished rows still run (the batch keeps one length) on padding (as transformers).
            const l = logits.subarray(b * V, (b + 1) * V);
            const id = doSample ? sampleToken(l, temperature, topK, topP, u![b]) : argmax(l);
            if (done[b]) {
              row.push(pad);
              return null;
            }
            row.push(id);
            fresh[b].push(id);
            return id;
          });
          picked.forEach((id, b) => {
            if (id === null) return;
            if (eos.has(id)) done[b] = true;
            else if (decode && stops.length) {
              const text = decode(fresh[b]);
              if (stops.some((x) => text.includes(x))) done[b] = true;
            }
          });
          if (onToken) onToken(picked, step);
        }
      });
    } finally {
      if (cache) (cache as KVCache).dispose();
      for (const [m, t] of modes) m.training = t;
    }
    return inputIds.map((r, b) => [...r, ...fresh[b]]);
  }

  /** Logits [B, vocab] of the last position of each row, on the host (no cache). */
  private lastLogits(rows: number[][], options?: BatchOptions): Float32Array | Float64Array {
    const ids = tensor(rows, { dtype: 'int32', device: this.device() as DeviceSpec });
    const layout = options ? batchLayout('LlamaForCausalLM.generate', options, rows.length, rows[0].length, this.config) : undefined;
    const hidden = this.model.forward(ids, layout);
    ids.dispose();
    return this.headLast(hidden);
  }

  /** The same for rows run through the cache (holding the positions before them). */
  private stepLogits(rows: number[][], layout: HostLayout | undefined, cache: KVCache): Float32Array | Float64Array {
    const ids = tensor(rows, { dtype: 'int32', device: this.device() as DeviceSpec });
    const hidden = this.model.forward(ids, layout, cache);
    ids.dispose();
    return this.headLast(hidden);
  }

  /** Only the last position goes through the head: read the hidden states back, keep one row each. */
  private headLast(hidden: Tensor): Float32Array | Float64Array {
    const [B, T, D] = hidden.shape;
    const h = hidden.toArray();
    hidden.dispose();
    const last = new (h.constructor as Float32ArrayConstructor)(B * D);
    for (let b = 0; b < B; b++) last.set(h.subarray((b * T + T - 1) * D, (b * T + T) * D), b * D);
    const x = tensor(last, { shape: [B, D], dtype: hidden.dtype as 'float32', device: this.device() as DeviceSpec });
    const logits = this.head(x);
    x.dispose();
    const out = logits.toArray() as Float32Array | Float64Array;
    logits.dispose();
    return out;
  }

  /**
   * Loads config.json and model.safetensors (or a sharded
   * model.safetensors.index.json) from a Hugging Face checkpoint directory.
   * F32, F64, F16 and BF16 weights are stored in options.dtype (default float32; 'auto': the
   * checkpoint's torch_dtype), converted one tensor at a time as they are read, so loading never
   * holds more than the model and one tensor (a BF16 tensor loaded as bfloat16 keeps its bits).
   */
  static async fromPretrained(dir: string, options?: FromPretrainedOptions): Promise<LlamaForCausalLM> {
    const where = 'LlamaForCausalLM.fromPretrained';
    if (typeof dir !== 'string') throw typeError(where, 'dir', 'a checkpoint directory path', dir);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['dtype', 'device']);
    const asked = o.dtype === undefined ? 'float32' : checkOneOf(where, 'options.dtype', o.dtype, MODEL_DTYPES);
    const configPath = path.join(dir, 'config.json');
    let raw: unknown;
    try {
      raw = await readJsonFile(where, configPath, READ_LIMITS.config);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      throw new Error(`${where}: ${configPath} not found (expected a Hugging Face checkpoint directory with config.json and model.safetensors)`);
    }
    const config = parseLlamaConfig(raw, where);
    const { files, shardOf } = await weightFiles(where, dir);
    // Every header is read before the model is built: config.json decides how much memory the model
    // takes, and a config that asks for far more parameters than the checkpoint holds (a damaged or
    // mismatched config.json) is refused here instead of allocated. Smaller differences are left to
    // the key-by-key checks below, which name the missing or mis-shaped weights.
    const opened: SafetensorsFile[] = [];
    const loaded = new Set<string>();
    const unexpected: string[] = [];
    let model: LlamaForCausalLM;
    // transformers' tie_weights: with tied embeddings, an lm_head.weight in the checkpoint is loaded
    // into a head of its own; after loading the two are tied again only when their values are equal.
    let untiedHead = false;
    try {
      for (const file of files) opened.push(await SafetensorsFile._open(where, file));
      // The keys read from each file: with an index, those its weight_map assigns to that shard.
      const assigned = new Map<string, string[]>();
      for (const [key, file] of shardOf ?? []) assigned.set(file, [...(assigned.get(file) ?? []), key]);
      const keysOf = new Map(opened.map((st) => [st, shardOf ? checkShard(where, dir, st, assigned.get(st.path) ?? []) : st.keys()]));
      if (shardOf) reportStrayKeys(where, dir, opened, shardOf);
      let stored = 0;
      for (const [st, keys] of keysOf) for (const k of keys) stored += st.entry(k).shape.reduce((a, d) => a * d, 1);
      const needed = parameterCount(config);
      if (needed > 2 * stored + 2 ** 24) {
        throw new RangeError(`${where}: ${configPath} describes a model of ${needed} parameters, far more than the ${stored} values the checkpoint holds; the config does not belong to these weights`);
      }
      untiedHead = config.tieWordEmbeddings && [...keysOf.values()].some((keys) => keys.includes('lm_head.weight'));
      const firstStored = () => {
        for (const [st, keys] of keysOf) for (const k of keys) if (Object.hasOwn(STORED_DTYPES, st.entry(k).dtype)) return st.entry(k).dtype;
        return undefined;
      };
      const dtype = asked === 'auto' ? autoDtype(where, configPath, config.raw, firstStored) : asked;
      model = new LlamaForCausalLM(untiedHead ? { ...config, tieWordEmbeddings: false } : config, { device: o.device as DeviceSpec | undefined, dtype, init: false });
      const expected = new Map(Object.entries(model.stateDict()));
      for (const [st, keys] of keysOf) {
        const file = st.path;
        for (const key of keys) {
          const target = expected.get(key);
          if (!target) {
            // Non-persistent rotary buffers that old checkpoints still carry.
            if (!/\.rotary_emb\.inv_freq$/.test(key)) unexpected.push(key);
            continue;
          }
          const e = st.entry(key);
          if (e.shape.length !== target.shape.length || e.shape.some((d, i) => d !== target.shape[i])) {
            throw new RangeError(`${where}: ${path.basename(file)}: '${key}' has shape [${e.shape.join(', ')}], the config implies [${target.shape.join(', ')}]`);
          }
          if (!['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) {
            throw new RangeError(`${where}: ${path.basename(file)}: '${key}' has dtype ${e.dtype}; F32, F16, BF16 and F64 are supported`);
          }
          // Read in the model's dtype (a half checkpoint as its bits), so no float32 copy is made.
          const t = await st._readTensor(where, key, { dtype: target.dtype });
          noGrad(() => target.copy_(t));
          t.dispose();
          loaded.add(key);
        }
      }
    } finally {
      for (const st of opened) st.close();
    }
    if (unexpected.length) {
      throw new RangeError(`${where}: the checkpoint has weights this architecture does not use: ${list(unexpected)}`);
    }
    const missing = Object.keys(model.stateDict()).filter((k) => !loaded.has(k) && !(k === 'lm_head.weight' && config.tieWordEmbeddings));
    if (missing.length) throw new RangeError(`${where}: the checkpoint lacks weights: ${list(missing)}`);
    if (untiedHead) {
      const head = model.lm_head.weight;
      const embed = model.model.embed_tokens.weight;
      if (sameValues(head, embed)) {
        // A redundant copy of the embedding (some checkpoints store both): tie as the config says.
        model.lm_head.weight = embed;
        head.dispose();
        model.config.tieWordEmbeddings = true;
      } else {
        process.emitWarning(`${configPath} says tie_word_embeddings, but the checkpoint holds an lm_head.weight that differs from model.embed_tokens.weight; ` +
          'the two are kept apart, as transformers does (set "tie_word_embeddings": false in config.json to silence this warning)', { code: 'LORA_CUDA_UNTIED_EMBEDDINGS' });
      }
    }
    // As transformers: the directory the model came from (PEFT's base_model_name_or_path), eval mode.
    model.config.raw._name_or_path = dir;
    model.eval();
    return model;
  }
}

/** The index of the largest logit (the first of equal ones). */
function argmax(l: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
  return best;
}

/**
 * One token drawn with uniform u in [0, 1) from softmax(logits / temperature), restricted as
 * transformers' warpers do, in their order: the topK largest logits (ties at the k-th kept), then
 * the smallest set of the most likely tokens whose probabilities reach topP (at least one).
 */
export function sampleToken(l: ArrayLike<number>, temperature: number, topK: number, topP: number, u: number): number {
  const V = l.length;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => l[b] - l[a] || a - b);
  let n = V;
  if (topK > 0 && topK < V) {
    const kth = l[order[topK - 1]];
    n = topK;
    while (n < V && l[order[n]] === kth) n++;
  }
  const max = l[order[0]] / temperature;
  const p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    p[i] = Math.exp(l[order[i]] / temperature - max);
    sum += p[i];
  }
  if (topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < n && acc < topP * sum) acc += p[keep++];
    n = Math.max(1, keep);
    sum = 0;
    for (let i = 0; i < n; i++) sum += p[i];
  }
  let target = u * sum;
  for (let i = 0; i < n; i++) {
    target -= p[i];
    if (target < 0) return order[i];
  }
  return order[n - 1];
}

/** The number of parameters of the model a config describes (tied embeddings counted once). */
function parameterCount(c: LlamaConfig): number {
  const { hiddenSize: D, intermediateSize: I, vocabSize: V, headDim: hd, numAttentionHeads: H, numKeyValueHeads: Hkv } = c;
  const attention = D * H * hd + 2 * D * Hkv * hd + H * hd * D + (c.qkvBias ? (H + 2 * Hkv) * hd : 0) + (c.oBias ? D : 0);
  const mlp = 3 * D * I + (c.mlpBias ? 2 * I + D : 0);
  const layer = attention + mlp + 2 * D; // and the two RMSNorms
  return V * D + c.numHiddenLayers * layer + D + (c.tieWordEmbeddings ? 0 : V * D);
}

/** Bitwise equality of two tensors of one shape (NaNs with equal bits count as equal). */
function sameValues(a: Tensor, b: Tensor): boolean {
  if (a.dtype !== b.dtype || a.shape.join() !== b.shape.join()) return false;
  const x = a.toArray();
  const y = b.toArray();
  const xb = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  const yb = new Uint8Array(y.buffer, y.byteOffset, y.byteLength);
  for (let i = 0; i < xb.length; i++) if (xb[i] !== yb[i]) return false;
  return true;
}

function isParsed(c: unknown): c is LlamaConfig {
  return typeof c === 'object' && c !== null && 'raw' in c && 'modelType' in c;
}

function list(keys: string[]): string {
  return keys.slice(0, 10).map((k) => `'${k}'`).join(', ') + (keys.length > 10 ? `, … (${keys.length} in all)` : '');
}

const INDEX = 'model.safetensors.index.json';

/**
 * The weight files of a checkpoint directory: model.safetensors, or the shards its index names, with
 * the index's weight_map (tensor name to shard path).
 */
async function weightFiles(where: string, dir: string): Promise<{ files: string[]; shardOf: Map<string, string> | null }> {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, INDEX);
  // transformers looks for the single file first and reads the index only without it.
  if (pathExists(where, single)) return { files: [single], shardOf: null };
  if (pathExists(where, index)) {
    const parsed = await readJsonFile(where, index, READ_LIMITS.large);
    const map = (parsed as { weight_map?: unknown } | null)?.weight_map;
    if (map === null || typeof map !== 'object' || Array.isArray(map)) throw new Error(`${where}: ${index} has no weight_map object`);
    const shardOf = new Map<string, string>();
    const shards = new Set<string>();
    for (const [key, s] of Object.entries(map as Record<string, unknown>)) {
      if (typeof s !== 'string' || s === '') throw new Error(`${where}: ${index}: weight_map[${JSON.stringify(key)}] must be a shard file name, got ${describe(s)}`);
      if (s.includes('/') || s.includes('\\') || s.startsWith('.')) throw new Error(`${where}: ${index} names a shard outside the directory: ${s}`);
      shardOf.set(key, path.join(dir, s));
      shards.add(s);
    }
    for (const s of shards) {
      if (!pathExists(where, path.join(dir, s))) throw new Error(`${where}: shard ${s} listed in ${INDEX} is missing`);
    }
    return { files: [...shards].map((s) => path.join(dir, s)), shardOf };
  }
  const bins = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.bin')) : [];
  throw new Error(`${where}: no model.safetensors or ${INDEX} in ${dir}` +
    (bins.length ? ` (found ${bins.join(', ')}: PyTorch .bin checkpoints are not supported; convert them to safetensors)` : ''));
}

/** The keys the index assigns to a shard, each checked to be there. */
function checkShard(where: string, dir: string, st: SafetensorsFile, keys: string[]): string[] {
  const absent = keys.find((k) => !st.has(k));
  if (absent !== undefined) throw new RangeError(`${where}: ${path.join(dir, INDEX)} puts '${absent}' in ${path.basename(st.path)}, which does not hold it`);
  return keys;
}

/**
 * Tensors of a shard that the index does not assign to it are not read: a copy of a tensor that the
 * weight_map puts in another shard (the one there is read), or a tensor it does not list at all (which
 * transformers does not load either). They are named in a process warning (code
 * LORA_CUDA_UNASSIGNED_SHARD_KEYS), since a checkpoint holding two copies of a tensor is ambiguous.
 */
function reportStrayKeys(where: string, dir: string, opened: SafetensorsFile[], shardOf: Map<string, string>): void {
  const stray: string[] = [];
  for (const st of opened) {
    for (const key of st.keys()) {
      const assigned = shardOf.get(key);
      if (assigned === st.path) continue;
      stray.push(assigned === undefined
        ? `'${key}' in ${path.basename(st.path)} (not in the weight_map)`
        : `'${key}' in ${path.basename(st.path)} (the weight_map puts it in ${path.basename(assigned)}, which was read)`);
    }
  }
  if (stray.length) {
    process.emitWarning(`${where}: ${path.join(dir, INDEX)}: shards hold tensors that its weight_map does not assign to them; they were not read: ` +
      `${stray.slice(0, 8).join(', ')}${stray.length > 8 ? `, … (${stray.length} in all)` : ''}`, { code: 'LORA_CUDA_UNASSIGNED_SHARD_KEYS' });
  }
}

function checkLength(where: string, T: number, config: LlamaConfig): void {
  if (config.slidingWindow !== null && T > config.slidingWindow) {
    throw new RangeError(`${where}: sequences of ${T} tokens exceed the model's sliding_window (${config.slidingWindow}); sliding-window attention is not supported, so use at most ${config.slidingWindow} tokens`);
  }
}

/** Token ids as an int32 tensor [B, T] on `device` (a tensor elsewhere is copied there). */
function toIds(where: string, what: string, v: number[][] | Tensor, vocab: number, device: string): Tensor {
  if (v instanceof Tensor) {
    if (v.dtype !== 'int32' || v.ndim !== 2) throw typeError(where, what, 'an int32 tensor [batch, seq] or number[][]', v);
    // Checked here, as rows of numbers are, rather than by the embedding under its own name.
    v._checkLive(where, what);
    const flat = v._int32Values(where);
    const T = v.shape[1];
    for (let i = 0; i < flat.length; i++) {
      const id = flat[i];
      if (id < 0 || id >= vocab) throw rangeError(where, `${what}[${Math.floor(i / T)}][${i % T}]`, `a token id in [0, ${vocab})`, id);
    }
    return v.device === device ? v : v.to(device as DeviceSpec);
  }
  if (!Array.isArray(v) || v.length === 0 || !v.every(Array.isArray)) throw typeError(where, what, 'number[][] (batch of token id rows) or an int32 tensor', v);
  const T = v[0].length;
  if (T === 0) throw rangeError(where, `${what}[0].length`, 'at least 1', T);
  v.forEach((row, b) => {
    if (row.length !== T) throw rangeError(where, `${what}[${b}].length`, `${T} (rows must have equal lengths)`, row.length);
    row.forEach((id, t) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw rangeError(where, `${what}[${b}][${t}]`, `a token id in [0, ${vocab})`, id);
    });
  });
  return tensor(v, { dtype: 'int32', device: device as DeviceSpec });
}

function labelsArray(where: string, v: number[][] | Tensor, B: number, T: number, vocab: number): ArrayLike<number> {
  let flat: ArrayLike<number>;
  if (v instanceof Tensor) {
    if (v.dtype !== 'int32' || v.shape[0] !== B || v.shape[1] !== T || v.ndim !== 2) throw rangeError(where, 'labels', `an int32 tensor [${B}, ${T}]`, v);
    v._checkLive(where, 'labels');
    flat = v._int32Values(where);
  } else {
    if (!Array.isArray(v) || v.length !== B || v.some((r) => !Array.isArray(r) || r.length !== T)) {
      throw rangeError(where, 'labels', `number[${B}][${T}] like inputIds`, v);
    }
    flat = v.flat();
  }
  // Every label, also labels[b][0], which no position predicts: a bad value is a bad call.
  for (let i = 0; i < flat.length; i++) {
    const l = flat[i];
    if (!(Number.isInteger(l) && ((l >= 0 && l < vocab) || l === -100))) {
      throw rangeError(where, `labels[${Math.floor(i / T)}][${i % T}]`, `a token id in [0, ${vocab}) or -100 (ignored)`, l);
    }
  }
  return flat;
}

/**
 * How the tokens of a batch [B, T] are laid out, as transformers takes them (at most one of
 * positionIds and cuSeqLens):
 * - attentionMask: 1 = token, 0 = padding (number[][] or int32 tensor [B, T]); the ones of a row
 *   are one run (right padding for training, left padding for generation, or both). Position ids
 *   then come from the mask as transformers computes them: cumsum(mask) - 1, padding at 1.
 * - positionIds: per-token positions; a packed row restarts them at 0 for each document
 *   (transformers' padding-free packing), and no token attends across such a boundary.
 * - cuSeqLens: per row, the cumulative document lengths [0, l1, l1 + l2, ..., T]
 *   (flash-attention's cu_seqlens for that row); positions restart in each document.
 */
export interface BatchOptions {
  attentionMask?: number[][] | Tensor;
  positionIds?: number[][] | Tensor;
  cuSeqLens?: number[][];
}

/** What the model's layers read of a BatchOptions, on the device. */
interface BatchLayout {
  /** cos/sin hold a row per token ([B * T, headDim]) rather than per position. */
  perToken: boolean;
  keyStarts?: Tensor;
}

/** A BatchOptions resolved on the host. */
interface HostLayout {
  /** Per-token positions [B * T], or null when every row runs 0..T-1 (shared tables). */
  positions: Int32Array | null;
  /** First key each query sees [B * T], or null when every query sees keys 0..i. */
  starts: Int32Array | null;
  /** Whether position n predicts token n + 1 (both real, same document). */
  predicts: Uint8Array;
}

/** An int matrix [B, T] given as number[][] or an int32 tensor, flat. */
function intMatrix(where: string, what: string, v: unknown, B: number, T: number): Int32Array {
  if (v instanceof Tensor) {
    if (v.dtype !== 'int32' || v.ndim !== 2 || v.shape[0] !== B || v.shape[1] !== T) {
      throw rangeError(where, what, `an int32 tensor [${B}, ${T}] (the shape of inputIds)`, v);
    }
    v._checkLive(where, what);
    return v._int32Values(where);
  }
  if (!Array.isArray(v) || v.length !== B) throw rangeError(where, what, `number[${B}][${T}] (the shape of inputIds)`, v);
  const flat = new Int32Array(B * T);
  v.forEach((row: unknown, b) => {
    if (!Array.isArray(row) || row.length !== T) throw rangeError(where, `${what}[${b}]`, `${T} numbers (the length of inputIds rows)`, row);
    row.forEach((x: unknown, t) => {
      if (!Number.isInteger(x) || Math.abs(x as number) > 2 ** 31 - 1) throw rangeError(where, `${what}[${b}][${t}]`, 'an integer', x);
      flat[b * T + t] = x as number;
    });
  });
  return flat;
}

/** Resolves BatchOptions for a batch [B, T]; undefined when there are none. */
function batchLayout(where: string, options: BatchOptions | undefined, B: number, T: number, config: LlamaConfig): HostLayout | undefined {
  if (options === undefined) return undefined;
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['attentionMask', 'positionIds', 'cuSeqLens']);
  if (o.attentionMask === undefined && o.positionIds === undefined && o.cuSeqLens === undefined) return undefined;
  if (o.positionIds !== undefined && o.cuSeqLens !== undefined) {
    throw rangeError(where, 'options', 'at most one of positionIds and cuSeqLens', 'both');
  }
  const N = B * T;
  const mask = new Uint8Array(N).fill(1);
  if (o.attentionMask !== undefined) {
    const m = intMatrix(where, 'options.attentionMask', o.attentionMask, B, T);
    for (let b = 0; b < B; b++) {
      let first = -1;
      let last = -1;
      for (let t = 0; t < T; t++) {
        const x = m[b * T + t];
        if (x !== 0 && x !== 1) throw rangeError(where, `options.attentionMask[${b}][${t}]`, '0 (padding) or 1 (token)', x);
        mask[b * T + t] = x;
        if (x === 1) {
          if (first < 0) first = t;
          else if (last < t - 1) throw rangeError(where, `options.attentionMask[${b}]`, 'one run of ones (padding only before or after the tokens)', Array.from(m.subarray(b * T, b * T + T)));
          last = t;
        }
      }
      if (first < 0) throw rangeError(where, `options.attentionMask[${b}]`, 'at least one 1 (a row that is all padding has no tokens)', Array.from(m.subarray(b * T, b * T + T)));
    }
  }
  // Positions: given, from cumulative lengths, or from the mask (cumsum - 1, padding at 1).
  const pos = new Int32Array(N);
  let docStart: Uint8Array | null = null;
  if (o.cuSeqLens !== undefined) {
    const cu = o.cuSeqLens;
    if (!Array.isArray(cu) || cu.length !== B) throw rangeError(where, 'options.cuSeqLens', `${B} rows of cumulative document lengths`, cu);
    docStart = new Uint8Array(N);
    cu.forEach((row: unknown, b) => {
      const ok = Array.isArray(row) && row.length >= 2 && row[0] === 0 && row[row.length - 1] === T
        && row.every((x, i) => Number.isInteger(x) && (i === 0 || x > row[i - 1]));
      if (!ok) throw rangeError(where, `options.cuSeqLens[${b}]`, `increasing integers from 0 to ${T} ([0, l1, l1 + l2, ..., T])`, row);
      const r = row as number[];
      for (let d = 0; d + 1 < r.length; d++) {
        docStart![b * T + r[d]] = 1;
        for (let t = r[d]; t < r[d + 1]; t++) pos[b * T + t] = t - r[d];
      }
    });
  } else if (o.positionIds !== undefined) {
    const p = intMatrix(where, 'options.positionIds', o.positionIds, B, T);
    docStart = new Uint8Array(N);
    for (let n = 0; n < N; n++) {
      if (p[n] < 0 || p[n] >= config.maxPositionEmbeddings) {
        throw rangeError(where, `options.positionIds[${Math.floor(n / T)}][${n % T}]`, `a position in [0, ${config.maxPositionEmbeddings})`, p[n]);
      }
      pos[n] = p[n];
      // transformers' padding-free packing: a position 0 starts a new document.
      docStart[n] = p[n] === 0 ? 1 : 0;
    }
  } else {
    for (let b = 0; b < B; b++) {
      let c = 0;
      for (let t = 0; t < T; t++) {
        c += mask[b * T + t];
        pos[b * T + t] = mask[b * T + t] ? c - 1 : 1;
      }
    }
  }
  // First key of each query: its document's start, not before the row's first token; a padded
  // query sees only itself (its output is never read by a token, and stays finite).
  const starts = new Int32Array(N);
  const predicts = new Uint8Array(N);
  let plainStarts = true;
  let plainPositions = true;
  for (let b = 0; b < B; b++) {
    let start = 0;
    for (let t = 0; t < T; t++) {
      const n = b * T + t;
      if (docStart && docStart[n]) start = t;
      if (!mask[n]) start = t + 1; // keys before a token that follows padding are padding
      starts[n] = mask[n] ? start : t;
      // Only tokens' starts matter: padded queries seeing more (right padding) stay finite.
      if (mask[n] && starts[n] !== 0) plainStarts = false;
      // Positions matter for tokens only: padding keeps the shared tables where it can.
      if (mask[n] && pos[n] !== t) plainPositions = false;
      predicts[n] = t + 1 < T && mask[n] && mask[n + 1] && !(docStart && docStart[n + 1]) ? 1 : 0;
    }
  }
  return { positions: plainPositions ? null : pos, starts: plainStarts ? null : starts, predicts };
}
