// Fuzzing of the readers of untrusted files, with a fixed budget: a seeded mutation loop over valid
// safetensors files, PEFT adapters and Llama configs (test/helpers/fuzz.ts says what is mutated and
// what every case must satisfy). The same seed gives the same cases on every run; scripts/fuzz.js
// runs the same harness for as many cases and seeds as wanted (README: Guarantees).
//
// test/fixtures/fuzz/ holds inputs that once broke a rule (each was accepted wrongly, refused
// without saying where, or took the process down); each must now be refused as described below.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Seeds, TARGETS, Target, fuzz, makeSeeds, runAdapter, runConfig, runPretrained } from './helpers/fuzz';

const SEED = 20_240_601;
/** Cases per target: about a second each. */
const BUDGET: Record<Target, number> = { safetensors: 1500, adapter: 500, config: 2000, pretrained: 300 };

let tmp: string;
let seeds: Seeds;
beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-fuzz-'));
  seeds = await makeSeeds(tmp);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.each(TARGETS)('%s', (target) => {
  test(`${BUDGET[target]} mutated inputs: each accepted and checked against the bytes, or refused with an Error naming the entry point`, async () => {
    const stats = await fuzz({ seeds, target, seed: SEED, count: BUDGET[target], work: path.join(tmp, 'work') });
    expect(stats.findings.map((f) => `case ${f.index}: ${f.message}`)).toEqual([]);
    expect(stats.cases).toBe(BUDGET[target]);
    // Both outcomes occur: the mutations are neither all harmless nor all fatal.
    expect(stats.ok).toBeGreaterThan(0.05 * BUDGET[target]);
    expect(stats.rejected).toBeGreaterThan(0.3 * BUDGET[target]);
  });
});

describe('regression inputs (test/fixtures/fuzz)', () => {
  const dir = path.join(__dirname, 'fixtures', 'fuzz');
  // What each input once did, and the outcome it must have now: 'ok' (accepted, and the result
  // checked) or the message of the refusal.
  const expected: Record<string, RegExp | 'ok'> = {
    // accepted with modelType set to Object, Object.prototype.hasOwnProperty or Object.prototype;
    // an unknown architecture now falls back to model_type ("llama"), as any other does
    'config-architectures-constructor.json': 'ok',
    'config-architectures-hasownproperty.json': 'ok',
    'config-architectures-proto.json': 'ok',
    // accepted: sizes beyond 2^53 are not exact integers
    'config-max-position-embeddings-2e63.json': /^parseLlamaConfig: config\.max_position_embeddings must be a positive integer \(at most 2\^53 - 1\), got 9223372036854776000$/,
    'config-head-dim-1e300.json': /^parseLlamaConfig: config\.head_dim must be a positive integer .*, got 1e\+300$/,
    // "Maximum call stack size exceeded" while describing the value for the message
    'config-deep-hidden-size.json': /^parseLlamaConfig: config\.hidden_size must be a positive integer .*, got \[\[\[…\]\]\]$/,
    // fromPretrained allocated the model the config describes (18 GB here) before reading the
    // checkpoint, and the process was killed for running out of memory
    'pretrained-vocab-size-inflated.json': /^LlamaForCausalLM\.fromPretrained: .*config\.json describes a model of 4496309408 parameters, far more than the \d+ values the checkpoint holds/,
    // refused, but by "rand: shape must be …", which names neither fromPretrained nor the file
    'pretrained-intermediate-size-2e53.json': /^LlamaForCausalLM\.fromPretrained: .*config\.json describes a model of \d{19} parameters, far more than/,
    // a SyntaxError from the RegExp constructor, naming neither loadAdapter nor the file
    'adapter-target-modules-invalid-regex': /^loadAdapter: adapter_config\.json: target_modules "\[" is not a valid regular expression \(Invalid regular expression: /,
    // loaded: B held an Infinity, and every output of the layer became non-finite
    'adapter-nan-weights': /^loadAdapter: adapter_model\.safetensors: 'base_model\.model\.layers\.\d\.self_attn\.[qk]_proj\.lora_[AB]\.weight' holds NaN or Inf$/,
  };

  test('every input in the directory has an expectation here', () => {
    expect(fs.readdirSync(dir).sort()).toEqual(Object.keys(expected).sort());
  });

  test.each(Object.keys(expected))('%s', async (name) => {
    const file = path.join(dir, name);
    let out;
    if (name.startsWith('config-')) {
      out = runConfig(fs.readFileSync(file, 'utf8'));
    } else if (name.startsWith('pretrained-')) {
      // The config beside the weights of the test checkpoint it was mutated from.
      const ck = path.join(tmp, `regression-${name}`);
      fs.mkdirSync(ck, { recursive: true });
      fs.copyFileSync(file, path.join(ck, 'config.json'));
      fs.writeFileSync(path.join(ck, 'model.safetensors'), seeds.checkpoint.weights);
      out = await runPretrained(ck);
    } else {
      const copy = path.join(tmp, `regression-${name}`);
      fs.cpSync(file, copy, { recursive: true });
      out = await runAdapter(copy);
    }
    const want = expected[name];
    if (want === 'ok') {
      expect(out).toEqual({ kind: 'ok' });
    } else {
      expect(out.kind).toBe('rejected');
      expect(out.message).toMatch(want);
    }
  });
});
