// The `lora-cuda` command line, end to end on tiny inputs: commands run
// in-process through main() with a capturing io; one test runs the real bin
// script in a child process.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  LlamaForCausalLM, backendInfo, injectLora, loadAdapter, loadTokenizer, loraLayers, manualSeed, noGrad, randn, saveAdapter,
} from '../lib';
import { main } from '../lib/cli/index';
import { distributedInfo } from '../lib/distributed';
import { CliIO } from '../lib/cli/io';
import { DEMO_CONFIG, DEMO_DIGITS, demoSequence } from '../lib/cli/demo';
import { Progress } from '../lib/cli/progress';
import { terminalChart, svgChart } from '../lib/cli/chart';
import { loadCases, writeCheckpoint } from './helpers/llama-weights';
import { finetuneFixture } from './helpers/finetune-fixture';
import { native } from '../lib/native';
import { benchNative } from '../bench/binding';

const root = path.resolve(__dirname, '..');
let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-cli-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function capture(isTTY = false) {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIO = { stdout: (t) => out.push(t), stderr: (t) => err.push(t), isTTY, columns: 100 };
  return { io, stdout: () => out.join(''), stderr: () => err.join('') };
}

async function run(argv: string[], isTTY = false) {
  const c = capture(isTTY);
  const code = await main(argv, c.io);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

/** The lines of `text` without the final newline. */
const lines = (text: string) => text.replace(/\n$/, '').split('\n');

/**
 * A strict-enough XML well-formedness check: an optional declaration, one root
 * element, properly nested and closed tags, quoted attributes without raw '<'
 * or stray '&', no stray '<' or '&' in text. Returns the root's tag and attributes.
 */
function parseXmlRoot(xml: string): { tag: string; attrs: Record<string, string>; elements: string[] } {
  const body = xml.replace(/^<\?xml\s[^?]*\?>/, '');
  const entity = /&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/;
  const token = /<!--[\s\S]*?-->|<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[A-Za-z_][\w:.-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>|([^<]+)|(<)/gy;
  const stack: string[] = [];
  const elements: string[] = [];
  let root: { tag: string; attrs: Record<string, string> } | null = null;
  let m: RegExpExecArray | null;
  while ((m = token.exec(body)) !== null) {
    const [whole, close, tag, attrText, selfClose, text, stray] = m;
    if (stray) throw new Error(`stray '<' at ${m.index}`);
    if (text !== undefined) {
      if (entity.test(text)) throw new Error(`stray '&' in text ${JSON.stringify(text.slice(0, 40))}`);
      if (!stack.length && text.trim()) throw new Error(`text outside the root: ${JSON.stringify(text.slice(0, 40))}`);
      continue;
    }
    if (whole.startsWith('<!--')) continue;
    if (close) {
      if (stack.pop() !== tag) throw new Error(`</${tag}> does not close the open element`);
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of attrText.matchAll(/([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
      if (a[1] in attrs) throw new Error(`duplicate attribute ${a[1]} on <${tag}>`);
      const v = a[2] ?? a[3];
      if (entity.test(v)) throw new Error(`stray '&' in attribute ${a[1]}`);
      attrs[a[1]] = v;
    }
    if (!stack.length) {
      if (root) throw new Error(`a second root element <${tag}>`);
      root = { tag, attrs };
    }
    elements.push(tag);
    if (!selfClose) stack.push(tag);
  }
  if (stack.length) throw new Error(`unclosed <${stack[stack.length - 1]}>`);
  if (!root) throw new Error('no root element');
  return { ...root, elements };
}

describe('lora-cuda demo', () => {
  let out: string;
  let result: Awaited<ReturnType<typeof run>>;
  let summary: Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

  beforeAll(async () => {
    out = path.join(tmp, 'demo-adapter');
    result = await run(['demo', '--steps-a', '100', '--steps-b', '200', '--batch-size', '16', '--json', '--chart', '--out', out]);
    summary = JSON.parse(lines(result.stdout).pop()!);
  });

  test('exits 0 and prints the JSON summary as the last line of stdout', () => {
    expect(result.stderr).not.toContain('lora-cuda demo:');
    expect(result.code).toBe(0);
    expect(Object.keys(summary)).toEqual(expect.arrayContaining([
      'before', 'after', 'baseTaskAccuracy', 'trainableParams', 'totalParams', 'adapterBytes', 'tokensPerSecond',
      'mergeMaxDiff', 'device', 'seconds', 'adapterDir',
    ]));
    expect(summary.device).toBe('cpu');
    expect(summary.adapterDir).toBe(path.resolve(out));
    expect(summary.seconds).toBeGreaterThan(0);
    expect(summary.tokensPerSecond).toBeGreaterThan(0);
  });

  test('LoRA learns task B, which the base cannot do, and the base still does task A', () => {
    expect(summary.before.accuracy).toBeLessThan(0.2);
    expect(summary.after.accuracy).toBeGreaterThan(0.9);
    expect(summary.baseTaskAccuracy).toBeGreaterThan(0.9);
    expect(summary.mergeMaxDiff).toBeLessThan(1e-4);
  });

  test('the base model comes with a tokenizer: lora-cuda generate runs task A on the base and task B with the adapter', async () => {
    const base = path.join(out, 'base-model');
    const prompts = [[3, 1, 4, 1, 5, 9], [2, 7, 1, 8, 2, 8], [9, 9, 0, 0, 5, 5], [6, 0, 2, 2, 1, 4]];
    let right = 0;
    for (const d of prompts) {
      for (const [task, adapter, want] of [['<copy>', false, d], ['<inc>', true, d.map((x) => (x + 1) % 10)]] as const) {
        const prompt = `${task} ${d.join(' ')} =`;
        const r = await run(['generate', '--model', base, ...(adapter ? ['--adapter', out] : []), '--prompt', prompt, '--max-new-tokens', '6', '--device', 'cpu']);
        expect(r.code).toBe(0);
        const m = new RegExp(`^${prompt.replace(/[<>]/g, '.')} ((?:\\d ?){6})$`).exec(r.stdout.trim());
        expect(m).not.toBeNull(); // the prompt, then six digits
        const got = m![1].split(' ').map(Number);
        right += got.filter((x, i) => x === want[i]).length;
      }
    }
    expect(right / (prompts.length * 2 * 6)).toBeGreaterThan(0.9); // as the accuracies above
  });

  test('counts parameters and the adapter file', () => {
    // q_proj [64 -> 64] and v_proj [64 -> 32] in each of 2 layers, r = 8: A [8, in] + B [out, 8].
    expect(summary.trainableParams).toBe(2 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8));
    expect(summary.totalParams).toBe(new LlamaForCausalLM(DEMO_CONFIG).numParameters() + summary.trainableParams);
    expect(summary.adapterBytes).toBe(fs.statSync(path.join(out, 'adapter_model.safetensors')).size);
    expect(summary.adapterBytes).toBeGreaterThan(summary.trainableParams * 4);
  });

  test('prints the human report, a terminal chart with --chart, and few plain progress lines (not a TTY)', () => {
    for (const s of ['task B accuracy before fine-tuning', 'task B accuracy after fine-tuning', 'task A accuracy, adapter disabled',
      'trainable / total parameters', 'adapter size', 'tokens/s', 'merged vs unmerged logits', 'loss (log scale)']) {
      expect(result.stdout).toContain(s);
    }
    expect(result.stderr).not.toContain('\r');
    expect(lines(result.stderr).length).toBeLessThanOrEqual(8);
    expect(result.stderr).toMatch(/^phase A: step 100\/100/m);
  });

  test('the adapter loads into a model of the same config and, on the saved base, does task B', async () => {
    const fresh = new LlamaForCausalLM(DEMO_CONFIG);
    expect((await loadAdapter(fresh, out)).sort()).toEqual([
      'model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj',
    ]);
    const config = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] });

    const base = await LlamaForCausalLM.fromPretrained(path.join(out, 'base-model'));
    await loadAdapter(base, out);
    const digits = [[2, 7, 1, 8, 2, 8], [9, 9, 0, 0, 5, 5], [1, 2, 3, 4, 5, 6], [8, 6, 4, 2, 0, 9]];
    const ids = digits.map((d) => demoSequence('B', d));
    const logits = noGrad(() => base.forward(ids)).toArray();
    const V = DEMO_CONFIG.vocab_size;
    const T = ids[0].length;
    let ok = 0;
    ids.forEach((row, b) => {
      for (let t = DEMO_DIGITS + 2; t < T; t++) {
        const o = (b * T + t - 1) * V;
        const pred = [...logits.slice(o, o + V)].reduce((best, v, i, a) => (v > a[best] ? i : best), 0);
        if (pred === row[t]) ok++;
      }
    });
    expect(ok / (ids.length * DEMO_DIGITS)).toBeGreaterThan(0.8);
  });

  test('writes a well-formed standalone SVG with both loss curves', () => {
    const svg = fs.readFileSync(path.join(out, 'loss.svg'), 'utf8');
    const rootEl = parseXmlRoot(svg);
    expect(rootEl.tag).toBe('svg');
    expect(rootEl.attrs.xmlns).toBe('http://www.w3.org/2000/svg');
    expect(rootEl.attrs.viewBox).toMatch(/^0 0 \d+ \d+$/);
    expect(rootEl.elements.filter((e) => e === 'polyline').length).toBe(4); // raw + smoothed per phase
    expect(svg).toContain('phase A: full pretraining');
    expect(svg).toContain('phase B: LoRA fine-tuning');
    expect(svg).toContain('loss (log scale)');
    expect(svg).toMatch(/>step</);
  });

  test('--svg FILE writes the chart elsewhere', async () => {
    const svgFile = path.join(tmp, 'charts', 'curve.svg');
    const r = await run(['demo', '--steps-a', '3', '--steps-b', '3', '--batch-size', '4', '--out', path.join(tmp, 'demo-2'), '--svg', svgFile]);
    expect(r.code).toBe(0);
    expect(parseXmlRoot(fs.readFileSync(svgFile, 'utf8')).tag).toBe('svg');
    expect(fs.existsSync(path.join(tmp, 'demo-2', 'loss.svg'))).toBe(false);
    expect(r.stdout).not.toContain('loss (log scale)'); // no terminal chart: not a TTY, no --chart
  });
});

describe('help, usage errors and exit codes', () => {
  test('lora-cuda --help lists the commands', async () => {
    for (const argv of [['--help'], ['-h'], ['help']]) {
      const r = await run(argv);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^usage: lora-cuda <command>/);
      for (const cmd of ['demo', 'finetune', 'merge', 'generate', 'doctor', 'bench', 'launch']) expect(r.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
      expect(r.stderr).toBe('');
    }
  });

  test.each(['demo', 'finetune', 'merge', 'generate', 'doctor', 'bench', 'launch'])('lora-cuda %s --help prints its usage', async (cmd) => {
    const r = await run([cmd, '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^usage: lora-cuda ${cmd}`));
    expect(r.stdout).toContain('--help');
    expect(r.stderr).toBe('');
    const viaHelp = await run(['help', cmd]);
    expect(viaHelp).toEqual(r);
  });

  test.each(['demo', 'finetune', 'merge', 'generate', 'doctor', 'bench', 'launch'])('lora-cuda --help and lora-cuda %s --help give the same summary', async (cmd) => {
    const own = lines((await run([cmd, '--help'])).stdout);
    // usage: <line>, a blank line, then the summary.
    expect(own[0]).toMatch(new RegExp(`^usage: lora-cuda ${cmd}\\b`));
    expect(own[1]).toBe('');
    expect(own[2]).toMatch(/^[A-Z].*\.$/);
    expect(lines((await run(['--help'])).stdout)).toContain(`  ${cmd.padEnd(8)}  ${own[2]}`);
  });

  test('the demo\'s duration is said the same way everywhere', async () => {
    const said = (text: string) => text.match(/(?:~|about |under )?\d+(?:\.\d+)? s(?:econds)?\b[^.;)]*/g) ?? [];
    const demoHelp = (await run(['demo', '--help'])).stdout;
    const mainHelp = (await run(['--help'])).stdout;
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8').split('\n').filter((l) => /lora-cuda demo/.test(l)).join('\n');
    const all = [...said(demoHelp), ...said(mainHelp), ...said(readme)];
    expect(all.length).toBeGreaterThanOrEqual(3);
    expect(new Set(all)).toEqual(new Set(['about 6 s on 2 CPU cores']));
  });

  test('--version', async () => {
    const r = await run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`lora-cuda ${JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version}\n`);
  });

  test('an unknown option is a usage error: exit 2, one line', async () => {
    for (const cmd of ['demo', 'merge', 'generate', 'bench']) {
      const r = await run([cmd, '--bogus']);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(lines(r.stderr)).toEqual([`lora-cuda ${cmd}: unknown option --bogus (see lora-cuda ${cmd} --help)`]);
    }
  });

  test('bad values and unknown commands are usage errors', async () => {
    let r = await run(['demo', '--steps-a', 'many']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['lora-cuda demo: --steps-a must be a number, got "many" (see lora-cuda demo --help)']);
    r = await run(['demo', '--device', 'tpu']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['lora-cuda demo: --device must be cpu or cuda, got "tpu" (see lora-cuda demo --help)']);
    r = await run(['frobnicate']);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['lora-cuda: unknown command \'frobnicate\' (commands: demo, finetune, merge, generate, doctor, bench, launch; see lora-cuda --help)']);
    r = await run(['merge', '--model', tmp]);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['lora-cuda merge: missing --adapter DIR, --out DIR (see lora-cuda merge --help)']);
  });

  const cudaAvailable = backendInfo().cuda.available;
  (cudaAvailable ? test.skip : test)('--device cuda without CUDA: exit 1, one line with the reason', async () => {
    for (const argv of [['demo', '--out', path.join(tmp, 'never')], ['bench']]) {
      const cmd = argv[0];
      const r = await run([...argv, '--device', 'cuda']);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      const err = lines(r.stderr);
      expect(err).toHaveLength(1);
      expect(err[0]).toMatch(new RegExp(`^lora-cuda ${cmd}: --device cuda is not available: .+; use --device cpu$`));
    }
    expect(fs.existsSync(path.join(tmp, 'never'))).toBe(false);
  });

  test('an --out that cannot be written fails before training, in one line', async () => {
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, 'x');
    const r = await run(['demo', '--out', path.join(file, 'adapter')]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toMatch(/^lora-cuda demo: cannot write the adapter to .*a-file\/adapter \(ENOTDIR\); choose another --out$/m);
  });

  test('unexpected errors say they are bugs; out of memory suggests what to change', async () => {
    const boom = async (e: Error): Promise<string> => {
      let stderr = '';
      await jest.isolateModulesAsync(async () => {
        jest.doMock('../bench/command', () => ({ benchCommand: async () => { throw e; } }));
        const cli = await import('../lib/cli/index');
        const c = capture();
        const code = await cli.main(['bench'], c.io);
        expect(code).toBe(1);
        expect(c.stdout()).toBe('');
        expect(lines(c.stderr())).toHaveLength(1);
        stderr = c.stderr();
      });
      jest.dontMock('../bench/command');
      return stderr;
    };
    expect(await boom(new TypeError('x is undefined\n  somewhere'))).toBe('lora-cuda bench: x is undefined; somewhere (this is a bug; please report it)\n');
    const oom = Object.assign(new Error('cannot allocate 4294967296 bytes'), { code: 'ERR_OUT_OF_MEMORY' });
    expect(await boom(oom)).toBe('lora-cuda bench: out of memory (cannot allocate 4294967296 bytes); free memory or use a smaller model\n');
  });
});

describe('lora-cuda merge', () => {
  // The tokenizer and chat-template files a chat model is used with, besides tokenizer.json.
  const companions = ['tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json', 'generation_config.json'];
  const ids = [[1, 5, 9, 2, 6, 5, 3], [8, 9, 7, 9, 3, 2, 3]];
  let modelDir: string;
  let adapterDir: string;
  let expected: Float32Array;

  beforeAll(async () => {
    // Qwen2: q/k/v biases and tied embeddings (lm_head is not written back).
    modelDir = path.join(tmp, 'qwen2');
    adapterDir = path.join(tmp, 'qwen2-adapter');
    await writeCheckpoint(modelDir, loadCases().cases.qwen2_bias_tied_mqa);
    fs.writeFileSync(path.join(modelDir, 'tokenizer.json'), '{"fake": true}\n');
    for (const f of companions) fs.writeFileSync(path.join(modelDir, f), `${f} of the base\n`);
    const model = await LlamaForCausalLM.fromPretrained(modelDir);
    manualSeed(3);
    injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 8 });
    noGrad(() => {
      for (const [name, t] of model.namedParameters()) if (name.endsWith('.B')) t.copy_(randn([...t.shape], { std: 0.2 }));
    });
    await saveAdapter(model, adapterDir);
    expected = noGrad(() => model.forward(ids)).toArray() as Float32Array;
  });

  test('an adapter on the tied lm_head: the merged checkpoint holds the adapted head and unties it', async () => {
    const headAdapter = path.join(tmp, 'qwen2-head-adapter');
    const model = await LlamaForCausalLM.fromPretrained(modelDir);
    manualSeed(4);
    injectLora(model, { targetModules: ['q_proj', 'lm_head'], r: 2, alpha: 4 });
    noGrad(() => {
      for (const [name, t] of model.namedParameters()) if (name.endsWith('.B')) t.copy_(randn([...t.shape], { std: 0.2 }));
    });
    await saveAdapter(model, headAdapter);
    const want = noGrad(() => model.forward(ids)).toArray();
    const outDir = path.join(tmp, 'qwen2-head-merged');
    const r = await run(['merge', '--model', modelDir, '--adapter', headAdapter, '--out', outDir]);
    expect(r.code).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(outDir, 'config.json'), 'utf8')).tie_word_embeddings).toBe(false);
    const merged = await LlamaForCausalLM.fromPretrained(outDir);
    const got = noGrad(() => merged.forward(ids)).toArray();
    expect(Math.max(...Array.from(got, (v, i) => Math.abs(v - want[i])))).toBeLessThan(1e-4);
    // The embedding is the base model's.
    const base = await LlamaForCausalLM.fromPretrained(modelDir);
    expect(Array.from(merged.model.embed_tokens.weight.toArray())).toEqual(Array.from(base.model.embed_tokens.weight.toArray()));
  });

  test('writes a checkpoint whose logits equal the LoRA model\'s', async () => {
    const outDir = path.join(tmp, 'qwen2-merged');
    const r = await run(['merge', '--model', modelDir, '--adapter', adapterDir, '--out', outDir]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('loaded');
    expect(r.stdout).toContain('LoRA r 4, alpha 8 (scale 2) on 4 layers (q_proj, v_proj)');
    expect(r.stdout).toContain(`wrote ${outDir}`);
    expect(fs.readFileSync(path.join(outDir, 'tokenizer.json'), 'utf8')).toBe('{"fake": true}\n');
    for (const f of companions) expect(fs.readFileSync(path.join(outDir, f), 'utf8')).toBe(`${f} of the base\n`);
    expect(r.stdout).toContain(companions.join(', '));
    const merged = await LlamaForCausalLM.fromPretrained(outDir);
    expect(merged.config.tieWordEmbeddings).toBe(true);
    const got = noGrad(() => merged.forward(ids)).toArray();
    let maxDiff = 0;
    for (let i = 0; i < got.length; i++) maxDiff = Math.max(maxDiff, Math.abs(got[i] - expected[i]));
    expect(maxDiff).toBeLessThan(1e-4);
    // The adapter changed the model: the base alone gives other logits.
    const base = await LlamaForCausalLM.fromPretrained(modelDir);
    const plain = noGrad(() => base.forward(ids)).toArray();
    expect(Math.max(...plain.map((v, i) => Math.abs(v - expected[i])))).toBeGreaterThan(1e-3);
  });

  test('wrong paths and mismatched adapters fail in one line that says what to fix', async () => {
    const cases: [string[], RegExp][] = [
      [['--model', path.join(tmp, 'nope'), '--adapter', adapterDir, '--out', path.join(tmp, 'm1')],
        /^lora-cuda merge: --model .*nope is not a directory \(give a Hugging Face checkpoint directory/],
      [['--model', modelDir, '--adapter', path.join(tmp, 'nope'), '--out', path.join(tmp, 'm1')],
        /^lora-cuda merge: --adapter .*nope is not a directory \(give a PEFT adapter directory/],
      [['--model', tmp, '--adapter', adapterDir, '--out', path.join(tmp, 'm1')],
        /^lora-cuda merge: LlamaForCausalLM\.fromPretrained: .*config\.json not found/],
      [['--model', modelDir, '--adapter', modelDir, '--out', path.join(tmp, 'm1')],
        /^lora-cuda merge: loadAdapter: .*adapter_config\.json not found \(not a PEFT adapter directory\)/],
      [['--model', modelDir, '--adapter', adapterDir, '--out', modelDir],
        /^lora-cuda merge: --out is the --model directory; choose a new directory/],
    ];
    for (const [argv, re] of cases) {
      const r = await run(['merge', ...argv]);
      expect(r.code).toBe(1);
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toMatch(re);
      expect(r.stderr).not.toContain('this is a bug');
    }
    // An adapter trained on another model: shapes do not fit.
    const other = path.join(tmp, 'llama');
    await writeCheckpoint(other, loadCases().cases.mistral);
    const r = await run(['merge', '--model', other, '--adapter', adapterDir, '--out', path.join(tmp, 'm2')]);
    expect(r.code).toBe(1);
    expect(lines(r.stderr)).toHaveLength(1);
    expect(r.stderr).toMatch(/^lora-cuda merge: loadAdapter: .* has shape \[.*\], expected \[.*\] \(was the adapter trained on this base model\?\)$/m);
    expect(fs.existsSync(path.join(tmp, 'm2'))).toBe(false);
  });
});

describe('outputs are compared with inputs by identity (device and inode), not by the spelling of the path', () => {
  test('merge --out: a symbolic link to the --model or --adapter directory, or another spelling of it, is refused; the base is untouched', async () => {
    const modelDir = path.join(tmp, 'ident-model');
    const adapterDir = path.join(tmp, 'ident-adapter');
    await writeCheckpoint(modelDir, loadCases().cases.llama_gqa);
    const model = await LlamaForCausalLM.fromPretrained(modelDir);
    injectLora(model, { targetModules: ['q_proj'], r: 2, alpha: 4 });
    await saveAdapter(model, adapterDir);
    const weights = fs.readFileSync(path.join(modelDir, 'model.safetensors'));
    const link = path.join(tmp, 'ident-model-link');
    fs.symlinkSync(modelDir, link);
    const adapterLink = path.join(tmp, 'ident-adapter-link');
    fs.symlinkSync(adapterDir, adapterLink);
    const cases: [string, RegExp][] = [
      [link, /^lora-cuda merge: --out is the --model directory; choose a new directory so the base checkpoint is not overwritten$/],
      [`${modelDir}${path.sep}.${path.sep}`, /^lora-cuda merge: --out is the --model directory/],
      [path.join(link, '..', path.basename(modelDir)), /^lora-cuda merge: --out is the --model directory/],
      [adapterLink, /^lora-cuda merge: --out is the --adapter directory; choose a new directory$/],
    ];
    for (const [out, re] of cases) {
      const r = await run(['merge', '--model', modelDir, '--adapter', adapterDir, '--out', out]);
      expect([out, r.code, lines(r.stderr)]).toEqual([out, 1, [expect.stringMatching(re)]]);
    }
    expect(fs.readFileSync(path.join(modelDir, 'model.safetensors')).equals(weights)).toBe(true);
    // Through the link as --model, the real directory as --out: the same.
    const r = await run(['merge', '--model', link, '--adapter', adapterDir, '--out', modelDir]);
    expect([r.code, lines(r.stderr)]).toEqual([1, [expect.stringMatching(/--out is the --model directory/)]]);
    expect(fs.readFileSync(path.join(modelDir, 'model.safetensors')).equals(weights)).toBe(true);
  });

  test('demo --svg at the place of a file the demo writes (through a link too) is refused before training', async () => {
    const out = path.join(tmp, 'ident-demo');
    const alias = path.join(tmp, 'ident-demo-link');
    fs.mkdirSync(out, { recursive: true });
    fs.symlinkSync(out, alias);
    for (const svg of [path.join(out, 'adapter_model.safetensors'), path.join(alias, 'base-model', 'model.safetensors')]) {
      const r = await run(['demo', '--out', out, '--svg', svg, '--device', 'cpu']);
      expect([r.code, lines(r.stderr)]).toEqual([1, [expect.stringMatching(/^lora-cuda demo: --svg .* is .*, which the demo writes too; choose another file for the chart$/)]]);
      expect(r.stdout).toBe('');
    }
  });
});

describe('lora-cuda bench', () => {
  test('runs and prints the table; --json writes the results', async () => {
    const file = path.join(tmp, 'bench', 'result.json');
    const r = await run(['bench', '--quick', '--shapes', 'tiny', '--json', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = lines(r.stdout);
    expect(out[0]).toMatch(/^lora-cuda bench: .* cores, BLAS \w+/);
    expect(out[1]).toMatch(/^\s*M\s+in\s+out\s+r\s+op\s+median ms\s+min ms\s+GFLOP\/s\s+vs baseline\s*$/);
    for (const op of ['frozen fwd', 'frozen fwd+dx', 'lora fwd', 'lora fwd+bwd', 'merge']) expect(r.stdout).toMatch(new RegExp(`\\s${op.replace('+', '\\+')}\\s`));
    expect(r.stdout).toContain('x frozen fwd+dx');
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(json.rows).toHaveLength(5);
    expect(json.rows[0].shape).toEqual({ M: 64, inF: 32, outF: 32, r: 4 });
    expect(json.device).toBe('cpu');
    expect((await run(['bench', '--shapes', 'huge'])).code).toBe(2);
    expect((await run(['bench', '--help'])).stdout).not.toContain('--shapes'); // for tests only
  });

  test('--memory measures device memory: refused on the CPU, in one line', async () => {
    const r = await run(['bench', '--memory', '--device', 'cpu']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--memory measures device memory: leave out --device or give --device cuda/);
    if (!backendInfo().cuda.available) {
      const n = await run(['bench', '--memory']);
      expect(n.code).toBe(1);
      expect(n.stderr).toMatch(/--memory measures device memory and needs CUDA/);
    }
    expect((await run(['bench', '--help'])).stdout).toContain('--memory');
  });

  test('--results DIR names the file after the machine, as npm run bench does', async () => {
    const dir = path.join(tmp, 'bench-results');
    const r = await run(['bench', '--shapes', 'tiny', '--results', dir]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const files = fs.readdirSync(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^cpu-[a-z0-9-]+-(openblas|cblas|builtin)-tiny\.json$/);
    expect(r.stdout).toContain(`wrote ${path.relative(process.cwd(), path.join(dir, files[0]))}\n`);
    const json = JSON.parse(fs.readFileSync(path.join(dir, files[0]), 'utf8'));
    expect(files[0]).toBe(`cpu-${json.machine.cpu.toLowerCase().replace(/\(r\)|\(tm\)|cpu|@.*$/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')}-${json.backend.blas}-tiny.json`);
  });

  test('--generate times generate with and without the key/value cache', async () => {
    const file = path.join(tmp, 'bench', 'generate.json');
    const r = await run(['bench', '--generate', '--quick', '--json', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(json.rows.map((row: { batch: number; useCache: boolean }) => [row.batch, row.useCache])).toEqual([[1, true], [1, false], [4, true], [4, false]]);
    for (const row of json.rows) {
      expect(row.newTokens).toBe(16);
      expect(row.tokensPerSecond).toBeCloseTo((row.batch * 16) / (row.ms / 1000), 6);
    }
    expect(json.machine.cpu).toEqual(expect.any(String));
  });

  test('--model times a LoRA training step beside PyTorch\'s (a tiny model here)', async () => {
    const file = path.join(tmp, 'bench', 'model.json');
    const r = await run(['bench', '--model', '--shapes', 'tiny', '--no-torch', '--json', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^lora-cuda: [\d.]+ ms\/step \(min [\d.]+; CPU \d+ ms\), \d+ tokens\/s, loss [\d.]+; weights [\d.]+ MiB, step peak [\d.]+ MiB of tensors$/m);
    expect(r.stdout).toContain('pytorch: not run (--no-torch)');
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(json.config).toMatchObject({ layers: 2, batch: 2, seq: 16, r: 4, dtype: 'float32' });
    expect(json.lora.tokensPerSecond).toBeCloseTo((2 * 16) / (json.lora.medianMs / 1000), 6);
    // Adapters on q_proj and v_proj of 2 layers: A [4, 64] and B [64, 4] on q, B [32, 4] on v.
    expect(json.lora.trainable).toBe(2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4));
    expect(json.pytorch).toBeNull();
    expect(json.ratio).toBeNull();
    // One round here (the full benchmark alternates three with PyTorch's): its median is the run's.
    expect(json.config.rounds).toBe(1);
    expect(json.rounds).toEqual([{ loraMs: json.lora.medianMs, pytorchMs: null }]);
    // Every parameter in float32: the tiny model's embedding (tied head), 2 layers' projections and norms,
    // the final norm, and the adapters.
    const layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128 + 2 * 64 + (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4);
    expect(json.lora.memory.weightBytes).toBe(4 * (256 * 64 + 2 * layer + 64));
    expect(json.lora.memory.stepPeakBytes).toBeGreaterThan(0);
    // The floor: the step's products counted by hand for 32 tokens (multiply-adds): projections
    // forward 32 * 36864 * 2 layers, their input gradients the same less layer 0's q, k, v (32 * 64 * 128),
    // the head forward and dx over the 30 rows that predict a token 2 * 30 * 64 * 256, the q and v adapters (forward, dB, dh, dA; dx in layer 1
    // only) 90112 + 65536, attention's 6 causal products (2 * 4 heads * 136 * 16 each; no dK in layer 0) x 11.
    const mults = 2 * 32 * 36864 * 2 - 32 * 64 * 128 + 2 * 30 * 64 * 256 + 90112 + 65536 + 11 * (2 * 4 * 136 * 16);
    expect(json.floor.productGflop).toBeCloseTo((2 * mults) / 1e9, 12);
    expect(json.floor.fmaPeakGflops).toBeGreaterThan(0);
    expect(json.floor.fmaKernels).toBe(json.backend.kernels);
    expect(json.floor.productFloorMs).toBeCloseTo((json.floor.productGflop / json.floor.fmaPeakGflops) * 1000, 9);
    expect(r.stdout).toMatch(/^floor: the step's products are 0\.0 GFLOP; at this machine's float32 multiply-add peak \(\d+ GFLOP\/s on \d+ threads, \S+ vectors\) they alone take \d+ ms \(our step: \d+ ms\)$/m);
  });

  test('--model --dtype bfloat16: the model in bfloat16 with float32 adapters, its weights in half the bytes', async () => {
    const file = path.join(tmp, 'bench', 'model-bf16.json');
    const r = await run(['bench', '--model', '--shapes', 'tiny', '--no-torch', '--dtype', 'bfloat16', '--json', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(json.config.dtype).toBe('bfloat16');
    const frozen = 256 * 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64;
    const adapters = 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4);
    expect(json.lora.memory.weightBytes).toBe(2 * frozen + 4 * adapters);
    expect(json.floor).toBeNull(); // the float32 peak says nothing of the bfloat16 kernels
    const bad = await run(['bench', '--model', '--shapes', 'tiny', '--no-torch', '--dtype', 'float16']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('--dtype must be float32 or bfloat16, got "float16"');
  });

  test('the benchmarks are outside the library: lib/ only dispatches to them, the binding keeps them apart', () => {
    const files = (dir: string): string[] => fs.readdirSync(dir, { withFileTypes: true })
      .flatMap((d) => (d.isDirectory() ? files(path.join(dir, d.name)) : d.name.endsWith('.ts') ? [path.join(dir, d.name)] : []));
    const importers = files(path.join(root, 'lib')).filter((f) => /(from|import\()\s*'[^']*bench[^']*'/.test(fs.readFileSync(f, 'utf8')));
    expect(importers.map((f) => path.relative(root, f))).toEqual([path.join('lib', 'cli', 'index.ts')]);
    expect(fs.readFileSync(path.join(root, 'lib', 'cli', 'index.ts'), 'utf8')).toMatch(/await import\('\.\.\/\.\.\/bench\/command'\)/);
    const binding = native as unknown as Record<string, unknown> & { bench: Record<string, unknown> };
    for (const name of ['gemmInto', 'cudaEventRecord', 'cudaEventElapsed', 'cudaEventDestroy']) expect(binding[name]).toBeUndefined();
    expect(Object.keys(binding.bench).sort()).toEqual(['eventDestroy', 'eventElapsed', 'eventRecord', 'fmaPeak', 'gemmBf16', 'gemmInto', 'livePeak']);
  });

  test('the bench binding: fmaPeak measures on every thread, and refuses a bad duration', () => {
    const p = benchNative.fmaPeak(0.05);
    expect(p.threads).toBe(backendInfo().cpu.threads);
    expect(p.kernels).toBe(backendInfo().cpu.kernels);
    expect(p.gflopsPerThread).toBeGreaterThan(0);
    // All threads together can beat one by at most the thread count (a late thread only lowers it).
    expect(p.gflops).toBeLessThanOrEqual(p.gflopsPerThread * p.threads * 1.0001);
    for (const bad of [0, -1, 61, NaN]) expect(() => benchNative.fmaPeak(bad)).toThrow(/^fmaPeak: seconds must be in \(0, 60\]$/);
  });

  test('the bench binding: a plain GEMM into an existing matrix; C++ failures come back as JS Errors', () => {
    manualSeed(4);
    const a = randn([3, 4], { dtype: 'float64' });
    const b = randn([5, 4], { dtype: 'float64' });
    const c0 = randn([3, 5], { dtype: 'float64' });
    const c = c0.clone();
    benchNative.gemmInto(a._h, b._h, c._h, false, true, 2, 0.5); // c = 2 a b^T + 0.5 c
    const want = a.matmul(b.t()).mul(2).add(c0.mul(0.5)).toArray();
    c.toArray().forEach((v, i) => expect(v).toBeCloseTo(want[i], 12));
    const thrown = (fn: () => unknown): NodeJS.ErrnoException => {
      try {
        fn();
      } catch (e) {
        return e as NodeJS.ErrnoException;
      }
      throw new Error('expected an error');
    };
    let e = thrown(() => benchNative.gemmInto(a._h, a._h, c._h, false, false, 1, 0));
    expect([e.code, e.message]).toEqual(['ERR_LORA_NATIVE', 'gemm: the inner dimension of b must be 4, got 3']);
    e = thrown(() => benchNative.gemmInto(1 as never, b._h, c._h, false, true, 1, 0));
    expect(e.message).toBe('gemm A: expected a native tensor handle');
    e = thrown(() => benchNative.eventElapsed(NaN, 0));
    expect(e.message).toBe('start event must be an integer');
    if (!backendInfo().cuda.available) {
      e = thrown(() => benchNative.eventRecord(0));
      expect(e.code).toBe('ERR_CUDA_UNAVAILABLE');
      expect(e.message).toMatch(/^CUDA is not available: /);
    }
  });

  test('a --json FILE or --results DIR under a regular file: ENOTDIR, before measuring', async () => {
    const file = path.join(tmp, 'bench-a-file');
    fs.writeFileSync(file, 'x');
    for (const [argv, shown, option] of [
      [['--json', path.join(file, 'result.json')], path.join(file, 'result.json'), '--json FILE'],
      [['--json', path.join(file, 'sub', 'result.json')], path.join(file, 'sub', 'result.json'), '--json FILE'],
      [['--results', file], file, '--results DIR'],
      [['--results', path.join(file, 'sub')], path.join(file, 'sub'), '--results DIR'],
    ] as [string[], string, string][]) {
      const r = await run(['bench', '--shapes', 'tiny', ...argv]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(lines(r.stderr)).toEqual([`lora-cuda bench: cannot write ${shown} (ENOTDIR); choose another ${option}`]);
    }
    // Node says the same for such a path.
    expect(() => fs.writeFileSync(path.join(file, 'result.json'), '')).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
  });
});

describe('lora-cuda doctor', () => {
  test('reports the installation and what to do for each missing part; exit 0 when the CPU path works', async () => {
    const r = await run(['doctor']);
    expect(r.code).toBe(0);
    const info = backendInfo();
    expect(r.stdout).toMatch(new RegExp(`^node +${process.version.replace(/\./g, '\\.')} \\(Node-API \\d+\\), linux-x64$`, 'm'));
    expect(r.stdout).toMatch(/^glibc +\d+\.\d+$/m);
    expect(r.stdout).toContain(`addon   ${info.addon.path} (`);
    expect(r.stdout).toMatch(new RegExp(`^cpu +.*; ${info.cpu.threads} threads; features: .*; kernels: (avx512|avx2\\+fma|generic)$`, 'm'));
    expect(r.stdout).toMatch(/^check +a LoRA forward and backward ran on the CPU$/m);
    expect(r.stdout).toMatch(/^ready: the CPU path works/m);
    if (!info.cuda.available && info.cuda.compiled && info.cuda.driverVersion === 0) {
      // No driver here: the line says what to install.
      expect(r.stdout).toMatch(/^driver +none found\n +-> for a GPU, install the NVIDIA driver, 580 or newer for CUDA 13\.0$/m);
    }
    if (info.cuda.available) expect(r.stdout).toMatch(/^cuda:0 +.*compute capability \d+\.\d+/m);
    // MPI and NCCL: found (with version and path), or what to install.
    const dist = distributedInfo();
    expect(r.stdout).toMatch(dist.mpi.loaded ? new RegExp(`^mpi +.*\\(${dist.mpi.path.replace(/[.+]/g, '\\$&')}\\)$`, 'm') : /^mpi +not found\n +-> optional, .*apt-get install openmpi-bin libopenmpi3$/m);
    if (info.cuda.compiled) expect(r.stdout).toMatch(dist.nccl.loaded ? /^nccl +\d+\.\d+\.\d+ \(/m : /^nccl +not found\n +-> optional, .*NCCL 2\.10 or later/m);
    else expect(r.stdout).not.toMatch(/^nccl /m);

    const j = await run(['doctor', '--json']);
    expect(j.code).toBe(0);
    const report = JSON.parse(j.stdout);
    expect(report.ok).toBe(true);
    expect(report.addon.path).toBe(info.addon.path);
    expect(report.info.cpu.features).toEqual(info.cpu.features);
    expect(report.glibc.runtime).toMatch(/^\d+\.\d+$/);
    expect(report.glibc.addonNeeds).toMatch(/^\d+\.\d+$/);
  });

  test('backendInfo names the addon and the CPU features the kernels use', () => {
    const info = backendInfo();
    expect(['prebuilt', 'build', 'override']).toContain(info.addon.kind);
    expect(fs.existsSync(info.addon.path)).toBe(true);
    for (const f of info.cpu.features) expect(['avx2', 'fma', 'avx512f', 'avx512vl', 'avx512bf16']).toContain(f);
    const has = (...fs: string[]) => fs.every((f) => info.cpu.features.includes(f));
    const best = has('avx2', 'fma', 'avx512f', 'avx512vl') ? 'avx512' : has('avx2', 'fma') ? 'avx2+fma' : 'generic';
    const forced = process.env.LORA_CUDA_CPU_KERNELS;
    expect(info.cpu.kernels).toBe(forced === undefined || forced === '' ? best : forced === 'avx2' ? 'avx2+fma' : forced);
  });
});

describe('progress and charts', () => {
  test('progress: a redrawn bar on a TTY, four plain lines otherwise', () => {
    const plain = capture(false);
    const p = new Progress(plain.io, { label: 'train', total: 100 });
    for (let s = 1; s <= 100; s++) p.update(s, 'loss 1.0', s * 10);
    p.done();
    expect(lines(plain.stderr())).toHaveLength(4);
    expect(plain.stderr()).toMatch(/^train: step 25\/100, loss 1\.0\b/);

    const tty = capture(true);
    const q = new Progress(tty.io, { label: 'train', total: 10, intervalMs: 0 });
    for (let s = 1; s <= 10; s++) q.update(s);
    q.done();
    expect(tty.stderr().split('\r').length).toBe(11);
    expect(tty.stderr()).toContain('██████████');
    expect(tty.stderr().endsWith('\n')).toBe(true);
  });

  test('terminal chart (braille and ASCII) and SVG of two phases', () => {
    const a = Array.from({ length: 50 }, (_, i) => 3 * Math.exp(-i / 10));
    const b = Array.from({ length: 30 }, (_, i) => 5 * Math.exp(-i / 5) + 0.01);
    const series = [{ label: 'A', losses: a }, { label: 'B', losses: b }];
    const braille = terminalChart(series, { width: 40, height: 8 });
    expect(braille).toMatch(/[\u2801-\u28ff]/);
    expect(braille).toContain('┴');
    const ascii = terminalChart(series, { width: 40, height: 8, ascii: true });
    expect(ascii).toMatch(/^[\x20-\x7e\n]*$/);
    expect(ascii).toContain('*');
    expect(ascii).toContain('o');
    const svg = svgChart([{ label: 'a <&> "b"', losses: [1, 0, NaN, Infinity, 0.5] }], { title: 'x & y' });
    expect(parseXmlRoot(svg).tag).toBe('svg');
    expect(svg).toContain('a &lt;&amp;&gt; &quot;b&quot;');
  });
});

describe('bin/lora-cuda.js', () => {
  const built = fs.existsSync(path.join(root, 'dist', 'lib', 'cli', 'index.js'));
  (built ? test : test.skip)('runs as a child process: --help exits 0, a bad option exits 2', () => {
    const bin = path.join(root, 'bin', 'lora-cuda.js');
    expect(fs.readFileSync(bin, 'utf8')).toMatch(/^#!\/usr\/bin\/env node\n/);
    let r = spawnSync(process.execPath, [bin, '--help'], { cwd: tmp, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: lora-cuda <command>/);
    r = spawnSync(process.execPath, [bin, 'demo', '--bogus'], { cwd: tmp, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('lora-cuda demo: unknown option --bogus (see lora-cuda demo --help)\n');
  });
  if (!built) {
    test.skip('bin/lora-cuda.js: dist/ is not built (run npm run build:ts), so the bin script is not run', () => undefined);
  }
});

test('package.json declares the bin', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  expect(pkg.bin).toEqual({ 'lora-cuda': 'bin/lora-cuda.js' });
  expect(fs.statSync(path.join(root, 'bin', 'lora-cuda.js')).mode & 0o111).not.toBe(0);
});

describe('lora-cuda generate', () => {
  let modelDir: string;
  let adapterDir: string;
  const prompt = 'the cat sat';

  beforeAll(async () => {
    ({ model: modelDir } = await finetuneFixture(path.join(tmp, 'gen')));
    // An adapter with B != 0, so that it changes the output.
    const m = await LlamaForCausalLM.fromPretrained(modelDir);
    manualSeed(11);
    injectLora(m, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 64 });
    noGrad(() => {
      for (const [, l] of loraLayers(m)) l.B!.copy_(randn([...l.B!.shape]));
    });
    adapterDir = path.join(tmp, 'gen-adapter');
    await saveAdapter(m, adapterDir);
  });

  /** What the library gives for the same prompt: encode, generate, decode. */
  async function expected(o: { adapter?: boolean; sample?: { seed: number; temperature: number } }): Promise<string> {
    const m = await LlamaForCausalLM.fromPretrained(modelDir);
    if (o.adapter) await loadAdapter(m, adapterDir);
    const tok = await loadTokenizer(modelDir);
    const ids = Array.from(tok.encode(prompt).ids, Number);
    if (o.sample) manualSeed(o.sample.seed);
    const out = m.generate([ids], { maxNewTokens: 8, eosTokenId: 2, ...(o.sample ? { doSample: true, temperature: o.sample.temperature } : {}) })[0];
    return `${tok.decode(out, { skip_special_tokens: true })}\n`;
  }

  test('greedy, with and without an adapter, and seeded sampling: the library\'s output, decoded', async () => {
    const base = await run(['generate', '--model', modelDir, '--prompt', prompt, '--max-new-tokens', '8', '--device', 'cpu']);
    expect(base.code).toBe(0);
    expect(base.stdout).toBe(await expected({}));
    expect(base.stdout.startsWith(prompt)).toBe(true);
    expect(lines(base.stderr)).toHaveLength(1);
    expect(base.stderr).toMatch(/^\d+ new tokens? in [\d.]+ s \([\d.]+ tokens\/s, cpu, greedy\)$/m);

    const adapted = await run(['generate', '--model', modelDir, '--adapter', adapterDir, '--prompt', prompt, '--max-new-tokens', '8', '--device', 'cpu']);
    expect(adapted.code).toBe(0);
    expect(adapted.stdout).toBe(await expected({ adapter: true }));
    expect(adapted.stdout).not.toBe(base.stdout);
    expect(adapted.stderr).toContain(`adapter ${adapterDir}`);

    const argv = ['generate', '--model', modelDir, '--prompt', prompt, '--max-new-tokens', '8', '--temperature', '2', '--seed', '4', '--device', 'cpu'];
    const s1 = await run(argv);
    const s2 = await run(argv);
    expect(s1.code).toBe(0);
    expect(s1.stdout).toBe(s2.stdout);
    expect(s1.stdout).toBe(await expected({ sample: { seed: 4, temperature: 2 } }));
    expect(s1.stderr).toMatch(/sampled at temperature 2\)$/m);
  });

  test('the text streams while generate runs, in pieces that join to the whole output', async () => {
    const c = capture();
    const chunks: { text: string; during: boolean }[] = [];
    let during = false;
    const io: CliIO = { ...c.io, stdout: (t) => chunks.push({ text: t, during }) };
    const real = LlamaForCausalLM.prototype.generate;
    const spy = jest.spyOn(LlamaForCausalLM.prototype, 'generate').mockImplementation(function (this: LlamaForCausalLM, ...args) {
      during = true;
      try {
        return real.apply(this, args);
      } finally {
        during = false;
      }
    });
    try {
      expect(await main(['generate', '--model', modelDir, '--prompt', prompt, '--max-new-tokens', '8', '--device', 'cpu'], io)).toBe(0);
    } finally {
      spy.mockRestore();
    }
    expect(chunks.map((k) => k.text).join('')).toBe(await expected({}));
    expect(chunks.filter((k) => k.during).length).toBeGreaterThan(1);
    // Each piece before the end stops after a space or a newline (transformers' TextStreamer).
    for (const k of chunks.slice(0, -2)) expect(k.text).toMatch(/[ \n]$/);
  });

  test('--chat: the prompt as a user message through the checkpoint\'s template with the generation prompt; the reply alone is printed', async () => {
    const tok = await loadTokenizer(modelDir);
    const rendered = tok.applyChatTemplate([{ role: 'user', content: prompt }], { addGenerationPrompt: true });
    expect(rendered).toBe(`user : ${prompt} </s> assistant : `);
    const ids = Array.from(tok.encode(rendered, { add_special_tokens: false }).ids, Number);
    const m = await LlamaForCausalLM.fromPretrained(modelDir);
    await loadAdapter(m, adapterDir);
    const out = m.generate([ids], { maxNewTokens: 8, eosTokenId: 2 })[0];
    const r = await run(['generate', '--model', modelDir, '--adapter', adapterDir, '--chat', '--prompt', prompt, '--max-new-tokens', '8', '--device', 'cpu']);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${tok.decode(out.slice(ids.length), { skip_special_tokens: true })}\n`);
    // Not the plain prompt's continuation: the template changed the input.
    const plain = await run(['generate', '--model', modelDir, '--adapter', adapterDir, '--prompt', prompt, '--max-new-tokens', '8', '--device', 'cpu']);
    expect(plain.stdout.startsWith(prompt)).toBe(true);
    expect(r.stdout.startsWith(prompt)).toBe(false);

    // A checkpoint without a chat template, and a template that fails: one line, exit 1.
    const none = path.join(tmp, 'gen-no-template');
    fs.cpSync(modelDir, none, { recursive: true });
    fs.writeFileSync(path.join(none, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>' }));
    let e = await run(['generate', '--model', none, '--chat', '--prompt', prompt, '--device', 'cpu']);
    expect([e.code, lines(e.stderr)]).toEqual([1, [
      'lora-cuda generate: --chat: this tokenizer has no chat template (no chat_template in tokenizer_config.json and no chat_template.jinja); leave out --chat, or add chat_template to tokenizer_config.json',
    ]]);
    fs.writeFileSync(path.join(none, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', chat_template: "{{ raise_exception('user turns are not supported') }}" }));
    e = await run(['generate', '--model', none, '--chat', '--prompt', prompt, '--device', 'cpu']);
    expect(e.code).toBe(1);
    expect(lines(e.stderr)).toHaveLength(1);
    expect(e.stderr).toMatch(/^lora-cuda generate: --chat: the chat template failed to render these 1 messages: .*user turns are not supported/);
  });

  test('a tokenizer that gives ids outside the vocabulary (-1) is blamed, not the prompt or generate()', async () => {
    const broken = path.join(tmp, 'gen-bad-tokenizer');
    fs.cpSync(modelDir, broken, { recursive: true });
    const json = JSON.parse(fs.readFileSync(path.join(modelDir, 'tokenizer.json'), 'utf8'));
    json.model.vocab.cat = -1;
    fs.writeFileSync(path.join(broken, 'tokenizer.json'), JSON.stringify(json));
    const r = await run(['generate', '--model', broken, '--prompt', prompt, '--device', 'cpu']);
    expect([r.code, lines(r.stderr)]).toEqual([1, [
      `lora-cuda generate: --model ${broken}: the tokenizer (tokenizer.json) gives token id -1 for the prompt, but the model's ids are 0 to 66 (vocab_size 67); the tokenizer is damaged or does not belong to this model`,
    ]]);
  });

  test('errors: one line, exit 2 for usage, 1 for bad files', async () => {
    let r = await run(['generate', '--model', modelDir]);
    expect(r.code).toBe(2);
    expect(lines(r.stderr)).toEqual(['lora-cuda generate: --prompt TEXT is required (see lora-cuda generate --help)']);
    r = await run(['generate', '--model', modelDir, '--prompt', 'x', '--top-p', '0']);
    expect(r.code).toBe(2);
    r = await run(['generate', '--model', modelDir, '--prompt', 'x', '--adapter', path.join(tmp, 'nope'), '--device', 'cpu']);
    expect(r.code).toBe(1);
    expect(lines(r.stderr)).toEqual([`lora-cuda generate: --adapter ${path.join(tmp, 'nope')}: not a directory (give a PEFT adapter directory with adapter_config.json and adapter_model.safetensors)`]);
    r = await run(['generate', '--model', path.join(tmp, 'nope'), '--prompt', 'x', '--device', 'cpu']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^lora-cuda generate: --model .*nope: not a directory/);
    // A checkpoint without tokenizer.json: what to do, not a raw ENOENT.
    const bare = path.join(tmp, 'gen-no-tokenizer');
    fs.mkdirSync(bare, { recursive: true });
    for (const f of fs.readdirSync(modelDir)) if (f !== 'tokenizer.json') fs.copyFileSync(path.join(modelDir, f), path.join(bare, f));
    r = await run(['generate', '--model', bare, '--prompt', 'x', '--device', 'cpu']);
    expect(r.code).toBe(1);
    expect(lines(r.stderr)).toEqual([`lora-cuda generate: --model ${bare}: loadTokenizer: ${bare} has no tokenizer.json (copy tokenizer.json from the base model's repository into this directory; only tokenizer.json tokenizers are supported)`]);
  });
});
