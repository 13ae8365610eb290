// Files that are not what their name promises, for every file the project reads: a FIFO or another
// non-regular file in a file's place (refused without waiting on it), files over their size limit
// (refused unread), JSON nested too deep or with too many objects (refused before JSON.parse spends
// the heap on it), and symbolic link loops (said to be loops, not "not found").
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  AdamW, LlamaForCausalLM, SafetensorsFile, injectLora, loadAdapter, loadOptimizerState, loadTokenizer, readCheckpoint, saveAdapter,
  saveSafetensors, tensor,
} from '../lib';
import { main } from '../lib/cli/index';
import { MAX_JSON_CONTAINERS, READ_LIMITS, scanJsonShape } from '../lib/fsio';
import { finetuneFixture } from './helpers/finetune-fixture';

const root = path.resolve(__dirname, '..');
let tmp: string;
let model: string;
let data: string;
let adapter: string;
beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-files-'));
  ({ model, data } = await finetuneFixture(tmp));
  adapter = path.join(tmp, 'adapter');
  const m = await LlamaForCausalLM.fromPretrained(model);
  injectLora(m, { r: 2, targetModules: ['q_proj'] });
  await saveAdapter(m, adapter);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function cli(argv: string[]): Promise<{ code: number; stderr: string }> {
  let stderr = '';
  const code = await main(argv, { stdout: () => undefined, stderr: (t) => { stderr += t; }, isTTY: false, columns: 80 });
  return { code, stderr };
}

/** A copy of directory `src` as `name`, with `edit` applied to it. */
function copyOf(src: string, name: string, edit: (dir: string) => void): string {
  const dest = path.join(tmp, name);
  fs.cpSync(src, dest, { recursive: true });
  edit(dest);
  return dest;
}

async function reason(p: Promise<unknown>): Promise<string> {
  return p.then(() => 'resolved', (e: Error) => e.message);
}

describe('a FIFO where a file is expected is refused at once, by every reader', () => {
  // In a child process: a reader that waits on the FIFO never returns, and a synchronous one would
  // block the test runner itself.
  test('every case answers, each naming the FIFO', async () => {
    if (process.platform === 'win32') return;
    const work = fs.mkdtempSync(path.join(tmp, 'fifo-'));
    const results = new Map<string, string>();
    await new Promise<void>((resolve, reject) => {
      const c = spawn(process.execPath, ['-r', './test/helpers/ts-register.js', 'test/helpers/fifo-child.ts', work], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
      const timer = setTimeout(() => c.kill('SIGKILL'), 90_000);
      let buf = '';
      c.stdout!.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const { name, result } = JSON.parse(buf.slice(0, i)) as { name: string; result: string };
          results.set(name, result);
          buf = buf.slice(i + 1);
        }
      });
      c.on('error', reject);
      c.on('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    const cases = ['SafetensorsFile.open', 'SafetensorsFile.openSync', 'loadSafetensorsSync', 'config.json', 'model.safetensors',
      'model.safetensors.index.json', 'adapter_config.json', 'adapter_model.safetensors', 'tokenizer.json', 'tokenizer_config.json',
      'trainer_state.json', 'optimizer.safetensors', 'finetune --data', 'merge tokenizer.json', 'generate tokenizer_config.json'];
    const answered = Object.fromEntries(cases.map((c) => [c, results.get(c) ?? '(no answer: it waited on the FIFO)']));
    for (const c of cases) expect([c, answered[c]]).toEqual([c, expect.stringMatching(/it is not a regular file: it is a FIFO \(named pipe\)/)]);
    // Saving over a FIFO left where the adapter's config was: replaced, not waited on.
    expect(results.get('saveAdapter over adapter_config.json')).toBe('ok');
    expect(results.get('done')).toBe('true');
  }, 120_000);

  test('a directory in a file\'s place says so', async () => {
    const dir = copyOf(model, 'config-dir', (d) => {
      fs.rmSync(path.join(d, 'config.json'));
      fs.mkdirSync(path.join(d, 'config.json'));
    });
    expect(await reason(LlamaForCausalLM.fromPretrained(dir))).toMatch(/config\.json: it is not a regular file: it is a directory$/);
  });
});

describe('size limits: a file larger than its kind can be is refused before it is read', () => {
  // Sparse files: the size is there, the bytes are not (reading them would take the time and memory).
  const over = (file: string, limit: { maxBytes: number }) => {
    fs.rmSync(file, { force: true });
    fs.writeFileSync(file, '');
    fs.truncateSync(file, limit.maxBytes + 1);
  };
  const tooLarge = (limit: { maxBytes: number }) => new RegExp(`has ${limit.maxBytes + 1} bytes \\(\\S+ \\w+\\), more than the \\S+ \\w+ this library reads of a`);

  test('config.json, adapter_config.json, trainer_state.json (16 MiB), tokenizer files and the shard index (64 MiB)', async () => {
    const m1 = copyOf(model, 'big-config', (d) => over(path.join(d, 'config.json'), READ_LIMITS.config));
    expect(await reason(LlamaForCausalLM.fromPretrained(m1))).toMatch(tooLarge(READ_LIMITS.config));
    const a1 = copyOf(adapter, 'big-adapter-config', (d) => over(path.join(d, 'adapter_config.json'), READ_LIMITS.config));
    expect(await reason(loadAdapter(await LlamaForCausalLM.fromPretrained(model), a1))).toMatch(tooLarge(READ_LIMITS.config));
    const ckpt = path.join(tmp, 'big-ckpt');
    fs.mkdirSync(ckpt);
    over(path.join(ckpt, 'trainer_state.json'), READ_LIMITS.config);
    expect(await reason(readCheckpoint(ckpt))).toMatch(tooLarge(READ_LIMITS.config));
    const t1 = copyOf(model, 'big-tokenizer', (d) => over(path.join(d, 'tokenizer.json'), READ_LIMITS.large));
    expect(await reason(loadTokenizer(t1))).toMatch(tooLarge(READ_LIMITS.large));
    const t2 = copyOf(model, 'big-tokenizer-config', (d) => over(path.join(d, 'tokenizer_config.json'), READ_LIMITS.large));
    expect(await reason(loadTokenizer(t2))).toMatch(tooLarge(READ_LIMITS.large));
    const i1 = copyOf(model, 'big-index', (d) => {
      fs.renameSync(path.join(d, 'model.safetensors'), path.join(d, 'model-00001-of-00001.safetensors'));
      over(path.join(d, 'model.safetensors.index.json'), READ_LIMITS.large);
    });
    expect(await reason(LlamaForCausalLM.fromPretrained(i1))).toMatch(tooLarge(READ_LIMITS.large));
  });

  test('a real tokenizer.json size passes: Gemma 3\'s (33 MB) is within the limit', () => {
    expect(READ_LIMITS.large.maxBytes).toBeGreaterThan(33_400_000);
  });
});

describe('JSON is bounded before JSON.parse runs', () => {
  const deep = (levels: number) => `${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}`;

  test('nesting deeper than 64 levels, in every JSON file the project reads', async () => {
    const nests = /nests deeper than 64 levels/;
    const parse = jest.spyOn(JSON, 'parse');
    const m1 = copyOf(model, 'deep-config', (d) => fs.writeFileSync(path.join(d, 'config.json'), deep(100_000)));
    expect(await reason(LlamaForCausalLM.fromPretrained(m1))).toMatch(nests);
    const a1 = copyOf(adapter, 'deep-adapter-config', (d) => fs.writeFileSync(path.join(d, 'adapter_config.json'), deep(65)));
    expect(await reason(loadAdapter(await LlamaForCausalLM.fromPretrained(model), a1))).toMatch(nests);
    const t1 = copyOf(model, 'deep-tokenizer', (d) => fs.writeFileSync(path.join(d, 'tokenizer.json'), deep(65)));
    expect(await reason(loadTokenizer(t1))).toMatch(nests);
    const t2 = copyOf(model, 'deep-tokenizer-config', (d) => fs.writeFileSync(path.join(d, 'tokenizer_config.json'), deep(65)));
    expect(await reason(loadTokenizer(t2))).toMatch(nests);
    const ckpt = path.join(tmp, 'deep-ckpt');
    fs.mkdirSync(ckpt);
    fs.writeFileSync(path.join(ckpt, 'trainer_state.json'), deep(65));
    expect(await reason(readCheckpoint(ckpt))).toMatch(nests);
    const i1 = copyOf(model, 'deep-index', (d) => {
      fs.renameSync(path.join(d, 'model.safetensors'), path.join(d, 'model-00001-of-00001.safetensors'));
      fs.writeFileSync(path.join(d, 'model.safetensors.index.json'), deep(65));
    });
    expect(await reason(LlamaForCausalLM.fromPretrained(i1))).toMatch(nests);
    const jsonl = path.join(tmp, 'deep.jsonl');
    fs.writeFileSync(jsonl, `{"text": "the cat"}\n{"text": ${'['.repeat(100)}${']'.repeat(100)}}\n`);
    const r = await cli(['finetune', '--model', model, '--data', jsonl, '--out', path.join(tmp, 'deep-out')]);
    expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/^lora-cuda finetune: --data .*deep\.jsonl line 2: not valid JSON here \(it nests deeper than 64 levels\)/)]);
    // None of these texts reached JSON.parse.
    for (const [arg] of parse.mock.calls) expect(String(arg).startsWith('{"a":{"a":')).toBe(false);
    expect(parse.mock.calls.some(([arg]) => String(arg).includes('[[[['))).toBe(false);
    parse.mockRestore();
  });

  test('the safetensors header: too deep is refused before JSON.parse, and the metadata of an optimiser state too', async () => {
    const file = path.join(tmp, 'deep-header.safetensors');
    const json = Buffer.from(`{"__metadata__": {"x": "y"}, "t": ${deep(80)}}`);
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([prefix, json]));
    const parse = jest.spyOn(JSON, 'parse');
    expect(await reason(SafetensorsFile.open(file))).toMatch(/the header's JSON nests deeper than 64 levels/);
    expect(parse).not.toHaveBeenCalled();
    // JSON inside a metadata string is not seen by the header's check: the optimiser state's own check bounds it.
    const optim = path.join(tmp, 'deep-optimizer.safetensors');
    await saveSafetensors(optim, {}, { metadata: { 'lora_cuda.optimizer': deep(80) } });
    expect(await reason(loadOptimizerState(new AdamW([tensor([1]).requiresGrad_(true)]), optim))).toMatch(/metadata nests deeper than 64 levels/);
    for (const [arg] of parse.mock.calls) expect(String(arg).startsWith('{"a":{"a":')).toBe(false);
    parse.mockRestore();
  });

  test(`more than ${MAX_JSON_CONTAINERS} objects and arrays (a flat file of [] within the size limit) is refused unparsed`, async () => {
    const text = `[${'[],'.repeat(MAX_JSON_CONTAINERS)}[]]`;
    expect(text.length).toBeLessThan(READ_LIMITS.config.maxBytes);
    const m1 = copyOf(model, 'wide-config', (d) => fs.writeFileSync(path.join(d, 'config.json'), text));
    expect(await reason(LlamaForCausalLM.fromPretrained(m1))).toMatch(new RegExp(`config\\.json is not valid JSON: it has more than ${MAX_JSON_CONTAINERS} objects and arrays`));
  });

  test('the scan skips strings (escapes included) and counts containers', () => {
    const shape = (s: string) => scanJsonShape(Buffer.from(s));
    expect(shape('{"a": "[[[[{{", "b\\"[": [1, {"c": []}]}')).toEqual({ depth: 4, containers: 4 });
    expect(shape('"unterminated [[[')).toEqual({ depth: 0, containers: 0 });
    expect(shape('[]'.repeat(10))).toEqual({ depth: 1, containers: 10 });
  });
});

describe('a symbolic link loop is said to be one, not "not found"', () => {
  const loop = (p: string) => {
    fs.rmSync(p, { recursive: true, force: true });
    fs.symlinkSync(path.basename(p), p); // points at itself
  };

  test('the library\'s readers', async () => {
    const elooped = /is a symbolic link loop \(ELOOP/;
    const m1 = copyOf(model, 'loop-config', (d) => loop(path.join(d, 'config.json')));
    expect(await reason(LlamaForCausalLM.fromPretrained(m1))).toMatch(elooped);
    const m2 = copyOf(model, 'loop-weights', (d) => loop(path.join(d, 'model.safetensors')));
    expect(await reason(LlamaForCausalLM.fromPretrained(m2))).toMatch(elooped);
    const a1 = copyOf(adapter, 'loop-adapter-weights', (d) => loop(path.join(d, 'adapter_model.safetensors')));
    expect(await reason(loadAdapter(await LlamaForCausalLM.fromPretrained(model), a1))).toMatch(elooped);
    const t1 = copyOf(model, 'loop-tokenizer', (d) => loop(path.join(d, 'tokenizer.json')));
    expect(await reason(loadTokenizer(t1))).toMatch(elooped);
    const st = path.join(tmp, 'loop.safetensors');
    loop(st);
    expect(await reason(SafetensorsFile.open(st))).toMatch(elooped);
  });

  test('the command line\'s directories and files', async () => {
    const dirLoop = path.join(tmp, 'loop-dir');
    loop(dirLoop);
    const elooped = /is a symbolic link loop \(ELOOP/;
    for (const argv of [
      ['finetune', '--model', dirLoop, '--data', data, '--out', path.join(tmp, 'loop-out')],
      ['finetune', '--model', copyOf(model, 'loop-ft-config', (d) => loop(path.join(d, 'config.json'))), '--data', data, '--out', path.join(tmp, 'loop-out')],
      ['generate', '--model', dirLoop, '--prompt', 'x', '--device', 'cpu'],
      ['merge', '--model', dirLoop, '--adapter', adapter, '--out', path.join(tmp, 'loop-merged')],
      ['merge', '--model', model, '--adapter', adapter, '--out', dirLoop],
    ]) {
      const r = await cli(argv);
      expect([argv.join(' '), r.code, r.stderr]).toEqual([argv.join(' '), 1, expect.stringMatching(elooped)]);
      expect(r.stderr).not.toMatch(/this is a bug|not found|no config\.json|not a directory/);
    }
  });
});
