// `lora-cuda bench --model` (`npm run bench -- --model`): one LoRA training step of a Llama model of
// SmolLM-135M's shape cut to 4 layers (hidden 576, intermediate 1536, 9 heads over 3 key/value heads,
// vocab 49,152, tied head), batch 4 x 128 tokens: forward, cross-entropy, backward and AdamW on
// LoRA adapters of q_proj and v_proj (the seed formulation: r 8, alpha 32). Prints tokens/s and the
// median step time, and runs the same step in PyTorch (bench/torch_model_step.py, when python3 with
// torch is found) for the ratio. --dtype bfloat16 builds the model in bfloat16 (adapters in float32, as
// PEFT's autocast_adapter_dtype) on both sides. Memory: the parameters' bytes, and the peak of the tensor
// bytes live during a step above those live before it (the CPU backend's allocation count).
// --results writes model-cpu-<cpu>-<blas>.json (-bfloat16.json for --dtype bfloat16).
import { spawnSync } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import * as fs from 'fs';
import { AdamW, LlamaForCausalLM, backendInfo, getLoraParameters, injectLora, manualSeed, nativeMemoryBytes } from '../lib';
import { benchNative } from './binding';
import { cpuId } from './cpu';

export type ModelBenchDtype = 'float32' | 'bfloat16';

export interface ModelBenchConfig {
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  batch: number;
  seq: number;
  r: number;
  alpha: number;
  lr: number;
  /** Measured steps per round, on each side. */
  steps: number;
  /** Unmeasured steps before the first round (PyTorch: in each round's process). */
  warmup: number;
  /**
   * Rounds, alternating our steps and PyTorch's, so both sides see the same stretches of a shared
   * machine's load; medians are over every measured step of all rounds.
   */
  rounds: number;
  threads: number;
  /** The model's dtype (LoRA adapters stay float32 on a bfloat16 model). */
  dtype: ModelBenchDtype;
}

/** SmolLM-135M's shape, 4 layers, 4 x 128 tokens; 'tiny' is for tests. */
export function modelBenchConfig(kind: 'full' | 'quick' | 'tiny', dtype: ModelBenchDtype = 'float32'): ModelBenchConfig {
  const threads = backendInfo().cpu.threads;
  if (kind === 'tiny') {
    return { vocab: 256, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2, batch: 2, seq: 16, r: 4, alpha: 8, lr: 1e-4, steps: 2, warmup: 1, rounds: 1, threads, dtype };
  }
  return {
    vocab: 49152, hidden: 576, intermediate: 1536, layers: 4, heads: 9, kvHeads: 3, batch: 4, seq: 128,
    r: 8, alpha: 32, lr: 1e-4, steps: kind === 'quick' ? 3 : 6, warmup: kind === 'quick' ? 1 : 2, rounds: kind === 'quick' ? 1 : 3, threads, dtype,
  };
}

export interface TorchSide {
  torch: string;
  threads: number;
  steps: number;
  medianMs: number;
  minMs: number;
  cpuMs: number;
  tokensPerSecond: number;
  loss: number;
  /** The BLAS torch's products ran on (for OpenBLAS: its build and the kernel it chose), when found. */
  blas: string | null;
}

/** One round's medians: ours, then PyTorch's right after it (null without PyTorch). */
export interface ModelBenchRound {
  loraMs: number;
  pytorchMs: number | null;
}

export interface ModelBenchResult {
  date: string;
  machine: { cpu: string; cpuId: string | null; cores: number; node: string; platform: string; loadavg: number[] };
  backend: ReturnType<typeof backendInfo>['cpu'];
  config: ModelBenchConfig;
  /** cpuMs: the median step's CPU time over all threads (steadier than wall time on a shared machine). */
  lora: {
    medianMs: number; minMs: number; cpuMs: number; steps: number; tokensPerSecond: number; loss: number; trainable: number;
    /**
     * weightBytes: the parameters' storage (frozen and adapters; the tied head once); stepPeakBytes: the
     * most tensor bytes live during a measured step above those live before it (largest over the steps).
     */
    memory: { weightBytes: number; stepPeakBytes: number };
  };
  pytorch: TorchSide | null;
  /** Why PyTorch did not run, when it did not. */
  pytorchSkipped?: string;
  /** Each round's median step times (the ratio's spread across the run). */
  rounds: ModelBenchRound[];
  /** Our tokens/s over PyTorch's (median wall times over all rounds). */
  ratio: number | null;
  /** PyTorch's CPU time per step over ours. */
  cpuRatio: number | null;
  /**
   * What the hardware allows (float32 only): the step's matrix products counted from the shapes
   * (productFlops), the float32 multiply-add peak of the built-in kernels' vectors on all threads
   * measured in the same run (fmaPeakGflops), and the time the products alone would take at that
   * peak (productFloorMs): no implementation's step can be shorter.
   */
  floor: { productGflop: number; fmaPeakGflops: number; fmaKernels: string; threads: number; productFloorMs: number } | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Our step (the model's loss, backward, AdamW), built once and measured round by round. */
function makeOurs(c: ModelBenchConfig) {
  manualSeed(0);
  const model = new LlamaForCausalLM({
    model_type: 'llama', vocab_size: c.vocab, hidden_size: c.hidden, intermediate_size: c.intermediate,
    num_hidden_layers: c.layers, num_attention_heads: c.heads, num_key_value_heads: c.kvHeads,
    max_position_embeddings: 2048, rope_theta: 10000, rms_norm_eps: 1e-5, tie_word_embeddings: true,
  }, { dtype: c.dtype });
  injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: c.r, alpha: c.alpha });
  const itemBytes = { float32: 4, float64: 8, int32: 4, bfloat16: 2, float16: 2 } as const;
  const weightBytes = model.parameters().reduce((n, p) => n + p.numel * itemBytes[p.dtype], 0);
  const params = getLoraParameters(model);
  const opt = new AdamW(params, { lr: c.lr });
  // Token ids drawn once (a fixed pattern: the values do not change the work).
  const ids = Array.from({ length: c.batch }, (_, b) => Array.from({ length: c.seq }, (_, t) => (t * 7919 + b * 104729 + 13) % c.vocab));
  let loss = 0;
  const step = () => {
    const l = model.loss(ids);
    opt.zeroGrad();
    l.backward();
    opt.step();
    loss = l.item();
    l.dispose();
  };
  const times: number[] = [];
  const cpu: number[] = [];
  let stepPeakBytes = 0;
  return {
    /** `warmup` unmeasured steps, then `steps` measured; returns this round's median. */
    round(warmup: number, steps: number): number {
      for (let i = 0; i < warmup; i++) step();
      const ts: number[] = [];
      for (let i = 0; i < steps; i++) {
        benchNative.livePeak(true);
        const live0 = nativeMemoryBytes();
        const t0 = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        step();
        const dc = process.cpuUsage(c0);
        stepPeakBytes = Math.max(stepPeakBytes, benchNative.livePeak(false) - live0);
        ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
        cpu.push((dc.user + dc.system) / 1000);
      }
      times.push(...ts);
      return median(ts);
    },
    /** Medians and min over every measured step so far. */
    result() {
      const ms = median(times);
      return {
        medianMs: ms, minMs: Math.min(...times), cpuMs: median(cpu), steps: times.length, tokensPerSecond: (c.batch * c.seq) / (ms / 1000), loss,
        trainable: params.reduce((n, p) => n + p.numel, 0), memory: { weightBytes, stepPeakBytes },
      };
    },
  };
}

/**
 * The multiply-adds (x 2) of the matrix products one training step needs, from the shapes: the
 * frozen projections forward and their input gradients (none for layer 0's q, k and v, whose input
 * needs no gradient), the tied head forward and input gradient over the rows that predict a token
 * (each row's last position predicts none), the adapters' six products (their
 * dx again not in layer 0), and attention's two forward and four backward products over the causal
 * half of each score matrix (no dK in layer 0). The floor counts only what must be computed.
 */
export function productFlops(c: ModelBenchConfig): number {
  const T = c.batch * c.seq;
  const hd = c.hidden / c.heads;
  const kv = c.kvHeads * hd;
  const h = c.hidden;
  const perLayer = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate; // q, o; k, v; gate, up, down
  const qkv = h * (h + 2 * kv);
  let mults = 0;
  mults += T * perLayer * c.layers; // forward
  mults += T * perLayer * c.layers - T * qkv; // input gradients
  mults += 2 * c.batch * (c.seq - 1) * h * c.vocab; // head: logits and their input gradient, rows that predict a token
  const adapters = [[h, h], [h, kv]]; // q_proj, v_proj: in, out
  for (const [i, o] of adapters) {
    const fwd = T * c.r * (i + o); // h = x A^T, y += s h B^T
    const bwd = T * c.r * (o + o + i); // dB, dh, dA
    const dx = T * c.r * i;
    mults += c.layers * (fwd + bwd) + (c.layers - 1) * dx;
  }
  const scores = c.batch * c.heads * (c.seq * (c.seq + 1) / 2) * hd; // one product over the causal half
  mults += c.layers * 6 * scores - scores; // QK^T, PV; dV, dP, dQ, dK (no dK in layer 0)
  return 2 * mults;
}

/** What one PyTorch process reports: its side's summary and every measured step's wall and CPU ms. */
type TorchRun = TorchSide & { times: number[]; cpuTimes: number[] };

/** One round of the PyTorch step in a child process: /usr/bin/python3 (else python3 on PATH) with torch. */
function runTorch(c: ModelBenchConfig): { side: TorchRun | null; why?: string } {
  const script = path.join(__dirname, '..', '..', 'bench', 'torch_model_step.py');
  const scriptPath = fs.existsSync(script) ? script : path.join(__dirname, 'torch_model_step.py');
  for (const py of ['/usr/bin/python3', 'python3']) {
    const r = spawnSync(py, [scriptPath, JSON.stringify(c)], { encoding: 'utf8', maxBuffer: 1 << 20 });
    if (r.error) continue;
    if (r.status !== 0) {
      const err = r.stderr.trim().split('\n').pop() ?? '';
      return { side: null, why: `${py} ${path.basename(scriptPath)} failed: ${err}` };
    }
    return { side: JSON.parse(r.stdout.trim().split('\n').pop() as string) };
  }
  return { side: null, why: 'no python3 found' };
}

export function runModelBench(kind: 'full' | 'quick' | 'tiny', options: { torch?: boolean; log?: (s: string) => void; dtype?: ModelBenchDtype } = {}): ModelBenchResult {
  const log = options.log ?? (() => undefined);
  const c = modelBenchConfig(kind, options.dtype);
  const info = backendInfo().cpu;
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  const id = cpuId();
  log(`lora-cuda bench --model: ${cpu}${id ? ` (${id})` : ''}, ${os.cpus().length} cores, BLAS ${info.blas}, kernels ${info.kernels}, bfloat16 GEMM ${info.bf16Gemm}; ${c.dtype}; ` +
    `Llama hidden ${c.hidden}, intermediate ${c.intermediate}, ${c.layers} layers, ${c.heads}/${c.kvHeads} heads, vocab ${c.vocab}; ` +
    `batch ${c.batch} x ${c.seq} tokens; LoRA r ${c.r}, alpha ${c.alpha} on q_proj, v_proj; AdamW; median of ${c.steps * c.rounds} steps` +
    (c.rounds > 1 ? ` in ${c.rounds} rounds alternating with PyTorch's` : ''));
  const side = makeOurs(c);
  const rounds: ModelBenchRound[] = [];
  const torchRuns: TorchRun[] = [];
  let why: string | undefined = options.torch === false ? '--no-torch' : undefined;
  for (let i = 0; i < c.rounds; i++) {
    const loraMs = side.round(i === 0 ? c.warmup : 1, c.steps); // a step to warm the caches again after PyTorch's
    let pytorchMs: number | null = null;
    if (why === undefined) {
      const t = runTorch(c);
      if (t.side) {
        torchRuns.push(t.side);
        pytorchMs = t.side.medianMs;
      } else {
        why = t.why;
      }
    }
    rounds.push({ loraMs, pytorchMs });
    if (c.rounds > 1) log(`round ${i + 1}: lora-cuda ${loraMs.toFixed(1)} ms/step` + (pytorchMs === null ? '' : `, pytorch ${pytorchMs.toFixed(1)} ms/step (${(pytorchMs / loraMs).toFixed(2)}x)`));
  }
  const ours = side.result();
  log(`lora-cuda: ${ours.medianMs.toFixed(1)} ms/step (min ${ours.minMs.toFixed(1)}; CPU ${ours.cpuMs.toFixed(0)} ms), ${ours.tokensPerSecond.toFixed(0)} tokens/s, loss ${ours.loss.toFixed(4)}; ` +
    `weights ${(ours.memory.weightBytes / 2 ** 20).toFixed(1)} MiB, step peak ${(ours.memory.stepPeakBytes / 2 ** 20).toFixed(1)} MiB of tensors`);
  let pytorch: TorchSide | null = null;
  if (torchRuns.length === c.rounds) {
    const times = torchRuns.flatMap((t) => t.times), ms = median(times);
    const last = torchRuns[torchRuns.length - 1];
    pytorch = {
      torch: last.torch, threads: last.threads, steps: times.length, medianMs: ms, minMs: Math.min(...times),
      cpuMs: median(torchRuns.flatMap((t) => t.cpuTimes)), tokensPerSecond: (c.batch * c.seq) / (ms / 1000), loss: last.loss,
      blas: last.blas ?? null,
    };
    log(`pytorch ${pytorch.torch} (${pytorch.threads} threads): ${pytorch.medianMs.toFixed(1)} ms/step (min ${pytorch.minMs.toFixed(1)}; CPU ${pytorch.cpuMs.toFixed(0)} ms), ` +
      `${pytorch.tokensPerSecond.toFixed(0)} tokens/s, loss ${pytorch.loss.toFixed(4)}${pytorch.blas ? `; BLAS ${pytorch.blas}` : ''}`);
  } else {
    for (const r of rounds) r.pytorchMs = null;
    log(`pytorch: not run (${why})`);
  }
  const ratio = pytorch ? ours.tokensPerSecond / pytorch.tokensPerSecond : null;
  const cpuRatio = pytorch ? pytorch.cpuMs / ours.cpuMs : null;
  if (ratio !== null) log(`ratio: ${ratio.toFixed(2)}x PyTorch's tokens/s (CPU time per step: ${cpuRatio!.toFixed(2)}x less); load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} cores`);
  let floor: ModelBenchResult['floor'] = null;
  if (c.dtype === 'float32') {
    // Measured after both steps, in the same run, so it sees the machine as they did.
    const peak = benchNative.fmaPeak(kind === 'tiny' ? 0.05 : 1.5);
    const flops = productFlops(c);
    floor = {
      productGflop: flops / 1e9, fmaPeakGflops: peak.gflops, fmaKernels: peak.kernels, threads: peak.threads,
      productFloorMs: flops / (peak.gflops * 1e9) * 1000,
    };
    log(`floor: the step's products are ${floor.productGflop.toFixed(1)} GFLOP; at this machine's float32 multiply-add peak ` +
      `(${peak.gflops.toFixed(0)} GFLOP/s on ${peak.threads} threads, ${peak.kernels} vectors) they alone take ${floor.productFloorMs.toFixed(0)} ms ` +
      `(our step: ${ours.medianMs.toFixed(0)} ms${pytorch ? `; 3x PyTorch's tokens/s needs ${(pytorch.medianMs / 3).toFixed(0)} ms` : ''})`);
  }
  return {
    date: new Date().toISOString(),
    machine: { cpu, cpuId: cpuId(), cores: os.cpus().length, node: process.version, platform: `${process.platform}-${process.arch}`, loadavg: os.loadavg() },
    backend: info,
    config: c,
    lora: ours,
    pytorch,
    rounds,
    ...(pytorch ? {} : { pytorchSkipped: why }),
    ratio,
    cpuRatio,
    floor,
  };
}
