// Padded and packed batches through LlamaForCausalLM: logits and losses against
// transformers' semantics written out in PyTorch (test/fixtures/generate_padding.py),
// and the same sequences run one at a time.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { F, LlamaForCausalLM, noGrad, tensor } from '../lib';
import { LlamaCase, writeCheckpoint } from './helpers/llama-weights';

interface Layout { input_ids: number[][]; attention_mask?: number[][]; position_ids: number[][]; cu_seq_lens?: number[][]; logits: number[]; loss: number }
interface Case { config: Record<string, unknown>; params: [string, number[]][]; sequences: number[][]; right: Layout; left: Layout; packed: Layout }
const fixture: { cases: Record<string, Case> } = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'padding-packing.json'), 'utf8'));

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-padding-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function load(name: string): Promise<LlamaForCausalLM> {
  const dir = path.join(tmp, name);
  if (!fs.existsSync(dir)) await writeCheckpoint(dir, fixture.cases[name] as unknown as LlamaCase);
  return LlamaForCausalLM.fromPretrained(dir);
}

/** Max |a - b| over the rows of the tokens: positions (b, t) with keep(b, t). */
function tokenDiff(a: ArrayLike<number>, b: ArrayLike<number>, B: number, T: number, V: number, keep: (b: number, t: number) => boolean): number {
  expect(a.length).toBe(B * T * V);
  expect(b.length).toBe(B * T * V);
  let m = 0;
  let n = 0;
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < T; t++) {
      if (!keep(r, t)) continue;
      n++;
      for (let v = 0; v < V; v++) m = Math.max(m, Math.abs(a[(r * T + t) * V + v] - b[(r * T + t) * V + v]));
    }
  }
  expect(n).toBeGreaterThan(0);
  return m;
}

const TOL = 2e-5; // float32 against the float64 reference

describe.each(Object.keys(fixture.cases))('%s', (name) => {
  const c = fixture.cases[name];
  const V = c.config.vocab_size as number;

  test.each(['right', 'left'] as const)('%s padding: token logits and loss match the reference and the rows run alone', async (side) => {
    const model = await load(name);
    const L = c[side];
    const B = L.input_ids.length;
    const T = L.input_ids[0].length;
    const real = (b: number, t: number) => L.attention_mask![b][t] === 1;
    const logits = noGrad(() => model.forward(L.input_ids, { attentionMask: L.attention_mask })).toArray();
    expect(tokenDiff(logits, L.logits, B, T, V, real)).toBeLessThan(TOL);
    for (const x of logits) expect(Number.isFinite(x)).toBe(true); // padded rows too
    // Explicit position ids (transformers' cumsum - 1, padding at 1) give the same.
    const withPos = noGrad(() => model.forward(L.input_ids, { attentionMask: L.attention_mask, positionIds: L.position_ids })).toArray();
    expect(tokenDiff(withPos, logits, B, T, V, real)).toBeLessThan(1e-6);
    // Each row alone, without padding.
    c.sequences.forEach((s, b) => {
      const alone = noGrad(() => model.forward([s])).toArray();
      const off = side === 'right' ? 0 : T - s.length;
      let m = 0;
      for (let t = 0; t < s.length; t++) {
        for (let v = 0; v < V; v++) m = Math.max(m, Math.abs(alone[t * V + v] - logits[((b * T) + off + t) * V + v]));
      }
      expect(m).toBeLessThan(TOL);
    });
    const loss = noGrad(() => model.loss(L.input_ids, undefined, { attentionMask: L.attention_mask })).item();
    expect(Math.abs(loss - L.loss)).toBeLessThan(TOL);
  });

  test('a packed row: logits and loss of the separate documents, from positionIds or cuSeqLens', async () => {
    const model = await load(name);
    const P = c.packed;
    const T = P.input_ids[0].length;
    const all = () => true;
    const byPos = noGrad(() => model.forward(P.input_ids, { positionIds: P.position_ids })).toArray();
    expect(tokenDiff(byPos, P.logits, 1, T, V, all)).toBeLessThan(TOL);
    const byCu = noGrad(() => model.forward(P.input_ids, { cuSeqLens: P.cu_seq_lens })).toArray();
    expect(tokenDiff(byCu, byPos, 1, T, V, all)).toBeLessThan(1e-6);
    // Without the layout the documents see each other: the logits after the first differ.
    const plain = noGrad(() => model.forward(P.input_ids)).toArray();
    expect(tokenDiff(plain, P.logits, 1, T, V, all)).toBeGreaterThan(1e-3);
    for (const opts of [{ positionIds: P.position_ids }, { cuSeqLens: P.cu_seq_lens }]) {
      const loss = noGrad(() => model.loss(P.input_ids, undefined, opts)).item();
      expect(Math.abs(loss - P.loss)).toBeLessThan(TOL);
    }
  });

  test('the gradient of a left-padded batch equals that of the same documents packed', async () => {
    // Two code paths (padding: first keys per row; packing: per-document keys and per-token
    // rotary positions) over the same tokens and targets give the same mean loss and gradient.
    const model = await load(name);
    const grads = (f: () => ReturnType<LlamaForCausalLM['loss']>) => {
      for (const p of model.parameters()) p.grad = null;
      const loss = f();
      loss.backward();
      const out = [...model.parameters()].map((p) => Array.from(p.grad!.toArray()));
      return { loss: loss.item(), out };
    };
    const a = grads(() => model.loss(c.left.input_ids, undefined, { attentionMask: c.left.attention_mask }));
    const b = grads(() => model.loss(c.packed.input_ids, undefined, { cuSeqLens: c.packed.cu_seq_lens }));
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-5);
    let m = 0;
    let scale = 0;
    a.out.forEach((g: number[], i: number) => g.forEach((x: number, j: number) => {
      expect(Number.isFinite(x)).toBe(true);
      m = Math.max(m, Math.abs(x - b.out[i][j]));
      scale = Math.max(scale, Math.abs(x));
    }));
    expect(scale).toBeGreaterThan(0);
    expect(m).toBeLessThan(1e-4 * Math.max(1, scale));
  });

  test('the loss runs the head on the predicting rows only: the cross entropy of all the logits, its loss and gradient', async () => {
    // A masked prompt (-100) and right padding leave rows that predict nothing; model.loss skips
    // them, the reference runs the head on every row and lets the cross entropy ignore them.
    const model = await load(name);
    const L = c.right;
    const B = L.input_ids.length;
    const T = L.input_ids[0].length;
    const labels = L.input_ids.map((row) => row.map((id, t) => (t < 2 ? -100 : id)));
    const targets: number[] = [];
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const next = t + 1 < T && L.attention_mask![b][t] === 1 && L.attention_mask![b][t + 1] === 1;
        targets.push(next ? labels[b][t + 1] : -100);
      }
    }
    expect(targets.filter((x) => x === -100).length).toBeGreaterThan(B); // more than the last positions
    const grads = (f: () => ReturnType<LlamaForCausalLM['loss']>) => {
      for (const p of model.parameters()) p.grad = null;
      const loss = f();
      loss.backward();
      return { loss: loss.item(), out: [...model.parameters()].map((p) => Array.from(p.grad!.toArray())) };
    };
    const a = grads(() => model.loss(L.input_ids, labels, { attentionMask: L.attention_mask }));
    const b = grads(() => F.crossEntropy(model.forward(L.input_ids, { attentionMask: L.attention_mask }).reshape(B * T, V), targets, { ignoreIndex: -100 }));
    expect(Number.isFinite(a.loss)).toBe(true);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-6);
    let m = 0;
    let scale = 0;
    a.out.forEach((g: number[], i: number) => g.forEach((x: number, j: number) => {
      m = Math.max(m, Math.abs(x - b.out[i][j]));
      scale = Math.max(scale, Math.abs(x));
    }));
    expect(scale).toBeGreaterThan(0);
    expect(m).toBeLessThan(1e-6 * Math.max(1, scale));
  });
});

describe('bad layouts', () => {
  let model: LlamaForCausalLM;
  beforeAll(async () => {
    model = await load('llama_gqa');
  });
  const ids = [[1, 2, 3], [4, 5, 6]];
  test.each([
    ['a mask of the wrong shape', { attentionMask: [[1, 1, 1]] }, /options.attentionMask must be number\[2\]\[3\] \(the shape of inputIds\)/],
    ['a mask row of the wrong length', { attentionMask: [[1, 1, 1], [1, 1]] }, /options.attentionMask\[1\] must be 3 numbers/],
    ['a mask value other than 0/1', { attentionMask: [[1, 1, 1], [0, 2, 1]] }, /options.attentionMask\[1\]\[1\] must be 0 \(padding\) or 1 \(token\), got 2/],
    ['a row that is all padding', { attentionMask: [[1, 1, 1], [0, 0, 0]] }, /options.attentionMask\[1\] must be at least one 1 \(a row that is all padding has no tokens\)/],
    ['padding between tokens', { attentionMask: [[1, 0, 1], [1, 1, 1]] }, /options.attentionMask\[0\] must be one run of ones/],
    ['a mask tensor of the wrong shape', { attentionMask: tensor([[1, 1, 1, 1]], { dtype: 'int32' }) }, /options.attentionMask must be an int32 tensor \[2, 3\]/],
    ['a negative position', { positionIds: [[0, 1, 2], [0, -1, 1]] }, /options.positionIds\[1\]\[1\] must be a position in \[0, 128\), got -1/],
    ['cuSeqLens not ending at T', { cuSeqLens: [[0, 3], [0, 2]] }, /options.cuSeqLens\[1\] must be increasing integers from 0 to 3/],
    ['both positionIds and cuSeqLens', { positionIds: [[0, 1, 2], [0, 1, 2]], cuSeqLens: [[0, 3], [0, 3]] }, /options must be at most one of positionIds and cuSeqLens/],
    ['an unknown option', { mask: [[1, 1, 1], [1, 1, 1]] }, /mask/],
  ])('%s', (_, opts, message) => {
    expect(() => model.forward(ids, opts as never)).toThrow(message);
    expect(() => model.loss(ids, undefined, opts as never)).toThrow(message);
  });
  test('an int32 mask tensor is read as number[][]', () => {
    const mask = [[1, 1, 1], [0, 1, 1]];
    const a = noGrad(() => model.forward(ids, { attentionMask: mask })).toArray();
    const b = noGrad(() => model.forward(ids, { attentionMask: tensor(mask, { dtype: 'int32' }) })).toArray();
    expect(Array.from(a)).toEqual(Array.from(b));
  });
});
