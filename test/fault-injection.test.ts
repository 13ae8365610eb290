// Fault injection: saves that fail (a full disk, simulated) or are interrupted (SIGKILL of the process
// while it writes) leave the previous adapter intact and loadable; `lora-cuda finetune --resume`
// after SIGKILLs ends with the adapter, bit for bit, of an uninterrupted run with the same seed.
import { ChildProcess, spawn } from 'child_process';
import fs = require('fs'); // the module object itself, so jest.spyOn reaches the code under test
import * as os from 'os';
import * as path from 'path';
import { LlamaForCausalLM, Module, Trainer, injectLora, loadAdapter, manualSeed, noGrad, qkvFilter, randn, readCheckpoint, saveAdapter } from '../lib';
import type { TrainerOptions } from '../lib';
import { loadCases } from './helpers/llama-weights';
import type { LoRALinear } from '../lib';
import { CliIO } from '../lib/cli/io';
import { finetuneCommand } from '../lib/cli/finetune';
import { bits } from './helpers/state';
import { ToyTransformer } from './helpers/toy';
import { finetuneFixture } from './helpers/finetune-fixture';
import { Stack, stackWithLora } from './helpers/stack-model';

const root = path.resolve(__dirname, '..');
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-faults-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(() => jest.restoreAllMocks());

const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });

function model(alpha: number, seed: number): Module {
  manualSeed(0);
  const m = new ToyTransformer(8, 2);
  injectLora(m, { r: 2, alpha, filter: qkvFilter });
  manualSeed(seed);
  noGrad(() => {
    for (const [, l] of m.namedModules()) if ((l as LoRALinear).B) (l as LoRALinear).B!.copy_(randn([8, 2]));
  });
  return m;
}

/** The files of an adapter directory, byte for byte. */
function files(dir: string): Record<string, string> {
  return Object.fromEntries(fs.readdirSync(dir).sort().map((f) => [f, fs.readFileSync(path.join(dir, f)).toString('base64')]));
}

/** The adapter in `dir` loads, and its values are those of `m`. */
async function expectLoads(dir: string, m: Module): Promise<void> {
  manualSeed(0);
  const fresh = new ToyTransformer(8, 2);
  expect(await loadAdapter(fresh, dir)).toHaveLength(6);
  for (const [name, l] of m.namedModules()) {
    const want = l as LoRALinear;
    if (!want.B) continue;
    const got = fresh.getSubmodule(name) as LoRALinear;
    expect([bits(got.A!), bits(got.B!), got.scale]).toEqual([bits(want.A!), bits(want.B!), want.scale]);
  }
}

// ===================================================================== disk full

describe('a save that fails half-way (disk full) leaves the previous adapter as it was', () => {
  async function previous(label: string): Promise<{ dir: string; v1: Module; before: Record<string, string> }> {
    const dir = path.join(tmp, `enospc-${label}`);
    const v1 = model(4, 1);
    await saveAdapter(v1, dir);
    return { dir, v1, before: files(dir) };
  }

  /** The nth write (from 1) into the temporary file of `name` fails with ENOSPC; other writes go through. */
  function failWrite(name: string, nth: number): void {
    const open = fs.open;
    const write = fs.write;
    const fds = new Set<number>();
    jest.spyOn(fs, 'open').mockImplementation(((p: string, flags: string, cb: (e: Error | null, fd: number) => void) => {
      open(p, flags, (err, fd) => {
        if (!err && path.basename(p).startsWith(`.${name}.`)) fds.add(fd);
        cb(err, fd);
      });
    }) as unknown as typeof fs.open);
    let calls = 0;
    jest.spyOn(fs, 'write').mockImplementation(((fd: number, ...args: unknown[]) => {
      if (fds.has(fd) && ++calls === nth) {
        const cb = args[args.length - 1] as (e: Error) => void;
        process.nextTick(() => cb(enospc()));
        return;
      }
      return (write as (...a: unknown[]) => void)(fd, ...args);
    }) as typeof fs.write);
  }

  test.each([
    ['the same settings, ENOSPC in the 2nd write of the weights', 4, 'adapter_model.safetensors', 2],
    ['other settings, ENOSPC in the 2nd write of the weights', 8, 'adapter_model.safetensors', 2],
    ['other settings, ENOSPC in the 1st write of the weights', 8, 'adapter_model.safetensors', 1],
    ['other settings, ENOSPC while writing the new config: nothing has been replaced yet', 8, 'adapter_config.json', 1],
  ])('%s', async (_name, alpha, file, failAt) => {
    const { dir, v1, before } = await previous(`w-${alpha}-${file}-${failAt}`);
    failWrite(file, failAt);
    await expect(saveAdapter(model(alpha, 2), dir)).rejects.toThrow(/ENOSPC/);
    jest.restoreAllMocks();
    expect(files(dir)).toEqual(before); // no temporary file left either
    await expectLoads(dir, v1);
  });

  test('a failed rename of the weights (EIO): the previous adapter, and no temporary files', async () => {
    const { dir, v1, before } = await previous('rename');
    jest.spyOn(fs, 'rename').mockImplementation(((_a: unknown, _b: unknown, cb: (e: Error) => void) => {
      process.nextTick(() => cb(Object.assign(new Error('EIO: i/o error, rename'), { code: 'EIO' })));
    }) as unknown as typeof fs.rename);
    await expect(saveAdapter(model(8, 2), dir)).rejects.toThrow(/EIO/);
    jest.restoreAllMocks();
    expect(files(dir)).toEqual(before);
    await expectLoads(dir, v1);
  });

  test('after the failures, a save succeeds and replaces the adapter', async () => {
    const { dir } = await previous('then-ok');
    const v2 = model(8, 2);
    await saveAdapter(v2, dir);
    expect(Object.keys(files(dir))).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    await expectLoads(dir, v2);
  });
});

// ================================================================ concurrent saves

describe('concurrent saves to one directory in one process', () => {
  test('run one after another: after each round the weights and config are those of the last save, and they load', async () => {
    const dir = path.join(tmp, 'concurrent');
    fs.mkdirSync(dir);
    // Another name for the same directory: saves are serialised by its real path.
    const alias = path.join(tmp, 'concurrent-alias');
    fs.symlinkSync(dir, alias);
    const versions = [4, 8, 16, 32].map((alpha, i) => ({ alpha, m: model(alpha, 10 + i) }));
    for (let round = 0; round < 40; round++) {
      const order = round % 2 ? [...versions].reverse() : versions;
      await Promise.all(order.map(({ m }, i) => saveAdapter(m, i % 2 ? alias : dir)));
      const last = order[order.length - 1];
      expect([round, JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).lora_alpha]).toEqual([round, last.alpha]);
      await expectLoads(dir, last.m);
    }
    expect(Object.keys(files(dir))).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  });
});

// ================================================================ checkpoints, disk full

describe('a checkpoint that fails half-way (disk full) says what is left, and leaves no temporary directory', () => {
  const CONFIG = loadCases().cases.llama_gqa.config;
  const batches = () => Array.from({ length: 4 }, (_, k) => ({ ids: [[3 + k, 4 + k, 5 + k, 6 + k]] }));
  function trainer(dir: string, maxSteps: number, onCheckpoint?: TrainerOptions['onCheckpoint']): Trainer {
    manualSeed(1);
    const model = new LlamaForCausalLM(CONFIG);
    injectLora(model, { r: 2, alpha: 4, targetModules: ['q_proj'] });
    return new Trainer({ model, train: batches(), maxSteps, saveEvery: 1, checkpointDir: dir, optimizer: { lr: 0.01 }, onCheckpoint });
  }
  /** Writes into the temporary checkpoint directory fail with ENOSPC. */
  function failCheckpointWrites(): void {
    const open = fs.open;
    const write = fs.write;
    const fds = new Set<number>();
    jest.spyOn(fs, 'open').mockImplementation(((p: string, flags: string, cb: (e: Error | null, fd: number) => void) => {
      open(p, flags, (err, fd) => {
        if (!err && /[\\/]\.checkpoint-tmp-\d+[\\/]/.test(p)) fds.add(fd);
        cb(err, fd);
      });
    }) as unknown as typeof fs.open);
    jest.spyOn(fs, 'write').mockImplementation(((fd: number, ...args: unknown[]) => {
      if (fds.has(fd)) {
        const cb = args[args.length - 1] as (e: Error) => void;
        process.nextTick(() => cb(enospc()));
        return;
      }
      return (write as (...a: unknown[]) => void)(fd, ...args);
    }) as typeof fs.write);
  }
  const leftovers = (parent: string) => fs.readdirSync(parent).filter((f) => f.startsWith('.checkpoint-'));

  test('after a good checkpoint: ERR_CHECKPOINT_WRITE says the previous one (its step) is intact, and it is', async () => {
    const parent = path.join(tmp, 'ckpt-enospc');
    const dir = path.join(parent, 'checkpoint');
    let step = 0;
    const run = trainer(dir, 3, (c) => {
      step = c.step;
      if (c.step === 2) failCheckpointWrites();
    });
    await expect(run.train()).rejects.toMatchObject({
      code: 'ERR_CHECKPOINT_WRITE',
      message: expect.stringMatching(/^Trainer\.saveCheckpoint: could not write the checkpoint of step 3 to .*checkpoint \(ENOSPC: no space left on device, write\); the previous checkpoint there \(step 2\) is intact$/),
    });
    jest.restoreAllMocks();
    expect(step).toBe(2);
    expect(leftovers(parent)).toEqual([]);
    expect((await readCheckpoint(dir)).step).toBe(2);
  });

  test('the first checkpoint: says there was none, and leaves nothing', async () => {
    const parent = path.join(tmp, 'ckpt-enospc-first');
    const dir = path.join(parent, 'checkpoint');
    failCheckpointWrites();
    await expect(trainer(dir, 2).train()).rejects.toMatchObject({
      code: 'ERR_CHECKPOINT_WRITE',
      message: expect.stringMatching(/\(ENOSPC: no space left on device, write\); there was no checkpoint there before$/),
    });
    jest.restoreAllMocks();
    expect(fs.readdirSync(parent)).toEqual([]);
  });

  test('the new checkpoint cannot be renamed into place: the previous one is put back, and nothing is left', async () => {
    const parent = path.join(tmp, 'ckpt-rename');
    const dir = path.join(parent, 'checkpoint');
    const rename = fs.rename;
    let fail = false;
    jest.spyOn(fs, 'rename').mockImplementation(((from: string, to: string, cb: (e: Error | null) => void) => {
      if (fail && to === dir && path.basename(from).startsWith('.checkpoint-tmp-')) return process.nextTick(() => cb(enospc()));
      return rename(from, to, cb);
    }) as typeof fs.rename);
    const run = trainer(dir, 3, (c) => {
      fail = c.step === 2;
    });
    await expect(run.train()).rejects.toMatchObject({
      code: 'ERR_CHECKPOINT_WRITE',
      message: expect.stringMatching(/the previous checkpoint there \(step 2\) is intact$/),
    });
    jest.restoreAllMocks();
    expect(leftovers(parent)).toEqual([]);
    expect((await readCheckpoint(dir)).step).toBe(2);
  });

  test('lora-cuda finetune says it in one line: which checkpoint is left, and to --resume from it', async () => {
    const fx = await finetuneFixture(path.join(tmp, 'ft-enospc'));
    const out = path.join(tmp, 'ft-enospc', 'out');
    const io: CliIO = { stdout: () => undefined, stderr: () => undefined, isTTY: false, columns: 80 };
    const run = finetuneCommand(['--model', fx.model, '--data', fx.data, '--out', out, '--r', '2', '--target', 'q_proj', '--batch-size', '4', '--save-every', '1', '--no-pack'], io, {
      onStep: ({ step }) => {
        if (step === 2) failCheckpointWrites();
      },
    });
    await expect(run).rejects.toThrow(new RegExp(`^could not write the checkpoint of step 2 to ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.checkpoint \\(ENOSPC: no space left on device, write\\); ` +
      'the previous checkpoint there \\(step 1\\) is intact; once the cause is fixed, continue from step 1 with --resume$'));
    jest.restoreAllMocks();
    expect(leftovers(out)).toEqual([]);
    expect((await readCheckpoint(path.join(out, 'checkpoint'))).step).toBe(1);
  });

  test('when putting the previous one back fails too, the message says where it waits, and readCheckpoint restores it', async () => {
    const parent = path.join(tmp, 'ckpt-rename-twice');
    const dir = path.join(parent, 'checkpoint');
    const rename = fs.rename;
    let fail = false;
    jest.spyOn(fs, 'rename').mockImplementation(((from: string, to: string, cb: (e: Error | null) => void) => {
      if (fail && to === dir) return process.nextTick(() => cb(enospc()));
      return rename(from, to, cb);
    }) as typeof fs.rename);
    const run = trainer(dir, 3, (c) => {
      fail = c.step === 2;
    });
    await expect(run.train()).rejects.toMatchObject({
      code: 'ERR_CHECKPOINT_WRITE',
      previousStep: 2,
      message: expect.stringMatching(/; the previous checkpoint waits in .*\.checkpoint-old-\d+, where loadCheckpoint \(readCheckpoint\) finds and restores it$/),
    });
    jest.restoreAllMocks();
    expect(leftovers(parent)).toEqual([`.checkpoint-old-${process.pid}`]);
    expect((await readCheckpoint(dir)).step).toBe(2);
    expect(leftovers(parent)).toEqual([]);
  });
});

// ============================================================ killed while saving

/** Runs a child, calls onLine for each stdout line; resolves with how it ended. */
function child(args: string[], onLine: (line: string, c: ChildProcess) => void): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-r', './test/helpers/ts-register.js', ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let partial = '';
    c.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      partial += d;
      let i: number;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        onLine(line, c);
      }
    });
    c.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    c.on('error', reject);
    c.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

describe('a save killed by SIGKILL leaves the previous adapter intact and loadable', () => {
  // The adapter files, and temporary files a killed save may leave behind (never read by anything).
  const TEMP = /^\.adapter_(model\.safetensors|config\.json)\.\d+\.[0-9a-f]+\.tmp$/;
  const adapterFiles = (dir: string) => {
    const all = files(dir);
    for (const f of Object.keys(all)) if (TEMP.test(f)) delete all[f];
    return all;
  };

  /** Runs save-child.ts in `mode`, kills it when `trigger` says so. */
  async function killed(mode: string, trigger: (line: string, dir: string) => boolean) {
    const dir = path.join(tmp, `kill-${mode}`);
    const ref = path.join(tmp, `kill-${mode}-ref`);
    let v1: Record<string, string> = {};
    let saving = false;
    const r = await child(['test/helpers/save-child.ts', dir, ref, mode], (line, c) => {
      if (line === 'saved v1') v1 = files(dir);
      if (line === 'saving v2') saving = true;
      if (saving && trigger(line, dir)) c.kill('SIGKILL');
    });
    expect({ signal: r.signal, stderr: r.stderr }).toEqual({ signal: 'SIGKILL', stderr: '' });
    expect(Object.keys(v1)).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    return { dir, ref, v1, stdout: r.stdout };
  }

  test('killed inside the write of the new weights: the old files, byte for byte, and they load', async () => {
    const { dir, v1, stdout } = await killed('write-pause', (line) => line === 'paused in the write of the weights');
    expect(stdout).not.toMatch(/saved v2/);
    expect(Object.keys(files(dir)).some((f) => TEMP.test(f))).toBe(true); // the half-written file
    expect(adapterFiles(dir)).toEqual(v1);
    const m = new Stack();
    expect(await loadAdapter(m, dir)).toHaveLength(48);
    const want = stackWithLora(16, 1);
    expect(bits((m.layers.at(47) as LoRALinear).B!)).toBe(bits((want.layers.at(47) as LoRALinear).B!));
  });

  test('killed whenever the kill lands while the new weights are written: the old adapter or the new one, complete', async () => {
    const tempSeen = (d: string) => fs.readdirSync(d).some((f) => TEMP.test(f));
    const { dir, ref, v1 } = await killed('free', (line, d) => {
      if (line !== 'saving v2') return false;
      // Kill as soon as the temporary file is there (the write goes on meanwhile).
      const t0 = Date.now();
      while (!tempSeen(d) && Date.now() - t0 < 2000) { /* the child is writing */ }
      return true;
    });
    const now = JSON.stringify(adapterFiles(dir));
    expect([JSON.stringify(v1), JSON.stringify(files(ref))]).toContain(now);
    expect(await loadAdapter(new Stack(), dir)).toHaveLength(48);
  });

  test('killed between the two renames, with other settings: the pair is refused, not loaded under the old config', async () => {
    const { dir, ref, stdout } = await killed('rename-pause', (line) => line === 'paused between the renames');
    expect(stdout).not.toMatch(/saved v2/);
    const now = adapterFiles(dir);
    const r = files(ref);
    // The new weights are in place, the config is still the old one…
    expect(now['adapter_model.safetensors']).toBe(r['adapter_model.safetensors']);
    expect(now['adapter_config.json']).not.toBe(r['adapter_config.json']);
    // …and loadAdapter says so instead of loading weights meant for lora_alpha 32 with lora_alpha 16.
    const m = new Stack();
    const before = [...m.namedModules()].length;
    await expect(loadAdapter(m, dir)).rejects.toThrow(
      /^loadAdapter: adapter_config\.json does not belong to adapter_model\.safetensors: the weights were saved with \{"r":64,"lora_alpha":32,.*the config says \{"r":64,"lora_alpha":16,/);
    expect([...m.namedModules()].length).toBe(before);
    // The next save repairs it.
    await saveAdapter(stackWithLora(32, 2), dir);
    expect(await loadAdapter(m, dir)).toHaveLength(48);
  });
});

// ===================================================== finetune --resume after kills

describe('lora-cuda finetune killed with SIGKILL, then --resume', () => {
  let fixture: { model: string; data: string };
  beforeAll(async () => {
    fixture = await finetuneFixture(path.join(tmp, 'ft'));
  });
  // 12 examples, batch 2: 6 steps per epoch, 10 epochs = 60 steps; dropout on, so the generator
  // state matters as much as the weights, the moments and the data position.
  const args = (out: string) => ['bin/lora-cuda.js', 'finetune', '--model', fixture.model, '--data', fixture.data, '--out', out,
    '--r', '4', '--alpha', '8', '--target', 'q_proj,v_proj', '--epochs', '10', '--batch-size', '2', '--dropout', '0.1',
    '--lr', '0.01', '--seed', '3', '--save-every', '2', '--no-pack'];
  const checkpointStep = (line: string) => Number(/^checkpoint at step (\d+) written/.exec(line)?.[1] ?? NaN);
  const state = (out: string) => JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8'));

  test('killed twice at different points, resumed each time: the adapter of an uninterrupted run, bit for bit', async () => {
    const straight = path.join(tmp, 'ft-straight');
    const s = await child(args(straight), () => undefined);
    expect({ code: s.code, stderr: s.stderr }).toEqual({ code: 0, stderr: '' });
    expect(state(straight).step).toBe(60);

    const out = path.join(tmp, 'ft-killed');
    // 1: killed soon after the checkpoint of step 4
    const k1 = await child(args(out), (line, c) => { if (checkpointStep(line) === 4) c.kill('SIGKILL'); });
    expect(k1.signal).toBe('SIGKILL');
    const at1 = state(out).step;
    expect(at1).toBeGreaterThanOrEqual(4);
    expect(at1).toBeLessThan(60);
    // 2: resumed, and killed again further on
    const k2 = await child([...args(out), '--resume'], (line, c) => { if (checkpointStep(line) >= Math.min(at1 + 20, 50)) c.kill('SIGKILL'); });
    expect(k2.signal).toBe('SIGKILL');
    expect(k2.stdout).toMatch(new RegExp(`resuming from .* at step ${at1} of 60`));
    const at2 = state(out).step;
    expect(at2).toBeGreaterThan(at1);
    expect(at2).toBeLessThan(60);
    // 3: resumed to the end
    const done = await child([...args(out), '--resume'], () => undefined);
    expect({ code: done.code, stderr: done.stderr }).toEqual({ code: 0, stderr: '' });
    expect(done.stdout).toMatch(new RegExp(`resuming from .* at step ${at2} of 60`));
    expect(state(out).step).toBe(60);
    for (const f of ['adapter_model.safetensors', 'adapter_config.json']) {
      expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(straight, f)))).toBe(true);
    }
  }, 120_000);

  test('a kill between the two renames of a checkpoint (simulated): --resume finds the previous checkpoint', async () => {
    const io = (): CliIO & { text: () => string } => {
      let text = '';
      return { stdout: (t) => void (text += t), stderr: (t) => void (text += t), isTTY: false, columns: 80, text: () => text };
    };
    const short = (out: string) => args(out).slice(2).map((a) => (a === '10' ? '2' : a)); // 2 epochs: 12 steps
    const straight = path.join(tmp, 'ft-rename-straight');
    expect(await finetuneCommand(short(straight), io())).toBe(0);

    const out = path.join(tmp, 'ft-rename');
    // The checkpoint of step 6: OUT/checkpoint has been renamed to .checkpoint-old-PID, and the
    // process dies before the new one is renamed into place.
    const rename = fs.rename;
    let crash = false;
    jest.spyOn(fs, 'rename').mockImplementation(((from: string, to: string, cb: (e: Error | null) => void) => {
      if (crash && to === path.join(out, 'checkpoint')) return process.nextTick(() => cb(new Error('killed (simulated)')));
      return rename(from, to, cb);
    }) as typeof fs.rename);
    const first = finetuneCommand(short(out), io(), {
      onStep: ({ step }) => { crash = step === 6; },
    });
    await expect(first).rejects.toThrow('killed (simulated)');
    jest.restoreAllMocks();
    expect(fs.existsSync(path.join(out, 'checkpoint'))).toBe(false);
    expect(fs.readdirSync(out).filter((f) => f.startsWith('.checkpoint-old-'))).toHaveLength(1);

    const log = io();
    expect(await finetuneCommand([...short(out), '--resume'], log)).toBe(0);
    expect(log.text()).toMatch(/resuming from .* at step 4 of 12/);
    expect(fs.readdirSync(out).filter((f) => f.startsWith('.checkpoint-'))).toEqual([]); // cleaned up
    expect(fs.readFileSync(path.join(out, 'adapter_model.safetensors')).equals(fs.readFileSync(path.join(straight, 'adapter_model.safetensors')))).toBe(true);
  });
});
