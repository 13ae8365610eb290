// `lora-cuda bench --generate` (`npm run bench -- --generate`): LlamaForCausalLM.generate tokens/s with
// and without the key/value cache on the CPU, for a small randomly initialised model (the weights do not
// change the work per token). --results writes generate-cpu-<cpu>.json (the machine named in it).
import * as os from 'os';
import { LlamaForCausalLM, backendInfo, manualSeed } from '../lib';

/** The model: 4 layers, hidden 256, 4 query heads over 2 kv heads, vocab 2048. */
export const GENERATE_BENCH_CONFIG = {
  model_type: 'llama', vocab_size: 2048, hidden_size: 256, intermediate_size: 688, num_hidden_layers: 4,
  num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024, rope_theta: 10000,
};

export interface GenerateBenchRow {
  useCache: boolean;
  batch: number;
  promptTokens: number;
  newTokens: number;
  /** Median wall time of one generate() call, and new tokens (all rows) per second from it. */
  ms: number;
  tokensPerSecond: number;
}

export function runGenerateBench(newTokens = 256, reps = 3, log: (s: string) => void = () => undefined) {
  manualSeed(0);
  const model = new LlamaForCausalLM(GENERATE_BENCH_CONFIG);
  const rows: GenerateBenchRow[] = [];
  for (const batch of [1, 4]) {
    const prompt = Array.from({ length: batch }, (_, b) => Array.from({ length: 16 }, (_, i) => (i * 31 + b * 7 + 5) % 2048));
    for (const useCache of [true, false]) {
      const times: number[] = [];
      model.generate(prompt, { maxNewTokens: 4, eosTokenId: null, useCache }); // warm-up
      for (let r = 0; r < reps; r++) {
        const t0 = process.hrtime.bigint();
        model.generate(prompt, { maxNewTokens: newTokens, eosTokenId: null, useCache });
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      times.sort((a, b) => a - b);
      const ms = times[Math.floor(times.length / 2)];
      const row = { useCache, batch, promptTokens: 16, newTokens, ms, tokensPerSecond: (batch * newTokens) / (ms / 1000) };
      rows.push(row);
      log(`batch ${batch}, ${useCache ? 'cache   ' : 'no cache'}: ${ms.toFixed(0)} ms, ${row.tokensPerSecond.toFixed(1)} tokens/s`);
    }
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  return {
    date: new Date().toISOString(),
    machine: { cpu, cores: os.cpus().length, node: process.version, platform: `${process.platform}-${process.arch}` },
    backend: backendInfo().cpu,
    model: GENERATE_BENCH_CONFIG,
    reps,
    rows,
  };
}
