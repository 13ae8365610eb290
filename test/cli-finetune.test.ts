// `lora-cuda finetune` end to end, in-process, on a tiny Llama checkpoint and a
// tiny BPE tokenizer written to a temporary directory.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaForCausalLM, backendInfo, loadAdapter, loadTokenizer, noGrad } from '../lib';
import { SafetensorsFile, saveSafetensors } from '../lib/safetensors';
import { CliError, CliIO } from '../lib/cli/io';
import { FinetuneHooks, finetuneCommand } from '../lib/cli/finetune';
import { IGNORE_INDEX, binByTokens, epochOrder, makeBatch, makePackedBatch, splitTrainEval } from '../lib/cli/data';
import { buildExamples } from '../lib/data';
import { LINES, finetuneFixture } from './helpers/finetune-fixture';

let tmp: string;
let modelDir: string;
let txt: string;
let jsonl: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-finetune-'));
  ({ model: modelDir, data: txt } = await finetuneFixture(tmp));
  jsonl = path.join(tmp, 'data.jsonl');
  fs.writeFileSync(jsonl, [
    { prompt: 'q: the cat ?', completion: ' ans sat on the mat' },
    { prompt: 'q: the dog ?', completion: ' ans ran to a ball' },
    { text: 'a big red ball' },
    { prompt: 'q: a ball ?', completion: ' ans big red' },
  ].map((o) => JSON.stringify(o)).join('\n') + '\n');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the command as the CLI entry does: CliErrors become one stderr line and their exit code. */
async function run(args: string[], hooks?: FinetuneHooks): Promise<Result> {
  let stdout = '';
  let stderr = '';
  const io: CliIO = { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t), isTTY: false, columns: 80 };
  let code: number;
  try {
    code = await finetuneCommand(args, io, hooks);
  } catch (e) {
    if (!(e instanceof CliError)) throw e;
    expect(e.message).not.toMatch(/\n/);
    stderr += `lora-cuda finetune: ${e.message}\n`;
    code = e.exitCode;
  }
  return { code, stdout, stderr };
}

function losses(stdout: string): number[] {
  return [...stdout.matchAll(/^step \d+\/\d+ .* loss ([\d.]+)/gm)].map((m) => Number(m[1]));
}

function adapterTensors(dir: string): Record<string, Float32Array> {
  const st = SafetensorsFile.openSync(path.join(dir, 'adapter_model.safetensors'));
  try {
    return Object.fromEntries(st.keys().map((k) => [k, st.readSync(k).toArray() as Float32Array]));
  } finally {
    st.close();
  }
}

/** The run failed with `code` and one stderr line matching `re`. */
function one(r: Result, code: number, re: RegExp): void {
  expect(r.code).toBe(code);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^lora-cuda finetune: /);
  expect(lines[0]).toMatch(re);
}

// Padded batches of --batch-size rows, as before packing (the step counts below depend on it).
const base = () => ['--model', modelDir, '--r', '4', '--alpha', '8', '--target', 'q_proj,v_proj,up_proj', '--no-pack'];

test('--help lists the options', async () => {
  const r = await run(['--help']);
  expect(r.code).toBe(0);
  for (const flag of ['--model DIR', '--data FILE', '--r N', '--eval-every', '--save-every', '--resume', '--grad-accum', '--seq-len', '--device',
    '--lr-schedule NAME', '--warmup-steps N', '--max-grad-norm X', '--gradient-checkpointing']) {
    expect(r.stdout).toContain(flag);
  }
});

test('the training loss falls over a few epochs on a tiny repetitive dataset', async () => {
  const data = path.join(tmp, 'repeat.txt');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => (i % 2 ? 'the dog ran to the big red ball' : 'the cat sat on the mat')).join('\n'));
  const r = await run(['--model', modelDir, '--data', data, '--out', path.join(tmp, 'out-repeat'), '--target', 'q_proj,v_proj,lm_head',
    '--epochs', '12', '--batch-size', '4', '--lr', '0.05', '--dropout', '0', '--no-pack']);
  expect(r.code).toBe(0);
  // The head is adapted too: with a frozen random head a tiny model cannot sharpen its logits.
  expect(r.stdout).toMatch(/on 5 layers \(q_proj, v_proj, lm_head\)/);
  const l = losses(r.stdout);
  expect(l).toHaveLength(24); // 12 epochs x 2 steps
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  expect(mean(l.slice(-4))).toBeLessThan(0.5 * mean(l.slice(0, 4))); // about 3.9 -> 0.8
  expect(mean(l.slice(-4))).toBeLessThan(mean(l.slice(8, 12)));
});

test('learning-rate schedule and gradient clipping: the rates of transformers\' formulas, the norms logged', async () => {
  const lrsOf = (stdout: string) => [...stdout.matchAll(/^step \d+\/\d+ .* lr ([\d.e+-]+)/gm)].map((m) => Number(m[1]));
  const normsOf = (stdout: string) => [...stdout.matchAll(/^step \d+\/\d+ .* grad-norm ([\d.]+)/gm)].map((m) => Number(m[1]));
  // 12 examples, batch 3 -> 4 steps per epoch, 2 epochs -> 8 steps.
  const common = [...base(), '--data', txt, '--epochs', '2', '--batch-size', '3', '--lr', '0.01', '--dropout', '0'];
  const linear = await run([...common, '--out', path.join(tmp, 'out-linear'), '--lr-schedule', 'linear', '--warmup-steps', '3']);
  expect(linear.code).toBe(0);
  expect(linear.stdout).toMatch(/lr 0\.01 \(linear, warm-up 3 steps\), gradients clipped to norm 1$/m);
  // The rate used by step k (k = 1…8) is 0.01 · f(k - 1): f(s) = s / 3 during the warm-up, then (8 - s) / 5.
  const f = (s: number) => (s < 3 ? s / 3 : Math.max(0, (8 - s) / 5));
  expect(lrsOf(linear.stdout)).toEqual(Array.from({ length: 8 }, (_, k) => Number((0.01 * f(k)).toExponential(2))));
  const norms = normsOf(linear.stdout);
  expect(norms).toHaveLength(8);
  norms.forEach((n) => expect(n).toBeGreaterThan(0));

  // Clipping changes the run; --max-grad-norm 0 turns it off (and the norm is not logged).
  const unclipped = await run([...common, '--out', path.join(tmp, 'out-noclip'), '--max-grad-norm', '0']);
  const clipped = await run([...common, '--out', path.join(tmp, 'out-clip'), '--max-grad-norm', '1e-4']);
  expect(unclipped.code).toBe(0);
  expect(clipped.code).toBe(0);
  expect(unclipped.stdout).toMatch(/no gradient clipping$/m);
  expect(normsOf(unclipped.stdout)).toHaveLength(0);
  expect(lrsOf(unclipped.stdout)).toEqual(Array(8).fill(0.01)); // constant by default
  const a = adapterTensors(path.join(tmp, 'out-noclip'));
  const b = adapterTensors(path.join(tmp, 'out-clip'));
  expect(Object.keys(a).some((k) => !Buffer.from(a[k].buffer).equals(Buffer.from(b[k].buffer)))).toBe(true);
});

test('trains on .txt: progress and eval lines, a PEFT adapter that loads into a fresh model', async () => {
  const out = path.join(tmp, 'out-txt');
  const r = await run([...base(), '--data', txt, '--out', out, '--epochs', '8', '--batch-size', '4', '--lr', '0.05',
    '--dropout', '0', '--eval-every', '3', '--eval-fraction', '0.2']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/data: .*: 12 examples \(10 train, 2 eval\)/);
  expect(r.stdout).toMatch(/8 epochs x 3 steps = 24 steps/);
  const l = losses(r.stdout);
  expect(l).toHaveLength(24);
  expect(l[23]).toBeLessThan(l[0]);
  const evals = [...r.stdout.matchAll(/^eval step (\d+): loss ([\d.]+) \(2 examples/gm)];
  expect(evals.map((m) => Number(m[1]))).toEqual([3, 6, 9, 12, 15, 18, 21, 24]);
  expect(r.stdout).toMatch(/tok\/s/);
  expect(r.stdout.trim().split('\n').pop()).toBe(`adapter written to ${out}`);

  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8, lora_dropout: 0, base_model_name_or_path: modelDir });
  expect(cfg.target_modules.sort()).toEqual(['q_proj', 'up_proj', 'v_proj']);
  const fresh = await LlamaForCausalLM.fromPretrained(modelDir);
  const names = await loadAdapter(fresh, out);
  expect(names).toHaveLength(6);
  // The trained adapter changes the model's output.
  const plain = await LlamaForCausalLM.fromPretrained(modelDir);
  const ids = [[3, 4, 5, 6]];
  const a = noGrad(() => fresh.forward(ids)).toArray();
  const b = noGrad(() => plain.forward(ids)).toArray();
  expect(a.some((v, i) => v !== b[i])).toBe(true);
  expect(fs.readdirSync(path.join(out, 'checkpoint')).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors', 'optimizer.safetensors', 'trainer_state.json']);
});

test('.jsonl prompt/completion: the prompt is masked with -100 and the batch loss matches hand-made labels', async () => {
  const tok = await loadTokenizer(modelDir);
  const p = tok.encode('q: the cat ?').ids;
  const c = tok.encode(' ans sat on the mat', { add_special_tokens: false }).ids;
  const res = buildExamples([{ prompt: 'q: the cat ?', completion: ' ans sat on the mat' }, { text: 'a big red ball' }], tok, { addEos: false });
  expect(res.examples[0].ids).toEqual([...p, ...c]);
  const batch = makeBatch(res.examples, 1);
  const T = p.length + c.length;
  const textIds = tok.encode('a big red ball').ids;
  expect(batch.ids[1]).toEqual([...textIds, ...new Array(T - textIds.length).fill(1)]);
  const hand = [
    [...p.map(() => -100), ...c],
    [...textIds, ...new Array(T - textIds.length).fill(-100)],
  ];
  expect(batch.labels).toEqual(hand);
  expect(batch.layout.attentionMask).toEqual([new Array(T).fill(1), [...textIds.map(() => 1), ...new Array(T - textIds.length).fill(0)]]);
  expect(batch.targets).toBe(c.length + textIds.length - 1);

  const model = await LlamaForCausalLM.fromPretrained(modelDir);
  const ours = noGrad(() => model.loss(batch.ids, batch.labels)).item();
  const ref = noGrad(() => model.loss(batch.ids, hand)).item();
  expect(ours).toBe(ref);
  // Without the mask (the prompt's tokens counted too) the loss is a different number.
  const unmasked = noGrad(() => model.loss(batch.ids, [batch.ids[0], hand[1]])).item();
  expect(unmasked).not.toBe(ours);
  // Padding at the end changes nothing for the real tokens: the loss of the
  // padded short row equals its loss alone.
  const alone = noGrad(() => model.loss([textIds])).item();
  const paddedOnly = noGrad(() => model.loss([batch.ids[1]], [batch.labels[1]])).item();
  expect(Math.abs(alone - paddedOnly)).toBeLessThan(1e-6);

  // With the attention mask the padded row's loss is that of the row alone also through the batch's layout.
  const masked = noGrad(() => model.loss(batch.ids, batch.labels, batch.layout)).item();
  const rowsAlone = noGrad(() => model.loss([res.examples[0].ids], [res.examples[0].labels])).item() * c.length +
    alone * (textIds.length - 1);
  expect(Math.abs(masked - rowsAlone / (c.length + textIds.length - 1))).toBeLessThan(1e-5);
  expect(IGNORE_INDEX).toBe(-100);

  const out = path.join(tmp, 'out-jsonl');
  const r = await run(['--model', modelDir, '--target', 'all-linear', '--data', jsonl, '--out', out, '--epochs', '2', '--batch-size', '2', '--add-eos']);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/on 14 layers \(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj\)/);
  expect(r.stdout).toMatch(/4 examples \(4 train, 0 eval\)/);
  expect(losses(r.stdout)).toHaveLength(4);
  const fresh = await LlamaForCausalLM.fromPretrained(modelDir);
  expect(await loadAdapter(fresh, out)).toHaveLength(14);
});

describe('real data: chat rows, packing, token budgets', () => {
  const write = (name: string, rows: unknown[]) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, rows.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n') + '\n');
    return f;
  };
  const conv = (q: string, a: string) => ({ messages: [{ role: 'user', content: q }, { role: 'assistant', content: a }] });

  test('.jsonl chat rows: the template renders them, padded by default; a conversation without an assistant turn is a counted skip', async () => {
    const data = write('chat.jsonl', [
      conv('the cat ?', 'sat on the mat'), conv('the dog ?', 'ran to a ball'), conv('a ball ?', 'big red'),
      { messages: [{ role: 'user', content: 'the cat ?' }] },
      { instruction: 'the dog ?', input: '', output: 'ran to the mat' },
    ]);
    const r = await run([...base().filter((a) => a !== '--no-pack'), '--data', data, '--out', path.join(tmp, 'out-chat'), '--batch-size', '2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/data: .*: 4 examples \(4 train, 0 eval\), [\d,]+ tokens, [\d,]+ trained; 1 dropped \(no assistant turn\)/);
    expect(r.stdout).toMatch(/1 epoch x 2 steps = 2 steps \(batch 2 x grad-accum 1\)/);
    // Packing asked for: chat rows end to end, the held-out rows packed too.
    const p = await run([...base().filter((x) => x !== '--no-pack'), '--data', data, '--out', path.join(tmp, 'out-chat-pack'), '--pack', '--eval-every', '1', '--eval-fraction', '0.25']);
    expect(p.code).toBe(0);
    expect(p.stdout).toMatch(/3 train, 1 eval/);
    expect(p.stdout).toMatch(/1 epoch x 1 step = 1 step \(packed rows of up to 1024 tokens x grad-accum 1\)/);
    expect(p.stdout).toMatch(/^eval step 1: loss [\d.]+ \(1 examples/m);

    // The labels: only the assistant turn (its content and end-of-turn token) is trained.
    const tok = await loadTokenizer(modelDir);
    const { examples } = buildExamples([conv('the cat ?', 'sat on the mat')], tok);
    const trained = examples[0].ids.filter((_, t) => examples[0].labels[t] !== IGNORE_INDEX);
    expect(trained).toEqual(tok.encode('sat on the mat </s>', { add_special_tokens: false }).ids);
    expect(examples[0].ids.length).toBeGreaterThan(trained.length);
  });

  test('bad chat data: an unknown row shape names its line; a template that fails and a checkpoint without one are one-line errors', async () => {
    one(await run([...base(), '--data', write('badchat1.jsonl', [conv('a', 'b'), { messages: 'hi' }]), '--out', path.join(tmp, 'e1')]), 1,
      /--data .*badchat1\.jsonl line 2: "messages" must be an array of \{"role", "content"\} messages, got string/);
    one(await run([...base(), '--data', write('badchat2.jsonl', [conv('a', 'b'), { question: 'q', answer: 'a' }]), '--out', path.join(tmp, 'e1')]), 1,
      /badchat2\.jsonl line 2: unknown row shape \(keys "question", "answer"\)/);
    const noTemplate = path.join(tmp, 'model-no-template');
    fs.cpSync(modelDir, noTemplate, { recursive: true });
    fs.writeFileSync(path.join(noTemplate, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', pad_token: '<pad>' }));
    const chat = write('chat1.jsonl', [{ text: 'the cat' }, conv('the cat ?', 'sat')]);
    const args = (m: string) => ['--model', m, '--target', 'q_proj', '--data', chat, '--out', path.join(tmp, 'e2')];
    one(await run(args(noTemplate)), 1, /--data .*chat1\.jsonl line 2: this tokenizer has no chat template .*; add chat_template to tokenizer_config\.json, or use prompt\/completion rows$/);
    fs.writeFileSync(path.join(noTemplate, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', chat_template: "{{ raise_exception('no such role') }}" }));
    one(await run(args(noTemplate)), 1, /chat1\.jsonl line 2: the chat template failed to render .*no such role/);
  });

  test('.txt packs by default: one row per micro-batch, documents apart; the packed loss is that of the documents run alone', async () => {
    const r = await run(['--model', modelDir, '--r', '4', '--target', 'q_proj', '--data', txt, '--out', path.join(tmp, 'out-pack'), '--batch-tokens', '16', '--max-length', '8']);
    expect(r.code).toBe(0);
    const tok = await loadTokenizer(modelDir);
    const { examples } = buildExamples(LINES.map((text) => ({ text })), tok, { addEos: false, maxLength: 8 });
    const bins = binByTokens(examples.map((_, i) => i), examples.map((e) => e.ids.length), 16, false);
    expect(bins.flat().sort((a, b) => a - b)).toEqual(examples.map((_, i) => i));
    for (const b of bins) expect(b.reduce((n, i) => n + examples[i].ids.length, 0)).toBeLessThanOrEqual(16);
    expect(r.stdout).toMatch(new RegExp(`1 epoch x ${bins.length} steps = ${bins.length} steps \\(packed rows of up to 16 tokens x grad-accum 1\\)`));
    expect(bins.length).toBeLessThan(examples.length);

    const docs = bins[0].map((i) => examples[i]);
    const packed = makePackedBatch(docs);
    expect(packed.ids).toHaveLength(1);
    expect(packed.layout.cuSeqLens).toEqual([[0, ...docs.map((_, k) => docs.slice(0, k + 1).reduce((n, d) => n + d.ids.length, 0))]]);
    const model = await LlamaForCausalLM.fromPretrained(modelDir);
    const together = noGrad(() => model.loss(packed.ids, packed.labels, packed.layout)).item();
    let sum = 0;
    let n = 0;
    for (const d of docs) {
      sum += noGrad(() => model.loss([d.ids], [d.labels])).item() * (d.ids.length - 1);
      n += d.ids.length - 1;
    }
    expect(packed.targets).toBe(n);
    expect(Math.abs(together - sum / n)).toBeLessThan(1e-5);
  });

  test('--batch-tokens with padded rows: rows of similar length, rows x longest within the budget', async () => {
    const r = await run([...base(), '--data', txt, '--out', path.join(tmp, 'out-budget'), '--batch-tokens', '12', '--max-length', '6']);
    expect(r.code).toBe(0);
    const lengths = [7, 3, 3, 6, 2, 5];
    const bins = binByTokens([0, 1, 2, 3, 4, 5], lengths, 12, true);
    expect(bins.flat().sort()).toEqual([0, 1, 2, 3, 4, 5]);
    for (const b of bins) if (b.length > 1) expect(b.length * Math.max(...b.map((i) => lengths[i]))).toBeLessThanOrEqual(12);
    expect(r.stdout).toMatch(/padded batches of up to 12 tokens/);
    one(await run([...base(), '--data', txt, '--out', path.join(tmp, 'out-budget'), '--batch-tokens', '4', '--max-length', '6']), 2,
      /--batch-tokens 4 is below --max-length 6/);
  });

  test('--max-length cuts and reports; --seq-len is its older name; unknown text is warned about', async () => {
    const r = await run([...base(), '--data', txt, '--out', path.join(tmp, 'out-maxlen'), '--max-length', '3']);
    expect(r.code).toBe(0);
    const long = LINES.filter((l) => l.split(' ').length > 3).length;
    expect(r.stdout).toMatch(new RegExp(`; ${long} cut to --max-length 3`));
    one(await run([...base(), '--data', txt, '--max-length', '3', '--seq-len', '4']), 2, /--max-length 3 and --seq-len 4 disagree/);
    const unk = write('unknown.txt', ['the cat 123 456', 'the dog 789 000']);
    const u = await run([...base(), '--data', unk, '--out', path.join(tmp, 'out-unk')]);
    expect(u.code).toBe(0);
    expect(u.stderr).toMatch(/^warning: --data .*unknown\.txt: [\d.]+% of the text is unknown to the tokenizer \(\d+ unknown tokens/m);
    const plain = await run([...base(), '--data', txt, '--out', path.join(tmp, 'out-unk')]);
    expect(plain.stderr).not.toMatch(/unknown to the tokenizer/);
  });

  test('packing is recorded in the checkpoint: --resume keeps it and refuses a change', async () => {
    const out = path.join(tmp, 'out-pack-resume');
    const args = ['--model', modelDir, '--r', '4', '--target', 'q_proj', '--data', txt, '--out', out, '--batch-tokens', '16', '--max-length', '8', '--dropout', '0'];
    const full = await run([...args.map((a) => (a === out ? `${out}-full` : a))]);
    expect(full.code).toBe(0);
    const first = await run([...args, '--max-steps', '2']);
    expect(first.code).toBe(0);
    const meta = JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8')).metadata;
    expect(meta.args).toMatchObject({ pack: true, batchTokens: 16, seqLen: 8 });
    expect(meta.data.tokens).toBeGreaterThan(0);
    one(await run(['--out', out, '--resume', '--no-pack']), 2, /--resume: --pack was true in the checkpoint, got false/);
    const rest = await run(['--out', out, '--resume']);
    expect(rest.code).toBe(0);
    const a = adapterTensors(out);
    const b = adapterTensors(`${out}-full`);
    for (const k of Object.keys(b)) expect(Buffer.from(a[k].buffer).equals(Buffer.from(b[k].buffer))).toBe(true);
  });
});

test('data order and split are seeded and stable', () => {
  expect(epochOrder(10, 0, 0)).toEqual(epochOrder(10, 0, 0));
  expect(epochOrder(10, 0, 0)).not.toEqual(epochOrder(10, 0, 1));
  expect(epochOrder(10, 0, 0)).not.toEqual(epochOrder(10, 1, 0));
  expect([...epochOrder(10, 3, 2)].sort((a, b) => a - b)).toEqual([...Array(10).keys()]);
  expect(splitTrainEval(10, 0.1, 0).eval).toHaveLength(1);
  expect(splitTrainEval(2, 0.1, 0).eval).toHaveLength(1);
  expect(splitTrainEval(1, 0.5, 0).eval).toHaveLength(0);
  expect(splitTrainEval(10, 0.9, 0).train.length).toBe(1);
});

describe('resume', () => {
  // 12 examples, 1 held out -> 11 train; batch 2 -> 6 micro-batches; grad-accum 2
  // -> 3 steps per epoch; 2 epochs -> 6 steps. Dropout is on, so the generator
  // state matters as much as the adapter, the moments and the data position; the
  // learning rate warms up and decays, so a resumed run must pick up the schedule too.
  const args = (out: string) => [...base(), '--data', txt, '--out', out, '--epochs', '2', '--batch-size', '2',
    '--grad-accum', '2', '--dropout', '0.1', '--lr', '0.01', '--seed', '7', '--eval-every', '2',
    '--lr-schedule', 'cosine', '--warmup-steps', '2', '--max-grad-norm', '0.5'];
  let straight: Record<string, Float32Array>;

  beforeAll(async () => {
    const r = await run(args(path.join(tmp, 'straight')));
    expect(r.code).toBe(0);
    expect(losses(r.stdout)).toHaveLength(6);
    straight = adapterTensors(path.join(tmp, 'straight'));
  });

  function expectSame(dir: string): void {
    const got = adapterTensors(dir);
    expect(Object.keys(got).sort()).toEqual(Object.keys(straight).sort());
    for (const k of Object.keys(straight)) expect(Buffer.from(got[k].buffer).equals(Buffer.from(straight[k].buffer))).toBe(true);
    expect(fs.readFileSync(path.join(dir, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(tmp, 'straight', 'adapter_model.safetensors')))).toBe(true);
  }

  test('4 steps (--max-steps), then --resume for the other 2: the same adapter bit for bit', async () => {
    const out = path.join(tmp, 'resumed');
    const first = await run([...args(out), '--max-steps', '4', '--save-every', '1']);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/stopped at --max-steps 4 \(step 4 of 6\); continue with --resume/);
    expect(losses(first.stdout)).toHaveLength(4);
    const second = await run([...args(out), '--resume']);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(/resuming from .* at step 4 of 6/);
    expect(second.stdout).toMatch(/^step 5\/6/m);
    expect(losses(second.stdout)).toHaveLength(2);
    expectSame(out);
    // Options not given on --resume come from the checkpoint; finished runs have nothing to do.
    const again = await run(['--out', out, '--resume']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/nothing to do: the checkpoint is at step 6 of 6/);
    expectSame(out);
  });

  test('--gradient-checkpointing (dropout on, grad-accum 2): the same adapter bit for bit', async () => {
    const out = path.join(tmp, 'checkpointed');
    const r = await run([...args(out), '--gradient-checkpointing']);
    expect(r.code).toBe(0);
    expect(losses(r.stdout)).toHaveLength(6);
    expectSame(out);
  });

  test('Ctrl-C (SIGINT) during training saves the adapter and checkpoint, exits 130; --resume finishes identically', async () => {
    const out = path.join(tmp, 'sigint');
    const listeners = process.listenerCount('SIGINT');
    const r = await run(args(out), {
      onStep: ({ step }) => {
        expect(process.listenerCount('SIGINT')).toBe(listeners + 1);
        if (step === 2) setImmediate(() => process.emit('SIGINT'));
      },
    });
    expect(r.code).toBe(130);
    expect(process.listenerCount('SIGINT')).toBe(listeners);
    expect(r.stderr).toMatch(/^interrupt: finishing the current step/m);
    expect(r.stderr).toMatch(/^interrupted at step 2\/6: adapter and checkpoint written to .*; continue with --resume$/m);
    expect(losses(r.stdout)).toHaveLength(2);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8')).step).toBe(2);
    const fresh = await LlamaForCausalLM.fromPretrained(modelDir);
    expect(await loadAdapter(fresh, out)).toHaveLength(6);

    const rest = await run([...args(out), '--resume']);
    expect(rest.code).toBe(0);
    expect(losses(rest.stdout)).toHaveLength(4);
    expectSame(out);
  });

  test('SIGINT in the middle of gradient accumulation abandons that step; resume redoes it', async () => {
    const out = path.join(tmp, 'sigint-mid');
    // Interrupt as soon as the first micro-batch of step 4 has run: the
    // step-3 hook schedules the signal after the event loop's next turn.
    const r = await run(args(out), {
      onStep: ({ step }) => {
        if (step === 3) setImmediate(() => setImmediate(() => process.emit('SIGINT')));
      },
    });
    expect(r.code).toBe(130);
    const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8'));
    expect(state.step).toBe(3);
    expect(r.stderr).toMatch(/interrupted at step 3\/6/);
    expect(losses(r.stdout)).toHaveLength(3);
    expect((await run([...args(out), '--resume'])).code).toBe(0);
    expectSame(out);
  });

  test('a checkpoint of the format before the Trainer (version 1) resumes to the same adapter', async () => {
    // test/fixtures/finetune-v1-checkpoint: step 3 of this run (args(...) with --max-steps 3), as
    // written by the finetune command before checkpoints went through the Trainer.
    const out = path.join(tmp, 'from-v1');
    fs.cpSync(path.join(__dirname, 'fixtures', 'finetune-v1-checkpoint'), path.join(out, 'checkpoint'), { recursive: true });
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8')).version).toBe(1);
    const r = await run([...args(out), '--resume']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/resuming from .* at step 3 of 6/);
    expect(losses(r.stdout)).toHaveLength(3);
    // The fixture's first 3 steps were computed by one BLAS kernel; this machine's BLAS (OpenBLAS picks
    // its kernel per CPU) may round the products differently, so the continuation is compared within
    // float32 rounding (1e-7 seen). A checkpoint read wrongly (Adam moments, step, schedule, random
    // state) moves an adapter entry by about the learning rate, 1e-2.
    const got = adapterTensors(out);
    expect(Object.keys(got).sort()).toEqual(Object.keys(straight).sort());
    for (const k of Object.keys(straight)) {
      let worst = 0;
      for (let i = 0; i < straight[k].length; i++) worst = Math.max(worst, Math.abs(got[k][i] - straight[k][i]));
      expect(worst).toBeLessThan(1e-5);
    }
    expect(JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8')).version).toBe(2);
  });

  test('resume refuses changed run-defining options and changed data', async () => {
    const out = path.join(tmp, 'resumed');
    const r = await run([...args(out), '--batch-size', '3', '--resume']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^lora-cuda finetune: --resume: --batch-size was 2 in the checkpoint, got 3; resuming needs the same value/);
    const other = path.join(tmp, 'other.txt');
    fs.writeFileSync(other, LINES.slice(1).join('\n'));
    const d = await run([...args(out), '--data', other, '--resume']);
    expect(d.code).toBe(1);
    expect(d.stderr).toMatch(/differs from the data the checkpoint was trained on; resume with the same file/);
    const none = await run([...args(path.join(tmp, 'never')), '--resume']);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/--resume: no checkpoint in .*never.checkpoint .*run without --resume to start fresh/);
  });
});

describe('errors: exit code and one line with the fix', () => {
  const out = () => path.join(tmp, 'err-out');

  test('usage errors (exit 2)', async () => {
    one(await run(['--data', txt]), 2, /--model DIR is required/);
    one(await run(['--model', modelDir]), 2, /--data FILE is required/);
    one(await run(['--model', modelDir, '--data', txt, '--bogus']), 2, /unknown option --bogus/);
    one(await run(['--model', modelDir, '--data', txt, '--r', '0']), 2, /--r must be >= 1/);
    one(await run(['--model', modelDir, '--data', txt, '--dropout', '1']), 2, /--dropout must be in \[0, 1\)/);
    one(await run(['--model', modelDir, '--data', txt, '--device', 'tpu']), 2, /--device must be cpu or cuda/);
    one(await run(['--model', modelDir, '--data', txt, '--lr', '0']), 2, /--lr must be > 0/);
    one(await run(['--model', modelDir, '--data', txt, '--lr-schedule', 'step']), 2, /--lr-schedule must be constant, linear, cosine, got "step"/);
    one(await run(['--model', modelDir, '--data', txt, '--max-grad-norm', '-1']), 2, /--max-grad-norm must be >= 0/);
    one(await run(['--model', modelDir, '--data', txt, '--out', out(), '--lr-schedule', 'linear', '--warmup-steps', '99', '--no-pack']), 2,
      /--warmup-steps 99 is more than the run's 3 steps, after which the linear schedule reaches 0; use fewer warm-up steps/);
    one(await run(['--model', modelDir, '--data', txt, 'extra']), 2, /unexpected argument "extra"/);
  });

  test('model, tokenizer and device', async () => {
    one(await run(['--model', path.join(tmp, 'nope'), '--data', txt, '--out', out()]), 1, /--model .*nope: directory not found \(give a Hugging Face checkpoint directory/);
    const noTok = path.join(tmp, 'model-no-tok');
    fs.mkdirSync(noTok, { recursive: true });
    fs.copyFileSync(path.join(modelDir, 'config.json'), path.join(noTok, 'config.json'));
    fs.copyFileSync(path.join(modelDir, 'model.safetensors'), path.join(noTok, 'model.safetensors'));
    one(await run(['--model', noTok, '--data', txt, '--out', out()]), 1, /no tokenizer\.json \(copy tokenizer\.json from the base model's repository/);
    const noWeights = path.join(tmp, 'model-no-weights');
    fs.mkdirSync(noWeights, { recursive: true });
    for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(modelDir, f), path.join(noWeights, f));
    one(await run(['--model', noWeights, '--data', txt, '--out', out()]), 1, /--model .*: LlamaForCausalLM\.fromPretrained: no model\.safetensors/);
    one(await run(['--model', path.join(modelDir, 'config.json'), '--data', txt]), 1, /config\.json: not a directory \(give the checkpoint directory/);
    one(await run([...base(), '--data', txt, '--out', out(), '--target', 'x_proj']), 1,
      /--target x_proj selects no layer of this model; its Linear layers are named q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head/);
    // A partly misspelt list is refused before training, naming the names that match nothing.
    one(await run([...base(), '--data', txt, '--out', out(), '--target', 'q_proj,vproj,kproj']), 1,
      /--target q_proj,vproj,kproj: vproj, kproj match no layer of this model; its Linear layers are named q_proj, /);
    // Where CUDA is available this trains: in a directory of its own, not the one the other cases share.
    const cuda = await run([...base(), '--data', txt, '--out', path.join(tmp, 'err-out-cuda'), '--device', 'cuda']);
    if (!backendInfo().cuda.available) one(cuda, 1, /--device cuda: CUDA is not available \(.+\); use --device cpu/);
    else expect({ code: cuda.code, stderr: cuda.stderr }).toEqual({ code: 0, stderr: '' });
  });

  test('data files', async () => {
    const w = (name: string, content: string) => {
      const f = path.join(tmp, name);
      fs.writeFileSync(f, content);
      return f;
    };
    one(await run([...base(), '--data', path.join(tmp, 'missing.txt')]), 1, /--data .*missing\.txt: file not found/);
    one(await run([...base(), '--data', w('d.csv', 'a,b')]), 1, /unsupported file extension "\.csv"; use \.txt .* or \.jsonl/);
    one(await run([...base(), '--data', w('empty.txt', '\n  \n')]), 1, /no training examples \(the file has no non-empty lines\)/);
    one(await run([...base(), '--data', w('bad1.jsonl', '{"text": "the cat"}\n\n{"text": "a"\n')]), 1, /bad1\.jsonl line 3: not valid JSON/);
    one(await run([...base(), '--data', w('bad2.jsonl', '{"text": "the cat"}\n{"txt": "a"}\n')]), 1, /line 2: unknown row shape \(keys "txt"\); expected \{"messages"/);
    one(await run([...base(), '--data', w('bad3.jsonl', '{"text": 5}\n')]), 1, /line 1: "text" must be a string, got number/);
    one(await run([...base(), '--data', w('bad4.jsonl', '{"prompt": "q"}\n')]), 1, /line 1: has "prompt" without "completion"; give both/);
    one(await run([...base(), '--data', w('bad5.jsonl', '["the cat"]\n')]), 1, /line 1: expected a JSON object, one of .*; got an array/);
    one(await run([...base(), '--data', w('short.txt', 'a\nb\n'), '--out', out()]), 1, /no usable examples: all 2 rows were dropped \(2 under 2 tokens\)/);
  });

  test('an --out that cannot be written fails before the first step, in one line', async () => {
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, 'not a directory');
    const r = await run([...base(), '--data', txt, '--out', path.join(file, 'adapter')]);
    one(r, 1, /^lora-cuda finetune: cannot write the adapter to .*a-file\/adapter \(ENOTDIR\); choose another --out$/);
    expect(r.stdout).toBe(''); // nothing trained, not even the model loaded
  });

  const root = process.getuid?.() === 0;
  (root ? test.skip : test)(`an --out in a read-only directory fails before the first step${root ? ' (skipped: running as root, where permission bits do not stop writes)' : ''}`, async () => {
    const ro = path.join(tmp, 'read-only');
    fs.mkdirSync(ro, { recursive: true });
    fs.chmodSync(ro, 0o500);
    try {
      const r = await run([...base(), '--data', txt, '--out', path.join(ro, 'adapter')]);
      one(r, 1, /^lora-cuda finetune: cannot write the adapter to .*read-only\/adapter \(EACCES\); choose another --out$/);
      expect(r.stdout).toBe('');
    } finally {
      fs.chmodSync(ro, 0o700);
    }
  });

  test('weights that become NaN or Inf are never written, and the message names the setting (--weight-decay 1e300)', async () => {
    const dir = path.join(tmp, 'nonfinite-out');
    const r = await run([...base(), '--data', txt, '--out', dir, '--weight-decay', '1e300']);
    one(r, 1, /^lora-cuda finetune: the trained weights became NaN or Inf by step 1 \('model\.layers\.0\.self_attn\.q_proj\.A'\); nothing was saved from it: no adapter or checkpoint of this run was written; --weight-decay 1e\+300 with --lr 0\.0002 multiplies the weights by 1 - lr \* weight-decay = -2\.00e\+296 at every step; lower --weight-decay/);
    expect(fs.existsSync(path.join(dir, 'adapter_model.safetensors'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'checkpoint'))).toBe(false);

    // A good checkpoint, then a resume that goes non-finite: the checkpoint and the adapter of step 1 stay.
    expect((await run([...base(), '--data', txt, '--out', dir, '--max-steps', '1'])).code).toBe(0);
    const adapter = fs.readFileSync(path.join(dir, 'adapter_model.safetensors'));
    const r2 = await run(['--data', txt, '--out', dir, '--resume', '--weight-decay', '1e300']);
    one(r2, 1, new RegExp(`became NaN or Inf by step 2 .*; nothing was saved from it: ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} keeps the adapter and .*checkpoint the checkpoint of step 1; --weight-decay`));
    expect(fs.readFileSync(path.join(dir, 'adapter_model.safetensors')).equals(adapter)).toBe(true);
    const state = JSON.parse(fs.readFileSync(path.join(dir, 'checkpoint', 'trainer_state.json'), 'utf8'));
    expect(state.step).toBe(1);
  });

  test('an absurd --alpha or --r is named as the cause', async () => {
    one(await run([...base(), '--data', txt, '--out', out(), '--alpha', '1e308']), 2,
      /--alpha 1e\+308 with --r 4 makes the LoRA scale alpha\/r = 2\.50e\+307, beyond float32's range .*; use an --alpha of the order of --r/);
    // Finite, but large enough that the first step's loss is NaN.
    one(await run([...base(), '--data', txt, '--out', out(), '--alpha', '1e39']), 1,
      /the training loss became NaN at step 1; the LoRA scale alpha\/r = 2\.50e\+38 \(--alpha 1e\+39, --r 4\) is far above the usual 0\.5 to 4 .*; lower --alpha$/);
    one(await run([...base(), '--data', txt, '--out', out(), '--r', '1000000000']), 1,
      /^lora-cuda finetune: out of memory creating the LoRA layers: --r 1000000000 on 6 layers is [\d.]+ billion adapter parameters .*; use a much smaller --r \(8 to 64 is usual\)$/);
  });

  test('out of memory suggests a smaller --batch-size or --seq-len', async () => {
    const r = await run([...base(), '--data', txt, '--out', out()], {
      onStep: () => {
        throw Object.assign(new Error('out of memory allocating 123 bytes on the CPU'), { code: 'ERR_OUT_OF_MEMORY' });
      },
    });
    one(r, 1, /out of memory at step 1 \(--batch-size 4, --seq-len 256\): use a smaller --batch-size or --seq-len/);
    // An adapter larger than the model: the rank is named, not the batch.
    const big = await run([...base(), '--data', txt, '--out', out(), '--r', '512'], {
      onStep: () => {
        throw Object.assign(new Error('out of memory allocating 123 bytes on the CPU'), { code: 'ERR_OUT_OF_MEMORY' });
      },
    });
    one(big, 1, /out of memory at step 1 \(--batch-size 4, --seq-len 256\): the adapter \(--r 512\) has [\d,]+ parameters, more than the model's [\d,]+, .*: use a much smaller --r/);
  });
});

describe('--resume from a damaged checkpoint names the fault, in one line', () => {
  // The checkpoint of a 2-step run, with one field of trainer_state.json changed per case.
  let out: string;
  let good: Record<string, unknown>;
  let saved: string;
  beforeAll(async () => {
    out = path.join(tmp, 'damaged');
    const r = await run([...base(), '--data', txt, '--out', out, '--epochs', '2', '--batch-size', '4', '--max-steps', '2', '--save-every', '1']);
    expect(r.code).toBe(0);
    saved = path.join(tmp, 'damaged-good');
    fs.cpSync(path.join(out, 'checkpoint'), saved, { recursive: true });
    good = JSON.parse(fs.readFileSync(path.join(saved, 'trainer_state.json'), 'utf8'));
  });
  /** good with the value at a dotted path replaced (undefined: removed). */
  const edited = (at: string, value: unknown) => {
    const copy = JSON.parse(JSON.stringify(good));
    const keys = at.split('.');
    let o = copy;
    for (const k of keys.slice(0, -1)) o = o[k];
    if (value === undefined) delete o[keys[keys.length - 1]];
    else o[keys[keys.length - 1]] = value;
    return copy;
  };

  test.each([
    ['step', -5, /"step" must be an integer >= 0, got -5/],
    ['step', 100, /"step" 100 is past "totalSteps" 6/],
    ['totalSteps', 7, /"totalSteps" 7 is not a whole number of epochs of "stepsPerEpoch" 3/],
    ['stepsPerEpoch', 0, /"stepsPerEpoch" must be an integer >= 1, got 0/],
    ['rng.seed', '99999999999999999999999999', /"rng\.seed" must be a decimal string of an integer in \[0, 2\^64\)/],
    ['rng.offset', '18446744073709551616', /"rng\.offset" must be a decimal string/],
    ['metadata.args.r', '8', /"args\.r" \(--r\) must be an integer >= 1, got "8"/],
    ['metadata.args.r', 0, /"args\.r" \(--r\) must be an integer >= 1, got 0/],
    ['metadata.args.batchSize', 0, /"args\.batchSize" \(--batch-size\) must be an integer >= 1/],
    ['metadata.args.batchSize', '4', /"args\.batchSize" \(--batch-size\) must be an integer >= 1, got "4"/],
    ['metadata.args.target', 5, /"args\.target" \(--target\) must be a non-empty string, got 5/],
    ['metadata.args.target', [], /"args\.target" \(--target\) must be a non-empty string/],
    ['metadata.args.epochs', 0, /"args\.epochs" \(--epochs\) must be an integer >= 1, got 0/],
    ['metadata.args.model', 5, /"args\.model" \(--model\) must be a non-empty string, got 5/],
    ['metadata.args.seed', -1, /"args\.seed" \(--seed\) must be an integer >= 0, got -1/],
    ['metadata.args.gradAccum', 0, /"args\.gradAccum" \(--grad-accum\) must be an integer >= 1/],
    ['metadata.args.evalEvery', -1, /"args\.evalEvery" \(--eval-every\) must be an integer >= 0/],
    ['metadata.args.evalFraction', 5, /"args\.evalFraction" \(--eval-fraction\) must be a number >= 0 and <= 0\.9, got 5/],
    ['metadata.args.addEos', 'yes', /"args\.addEos" \(--add-eos\) must be true or false, got "yes"/],
    ['metadata.args.warmupSteps', -1, /"args\.warmupSteps" \(--warmup-steps\) must be an integer >= 0/],
    ['metadata.args.maxGradNorm', 'x', /"args\.maxGradNorm" \(--max-grad-norm\) must be a number >= 0, got "x"/],
    ['metadata.args.weightDecay', -1, /"args\.weightDecay" \(--weight-decay\) must be a number >= 0, got -1/],
    ['metadata.args.logEvery', 0, /"args\.logEvery" \(--log-every\) must be an integer >= 1, got 0/],
    ['metadata.args.lr', -1, /"args\.lr" \(--lr\) must be > 0, got -1/],
    ['metadata.data.sha256', 'abc', /"data\.sha256" must be a SHA-256 in hex, got "abc"/],
  ])('%s = %j', async (at, value, re) => {
    fs.rmSync(path.join(out, 'checkpoint'), { recursive: true, force: true });
    fs.cpSync(saved, path.join(out, 'checkpoint'), { recursive: true });
    fs.writeFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), JSON.stringify(edited(at, value)));
    const r = await run(['--out', out, '--resume']);
    expect(r.code).toBe(1);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^lora-cuda finetune: --resume: .*trainer_state\.json is damaged \(/);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).toMatch(/; delete .*checkpoint to start fresh\n$/);
  });

  test('an optimiser state with no moments at step 2 is refused, not restarted from zero', async () => {
    fs.rmSync(path.join(out, 'checkpoint'), { recursive: true, force: true });
    fs.cpSync(saved, path.join(out, 'checkpoint'), { recursive: true });
    const file = path.join(out, 'checkpoint', 'optimizer.safetensors');
    const st = SafetensorsFile.openSync(file);
    const meta = JSON.parse(st.metadata['lora_cuda.optimizer']);
    st.close();
    await saveSafetensors(file, {}, { metadata: { 'lora_cuda.optimizer': JSON.stringify({ ...meta, steps: {} }) } });
    const r = await run(['--out', out, '--resume']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^lora-cuda finetune: --resume: the checkpoint in .* is damaged: optimizer\.safetensors holds no optimiser state \(moments\), but the checkpoint is at step 2; delete .* to start fresh\n$/);
  });
});

test('--out is compared with --model by identity, and --model and --data must not lie in OUT/checkpoint', async () => {
  const link = path.join(tmp, 'model-link');
  fs.symlinkSync(modelDir, link);
  const before = fs.readdirSync(modelDir).sort();
  let r = await run([...base(), '--data', txt, '--out', link]);
  expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/^lora-cuda finetune: --out .*model-link is the --model directory; choose another directory \(an adapter there would make the base checkpoint load with it\)\n$/)]);
  expect(fs.readdirSync(modelDir).sort()).toEqual(before);
  // Each checkpoint replaces OUT/checkpoint as a whole: data kept there would be deleted by it.
  const out = path.join(tmp, 'ckpt-holds-data');
  fs.mkdirSync(path.join(out, 'checkpoint'), { recursive: true });
  const inside = path.join(out, 'checkpoint', 'train.txt');
  fs.copyFileSync(txt, inside);
  r = await run([...base(), '--data', inside, '--out', out]);
  expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/^lora-cuda finetune: --data .*train\.txt is inside .*checkpoint, which every checkpoint replaces as a whole; move it elsewhere\n$/)]);
  expect(fs.existsSync(inside)).toBe(true);
});
