// LlamaForCausalLM.generate: greedy decoding against a plain loop over forward(), end-of-sequence
// handling, seeded sampling, the top-k / top-p filters, dropout off, and bad input.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaForCausalLM, backendInfo, injectLora, manualSeed, nativeMemoryBytes, noGrad } from '../lib';
import { sampleToken } from '../lib/models/llama';
import { loadCases, writeCheckpoint } from './helpers/llama-weights';
import { expectThrows } from './helpers/expect-throws';

let tmp: string;
let model: LlamaForCausalLM;
beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-generate-'));
  await writeCheckpoint(tmp, loadCases().cases.llama_gqa);
  model = await LlamaForCausalLM.fromPretrained(tmp);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const PROMPTS = [[1, 5, 9, 2], [7, 7, 3, 60]];

/** Greedy continuation the long way: full logits from forward(), argmax of the last position. */
function greedyByForward(m: LlamaForCausalLM, prompts: number[][], n: number): number[][] {
  const rows = prompts.map((r) => r.slice());
  const V = m.config.vocabSize;
  for (let s = 0; s < n; s++) {
    const logits = noGrad(() => m.forward(rows)).toArray();
    const T = rows[0].length;
    rows.forEach((row, b) => {
      const off = (b * T + T - 1) * V;
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[off + v] > logits[off + best]) best = v;
      row.push(best);
    });
  }
  return rows;
}

test('greedy decoding is the argmax of forward()\'s last logits, step after step', () => {
  const want = greedyByForward(model, PROMPTS, 6);
  expect(model.generate(PROMPTS, { maxNewTokens: 6, eosTokenId: null })).toEqual(want);
  expect(model.generate(PROMPTS, { maxNewTokens: 0 })).toEqual(PROMPTS);
  expect(PROMPTS).toEqual([[1, 5, 9, 2], [7, 7, 3, 60]]); // the input is not modified
});

test('each row ends at its first end-of-sequence token; the run stops when all rows have', () => {
  const full = model.generate(PROMPTS, { maxNewTokens: 6, eosTokenId: null });
  // The token row 0 produces third, as the end-of-sequence token.
  const eos = full[0][PROMPTS[0].length + 2];
  const cut = model.generate(PROMPTS, { maxNewTokens: 6, eosTokenId: eos });
  const end = (row: number[]) => {
    const k = row.findIndex((id, i) => i >= 4 && id === eos);
    return k < 0 ? row : row.slice(0, k + 1);
  };
  expect(cut).toEqual(full.map(end));
  expect(cut[0]).toHaveLength(PROMPTS[0].length + 3);
  // A list of ids, and config.json's eos_token_id by default.
  expect(model.generate(PROMPTS, { maxNewTokens: 6, eosTokenId: [66, eos] })).toEqual(cut);
  const withEos = new LlamaForCausalLM({ ...model.config.raw, eos_token_id: eos });
  withEos.loadStateDict(model.stateDict());
  expect(withEos.generate(PROMPTS, { maxNewTokens: 6 })).toEqual(cut);
});

test('sampling is repeatable under manualSeed; topK 1 and a tiny topP are greedy', () => {
  const greedy = model.generate(PROMPTS, { maxNewTokens: 5, eosTokenId: null });
  manualSeed(3);
  const a = model.generate(PROMPTS, { maxNewTokens: 5, doSample: true, temperature: 1.5, topK: 0, eosTokenId: null });
  manualSeed(3);
  const b = model.generate(PROMPTS, { maxNewTokens: 5, doSample: true, temperature: 1.5, topK: 0, eosTokenId: null });
  expect(a).toEqual(b);
  expect(a).not.toEqual(greedy); // 10 draws over 67 tokens at a high temperature
  expect(model.generate(PROMPTS, { maxNewTokens: 5, doSample: true, topK: 1, eosTokenId: null })).toEqual(greedy);
  expect(model.generate(PROMPTS, { maxNewTokens: 5, doSample: true, topP: 1e-9, eosTokenId: null })).toEqual(greedy);
});

test('sampleToken: the draw u picks along the filtered distribution (probabilities 3/6, 2/6, 1/6)', () => {
  const l = [0, Math.log(2), Math.log(3)];
  const draw = (u: number, topK = 0, topP = 1, t = 1) => sampleToken(l, t, topK, topP, u);
  expect([0.1, 0.49, 0.51, 0.8, 0.84, 0.95].map((u) => draw(u))).toEqual([2, 2, 1, 1, 0, 0]);
  // topK 2 drops token 0: 3/5 and 2/5.
  expect([0.59, 0.61, 0.99].map((u) => draw(u, 2))).toEqual([2, 1, 1]);
  // topP 0.5 keeps token 2 alone (it reaches 0.5); 0.6 keeps tokens 2 and 1.
  expect([0.1, 0.99].map((u) => draw(u, 0, 0.5))).toEqual([2, 2]);
  expect([0.59, 0.61, 0.99].map((u) => draw(u, 0, 0.6))).toEqual([2, 1, 1]);
  // Ties at the k-th logit are kept, as transformers' top-k does.
  expect(sampleToken([1, 1, 1, 0], 1, 2, 1, 0.99)).toBe(2);
  // A high temperature flattens: probabilities near 1/3 each.
  expect(draw(0.34, 0, 1, 1e6)).toBe(1);
});

test('dropout is off while generating and the training flags are restored', () => {
  const m = new LlamaForCausalLM(model.config.raw);
  m.loadStateDict(model.stateDict());
  injectLora(m, { r: 4, alpha: 8, dropout: 0.5, targetModules: ['q_proj', 'v_proj'] });
  m.train();
  const want = greedyByForward(model, PROMPTS, 4); // B is zero: the adapter adds nothing yet
  expect(m.generate(PROMPTS, { maxNewTokens: 4, eosTokenId: null })).toEqual(want);
  expect([...m.modules()].every((x) => x.training)).toBe(true);
  m.model.layers.at(0)!.eval();
  m.generate(PROMPTS, { maxNewTokens: 1 });
  expect(m.model.layers.at(0)!.training).toBe(false);
  expect(m.model.layers.at(1)!.training).toBe(true);
});

test('bad input names the argument', () => {
  const g = (ids: unknown, o?: unknown) => () => model.generate(ids as number[][], o as never);
  expectThrows(g('hello'), TypeError, /^LlamaForCausalLM\.generate: inputIds must be number\[\]\[\]/);
  expectThrows(g([[1, 2], [3]], { attentionMask: [[1, 1], [1]] }), RangeError, /inputIds\[1\]\.length must be 2 \(rows must have equal lengths\)/);
  expectThrows(g([[1, 2], []]), RangeError, /inputIds\[1\] must be a non-empty array of token ids/);
  expectThrows(g([[1, 2], [3, 4]], { attentionMask: [[1, 1], [1, 0]] }), RangeError, /options\.attentionMask\[1\] must be left padding/);
  expectThrows(g([[1, 2], [3, 4]], { attentionMask: [[1, 1], [0, 0]] }), RangeError, /options\.attentionMask\[1\] must be at least one 1/);
  expectThrows(g([[1, 2], [3, 4]], { attentionMask: [[1, 1], [2, 1]] }), RangeError, /options\.attentionMask\[1\]\[0\] must be 0 \(padding\) or 1 \(token\), got 2/);
  expectThrows(g([[1]], { stopStrings: ['x'] }), TypeError, /options\.decode must be a function/);
  expectThrows(g([[1]], { stopStrings: [''], decode: () => '' }), TypeError, /options\.stopStrings must be an array of non-empty strings/);
  expectThrows(g([[1]], { onToken: 3 }), TypeError, /options\.onToken must be a function/);
  expectThrows(g([[1]], { useCache: 'yes' }), TypeError, /options\.useCache must be a boolean/);
  expectThrows(g([[1]], { padTokenId: 67 }), RangeError, /options\.padTokenId must be a token id in \[0, 67\), got 67/);
  expectThrows(g([[1, 67]]), RangeError, /inputIds\[0\]\[1\] must be a token id in \[0, 67\), got 67/);
  expectThrows(g([[1]], { maxNewTokens: -1 }), RangeError, /options\.maxNewTokens must be a non-negative integer/);
  expectThrows(g([[1]], { temperature: 0 }), RangeError, /options\.temperature must be a number > 0 \(use doSample: false for greedy decoding\), got 0/);
  expectThrows(g([[1]], { topP: 0 }), RangeError, /options\.topP must be in \(0, 1\], got 0/);
  expectThrows(g([[1]], { topK: 1.5 }), RangeError, /options\.topK must be a non-negative integer/);
  expectThrows(g([[1]], { eosTokenId: [1, 99] }), RangeError, /options\.eosTokenId\[1\] must be a token id in \[0, 67\), got 99/);
  expectThrows(g([[1]], { doSample: 1 }), TypeError, /options\.doSample must be a boolean/);
  expectThrows(g([[1]], { max_new_tokens: 3 }), TypeError, /unknown option "max_new_tokens"/);
});

describe('key/value cache', () => {
  const RAGGED = [[1, 5, 9, 2, 11, 4], [7, 3], [60, 2, 8, 8]];

  test('cached and uncached generation give the same tokens: greedy, sampled, equal and ragged rows', () => {
    for (const prompts of [PROMPTS, RAGGED]) {
      const greedy = model.generate(prompts, { maxNewTokens: 12, eosTokenId: null });
      expect(model.generate(prompts, { maxNewTokens: 12, eosTokenId: null, useCache: false })).toEqual(greedy);
      for (const seed of [3, 11]) {
        manualSeed(seed);
        const a = model.generate(prompts, { maxNewTokens: 12, doSample: true, temperature: 1.3, topK: 20, topP: 0.95, eosTokenId: null });
        manualSeed(seed);
        const b = model.generate(prompts, { maxNewTokens: 12, doSample: true, temperature: 1.3, topK: 20, topP: 0.95, eosTokenId: null, useCache: false });
        expect(a).toEqual(b);
      }
    }
    // Equal rows: the cache gives the greedy loop over forward().
    expect(model.generate(PROMPTS, { maxNewTokens: 6, eosTokenId: null })).toEqual(greedyByForward(model, PROMPTS, 6));
  });

  test('a left-padded batch continues each row as that row alone does', () => {
    const batch = model.generate(RAGGED, { maxNewTokens: 8, eosTokenId: null });
    RAGGED.forEach((row, b) => {
      expect(batch[b]).toEqual(model.generate([row], { maxNewTokens: 8, eosTokenId: null })[0]);
      expect(batch[b]).toEqual(greedyByForward(model, [row], 8)[0]);
    });
    // The same batch padded by the caller with a mask: rows come back as given, padding and all.
    const T = 6;
    const padded = RAGGED.map((r) => [...new Array<number>(T - r.length).fill(0), ...r]);
    const mask = RAGGED.map((r) => [...new Array<number>(T - r.length).fill(0), ...new Array<number>(r.length).fill(1)]);
    for (const useCache of [true, false]) {
      const out = model.generate(padded, { maxNewTokens: 8, eosTokenId: null, attentionMask: mask, useCache });
      out.forEach((row, b) => expect(row).toEqual([...padded[b].slice(0, T - RAGGED[b].length), ...batch[b]]));
    }
  });

  test('end of sequence per row, padding for finished rows, onToken per step, stop strings', () => {
    const full = model.generate(RAGGED, { maxNewTokens: 8, eosTokenId: null });
    const eos = full[1][RAGGED[1].length + 1]; // row 1's second new token
    const steps: (number | null)[][] = [];
    const cut = model.generate(RAGGED, { maxNewTokens: 8, eosTokenId: eos, onToken: (t, step) => {
      expect(step).toBe(steps.length);
      steps.push(t.slice());
    } });
    const end = (row: number[], T0: number) => {
      const k = row.findIndex((id, i) => i >= T0 && id === eos);
      return k < 0 ? row : row.slice(0, k + 1);
    };
    expect(cut).toEqual(full.map((r, b) => end(r, RAGGED[b].length)));
    expect(cut[1]).toHaveLength(RAGGED[1].length + 2);
    // The callback saw every new token of each row, in order, then null once the row had ended.
    cut.forEach((row, b) => {
      const seen = steps.map((t) => t[b]);
      const fresh = row.slice(RAGGED[b].length);
      expect(seen.slice(0, fresh.length)).toEqual(fresh);
      expect(seen.slice(fresh.length).every((x) => x === null)).toBe(true);
    });
    // Stop strings: a row ends at the token that completes the string in its new text.
    const decode = (ids: number[]) => ids.map((i) => `<${i}>`).join('');
    const stop = `<${full[0][RAGGED[0].length + 2]}>`;
    const stopped = model.generate(RAGGED, { maxNewTokens: 8, eosTokenId: null, stopStrings: [stop], decode });
    stopped.forEach((row, b) => {
      const fresh = full[b].slice(RAGGED[b].length);
      const k = fresh.findIndex((_, i) => decode(fresh.slice(0, i + 1)).includes(stop));
      expect(row).toEqual(k < 0 ? full[b] : full[b].slice(0, RAGGED[b].length + k + 1));
    });
    expect(stopped[0]).toHaveLength(RAGGED[0].length + 3);
  });

  test('a float64 model keeps a float64 cache: the same tokens as the full recompute', () => {
    const m64 = new LlamaForCausalLM(model.config.raw, { dtype: 'float64', init: false });
    m64.loadStateDict(model.stateDict());
    const greedy = m64.generate(RAGGED, { maxNewTokens: 10, eosTokenId: null });
    expect(m64.generate(RAGGED, { maxNewTokens: 10, eosTokenId: null, useCache: false })).toEqual(greedy);
  });

  test('the cache is freed: native memory is back where it was', () => {
    model.generate(RAGGED, { maxNewTokens: 3 });
    const before = nativeMemoryBytes();
    model.generate(RAGGED, { maxNewTokens: 20, eosTokenId: null });
    // Garbage of earlier tests may be collected meanwhile: at most, never the cache's bytes more.
    expect(nativeMemoryBytes()).toBeLessThanOrEqual(before);
  });
});

// On a GPU (or the CUDA emulator): the cache on the device gives the full recompute's tokens, and
// the CPU's for greedy decoding.
(backendInfo().cuda.available ? describe : describe.skip)('key/value cache on CUDA', () => {
  const RAGGED = [[1, 5, 9, 2, 11, 4], [7, 3], [60, 2, 8, 8]];
  let gpu: LlamaForCausalLM;
  beforeAll(async () => {
    gpu = await LlamaForCausalLM.fromPretrained(tmp, { device: 'cuda' });
  });

  test('cached and uncached generation give the same tokens, greedy and sampled', () => {
    for (const prompts of [PROMPTS, RAGGED]) {
      const greedy = gpu.generate(prompts, { maxNewTokens: 10, eosTokenId: null });
      expect(gpu.generate(prompts, { maxNewTokens: 10, eosTokenId: null, useCache: false })).toEqual(greedy);
      expect(greedy).toEqual(model.generate(prompts, { maxNewTokens: 10, eosTokenId: null }));
      manualSeed(5);
      const a = gpu.generate(prompts, { maxNewTokens: 10, doSample: true, temperature: 1.3, topK: 20, eosTokenId: null });
      manualSeed(5);
      const b = gpu.generate(prompts, { maxNewTokens: 10, doSample: true, temperature: 1.3, topK: 20, eosTokenId: null, useCache: false });
      expect(a).toEqual(b);
    }
  });
});

describe('rotary tables', () => {
  // head_dim 64: the tables of each length are 2 x T x 64 floats.
  const config = {
    model_type: 'llama', vocab_size: 32, hidden_size: 128, intermediate_size: 64, num_hidden_layers: 1,
    num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 512, rope_theta: 10000,
    rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  };

  test('a long generation holds no tables per length: native memory is back where it was', () => {
    manualSeed(0);
    const m = new LlamaForCausalLM(config);
    m.generate([[1, 2]], { maxNewTokens: 2, eosTokenId: null }); // the first tables and any lazy state
    const before = nativeMemoryBytes();
    m.generate([[1, 2]], { maxNewTokens: 150, eosTokenId: null });
    // One table per length kept would be 2 * 4 * 64 * (3 + ... + 151) bytes, about 5.8 MB.
    expect(nativeMemoryBytes() - before).toBeLessThan(2 * 4 * 64 * 152 * 2);
  });

  test('tables cut from longer ones are those of the length itself, bit for bit', () => {
    manualSeed(1);
    const grown = new LlamaForCausalLM(config);
    const fresh = new LlamaForCausalLM(config, { init: false });
    fresh.loadStateDict(grown.stateDict());
    const ids = (T: number) => [Array.from({ length: T }, (_, i) => (i * 7 + 3) % 32)];
    noGrad(() => grown.forward(ids(300))); // the tables now cover 300 positions
    // Each length larger than twice the one before: `fresh` computes tables of exactly that length.
    for (const T of [5, 64, 299]) {
      const cut = noGrad(() => grown.forward(ids(T))).toArray();
      const own = noGrad(() => fresh.forward(ids(T))).toArray();
      expect(Buffer.from(cut.buffer).equals(Buffer.from(own.buffer))).toBe(true);
    }
  });
});
