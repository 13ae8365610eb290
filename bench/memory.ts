// `lora-cuda bench --memory` (`npm run bench -- --memory`): the peak device memory of one LoRA
// training step (loss, backward) of a small Llama, measured with cuda.memoryStats(), for
// T = 256 ... 2048 tokens, with and without gradient checkpointing. Memory, not time: it runs on
// any CUDA device, the emulator included (the committed table comes from it). --results writes
// memory-<gpu>.json.
import { LlamaForCausalLM, backendInfo, cuda, injectLora, manualSeed } from '../lib';

/** The model: narrow, so that the emulator measures T = 2048 in minutes; what grows with T is the same. */
export const MEMORY_BENCH_CONFIG = {
  model_type: 'llama', vocab_size: 512, hidden_size: 64, intermediate_size: 172, num_hidden_layers: 4,
  num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 4096, rope_theta: 10000,
};
export const MEMORY_BENCH_LORA = { targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], r: 8, alpha: 16, dropout: 0.05 };

export interface MemoryBenchRow {
  T: number;
  /** Bytes above the model's weights at the highest point of one step (loss and backward). */
  peak: number;
  /** The same with gradient checkpointing. */
  peakCheckpointed: number;
  /** Held after forward (the graph's saved activations), without / with checkpointing. */
  afterForward: number;
  afterForwardCheckpointed: number;
  /** What one decoder layer keeps for backward: (afterForward of L layers - of 1 layer) / (L - 1). */
  perLayer: number;
  /** One layer's input [1, T, hidden], which a checkpointed layer keeps. */
  layerInput: number;
}

function measure(T: number, layers: number, checkpointing: boolean): { peak: number; afterForward: number } {
  manualSeed(0);
  const model = new LlamaForCausalLM({ ...MEMORY_BENCH_CONFIG, num_hidden_layers: layers }, { device: 'cuda' });
  try {
    injectLora(model, MEMORY_BENCH_LORA);
    if (checkpointing) model.gradientCheckpointingEnable();
    model.train();
    const ids = [Array.from({ length: T }, (_, i) => (i * 31 + 7) % MEMORY_BENCH_CONFIG.vocab_size)];
    // The first step: its peak also holds the LoRA gradients made then (a few KiB here).
    cuda.synchronize();
    const base = cuda.memoryStats().allocated;
    cuda.resetPeakMemoryStats();
    const loss = model.loss(ids);
    const afterForward = cuda.memoryStats().allocated - base;
    loss.backward();
    loss.dispose();
    cuda.synchronize();
    return { peak: cuda.memoryStats().peak - base, afterForward };
  } finally {
    for (const p of model.parameters()) p.dispose();
  }
}

export function runMemoryBench(lengths: number[], log: (s: string) => void = () => undefined) {
  const info = backendInfo().cuda;
  if (!info.available) throw new Error(`bench --memory needs CUDA (the emulator will do): ${info.reason}`);
  const L = MEMORY_BENCH_CONFIG.num_hidden_layers;
  const rows: MemoryBenchRow[] = [];
  const kib = (b: number) => (b / 1024).toFixed(0).padStart(8);
  log('      T   peak KiB  ckpt KiB   fwd KiB  ckpt fwd  layer KiB');
  for (const T of lengths) {
    const plain = measure(T, L, false);
    const ckpt = measure(T, L, true);
    const one = measure(T, 1, false);
    const row: MemoryBenchRow = {
      T, peak: plain.peak, peakCheckpointed: ckpt.peak, afterForward: plain.afterForward, afterForwardCheckpointed: ckpt.afterForward,
      perLayer: (plain.afterForward - one.afterForward) / (L - 1), layerInput: T * MEMORY_BENCH_CONFIG.hidden_size * 4,
    };
    rows.push(row);
    log(`${String(T).padStart(7)} ${kib(row.peak)} ${kib(row.peakCheckpointed)} ${kib(row.afterForward)} ${kib(row.afterForwardCheckpointed)} ${kib(row.perLayer)}`);
  }
  // Linear in T: each doubling of T at most doubles the peak (a T^2 term would more than double it).
  const ratios = rows.slice(1).map((r, i) => r.peak / rows[i].peak);
  // Checkpointing saves every layer's activations but one, less the L layer inputs it keeps.
  const savings = rows.map((r) => ({ T: r.T, saved: r.peak - r.peakCheckpointed, expectedAtLeast: (L - 1) * r.perLayer - L * r.layerInput }));
  return {
    kind: 'memory',
    machine: { gpu: info.devices[0].name },
    model: { ...MEMORY_BENCH_CONFIG, lora: MEMORY_BENCH_LORA, batch: 1, dtype: 'float32' },
    rows,
    peakRatioPerDoubling: ratios,
    checkpointSavings: savings,
  };
}
