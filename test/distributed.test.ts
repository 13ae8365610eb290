// Data-parallel training over MPI (and what can be checked of NCCL without a GPU). The MPI suites
// start `mpirun -np 2` on this machine; .ci/run installs Open MPI so that CI runs them.
import { spawn, spawnSync, SpawnSyncReturns } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo, tensor, zeros } from '../lib';
import { SafetensorsFile } from '../lib/safetensors';
import {
  DistributedSampler, allReduce, barrier, broadcast, checkSameTensors, destroyProcessGroup, distributedInfo, getProcessGroup, initDistributed, launchEnv,
} from '../lib/distributed';
import { finetuneFixture } from './helpers/finetune-fixture';

const root = path.resolve(__dirname, '..');
const register = path.join(__dirname, 'helpers', 'ts-register.js');
const child = path.join(__dirname, 'helpers', 'dist-child.ts');
const bin = path.join(root, 'bin', 'lora-cuda.js');
const hasMpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;
// Open MPI refuses to run as root unless told; CI runs as root.
const mpiEnv = { ...process.env, OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1', OMPI_MCA_rmaps_base_oversubscribe: '1',
  // Containers often forbid the cross-process memory reads of Open MPI's shared-memory single copy.
  OMPI_MCA_btl_vader_single_copy_mechanism: 'none' };

function mpirun(np: number, args: string[], timeoutMs = 120000): SpawnSyncReturns<string> {
  return spawnSync('mpirun', ['-np', String(np), process.execPath, '-r', register, ...args],
    { env: mpiEnv, encoding: 'utf8', timeout: timeoutMs, cwd: root });
}

function lines(out: string): Record<string, unknown>[] {
  return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

describe('without a process group', () => {
  test('DistributedSampler deals each rank its shard, padded like PyTorch', () => {
    const order = (e: number) => Array.from({ length: 10 }, (_, i) => (i * 3 + e) % 10);
    const shards = [0, 1, 2].map((r) => new DistributedSampler(10, r, 3, order).indices(1));
    expect(shards.map((s) => s.length)).toEqual([4, 4, 4]);
    // Round-robin over the epoch's order, padded from its start to 12.
    const full = order(1).concat(order(1).slice(0, 2));
    shards.forEach((s, r) => expect(s).toEqual(full.filter((_, i) => i % 3 === r)));
    expect(new Set(shards.flat()).size).toBe(10);
    const dropped = [0, 1, 2].map((r) => new DistributedSampler(10, r, 3, order, true).indices(0));
    expect(dropped.flat().sort((a, b) => a - b)).toEqual(order(0).slice(0, 9).sort((a, b) => a - b));
    expect(() => new DistributedSampler(10, 3, 3)).toThrow(/rank must be below worldSize 3, got 3/);
  });

  test('launchEnv reads mpirun, then torchrun-style variables', () => {
    expect(launchEnv({ OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_RANK: '2', OMPI_COMM_WORLD_LOCAL_RANK: '0', OMPI_COMM_WORLD_LOCAL_SIZE: '2' }))
      .toEqual({ launcher: 'mpirun', rank: 2, worldSize: 4, localRank: 0, localWorldSize: 2 });
    expect(launchEnv({ WORLD_SIZE: '2', RANK: '1', LOCAL_RANK: '1' }))
      .toEqual({ launcher: 'torchrun', rank: 1, worldSize: 2, localRank: 1, localWorldSize: 2 });
    expect(launchEnv({})).toEqual({ launcher: null, rank: null, worldSize: null, localRank: null, localWorldSize: null });
    expect(() => launchEnv({ WORLD_SIZE: 'two' })).toThrow(/WORLD_SIZE must be a non-negative integer, got "two"/);
  });

  test('collectives before initDistributed, and bad arguments, throw before any native call', () => {
    expect(getProcessGroup()).toBeNull();
    const t = zeros([2]);
    expect(() => allReduce([t])).toThrow(expect.objectContaining({ code: 'ERR_DIST_NOT_INITIALIZED' }));
    expect(() => barrier()).toThrow(/call initDistributed\(\) first/);
    t.dispose();
  });

  test('the NCCL path is compiled with the CUDA backend; without the library it says what to install', () => {
    const info = distributedInfo();
    expect(info.nccl.compiled).toBe(backendInfo().cuda.compiled);
    if (!info.nccl.loaded) expect(info.nccl.error).toMatch(/NCCL|CUDA backend/);
  });

  test('a missing MPI or NCCL library is a clear error naming what to install', () => {
    const r = spawnSync(process.execPath, ['-r', register, child, 'missing'], {
      env: { ...process.env, LORA_CUDA_MPI: '/nonexistent/libmpi.so.40', LORA_CUDA_NCCL: '/nonexistent/libnccl.so.2' }, encoding: 'utf8', cwd: root,
    });
    expect(r.status).toBe(0);
    const [mpi, nccl] = lines(r.stdout);
    expect(mpi).toMatchObject({ backend: 'mpi', code: 'ERR_DIST_UNAVAILABLE' });
    expect(mpi.message).toMatch(/MPI is not available: .*apt-get install openmpi-bin libopenmpi3.*tried \/nonexistent\/libmpi\.so\.40/);
    expect(nccl).toMatchObject({ backend: 'nccl', code: 'ERR_DIST_UNAVAILABLE' });
    // A build with CUDA looks for the library; one without says that CUDA is missing.
    expect(nccl.message).toMatch(backendInfo().cuda.compiled ? /NCCL is not available: .*install NCCL 2\.10 or later.*\/nonexistent\/libnccl\.so\.2/ : /without the CUDA backend/);
  });

  test('lora-cuda launch: usage errors, and a failing rank ends the others', () => {
    const launch = (args: string[]) => spawnSync(process.execPath, ['-r', register, bin, 'launch', ...args], { encoding: 'utf8', cwd: root, timeout: 120000 });
    let r = launch(['--nproc', '2']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/no command after --/);
    r = launch(['--nproc', '2', '--backend', 'gloo', '--', 'doctor']);
    expect(r.stderr).toMatch(/--backend must be mpi or nccl, got "gloo"/);
    r = launch(['--nproc', '2', '--backend', 'nccl', '--hostfile', 'hosts', '--', 'doctor']);
    expect(r.stderr).toMatch(/--hostfile is for --backend mpi/);
    // finetune on the CPU takes MPI, which these torchrun-style processes cannot use: each rank fails at once.
    r = launch(['--nproc', '2', '--backend', 'nccl', '--', 'finetune', '--model', 'no-such-dir', '--data', 'no-such-file']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/lora-cuda finetune: 2 processes \(started by torchrun\): initDistributed: the MPI backend needs its processes started by mpirun/);
    expect(r.stderr).toMatch(/lora-cuda launch: rank \d exited with code 1; ending the other ranks/);
  });
});

// A communicator of one rank on cuda:0: on a GPU with NCCL installed, and under the CUDA emulator
// (scripts/test-cuda-emu.sh), whose one-rank stand-in for NCCL lets the addon's NCCL path run.
const ncclHere = backendInfo().cuda.available && distributedInfo().nccl.loaded;
(ncclHere ? describe : describe.skip)('NCCL, one rank (skipped without a GPU and NCCL)', () => {
  afterAll(() => destroyProcessGroup());

  test('collectives on the GPU, and CPU tensors through it', () => {
    const g = initDistributed({ backend: 'nccl', timeoutMs: 60000, bucketBytes: 1024 });
    expect(g).toMatchObject({ backend: 'nccl', rank: 0, worldSize: 1, device: 'cuda:0' });
    const av = Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7);
    const a = tensor(av, { device: 'cuda' });
    const b = tensor([1.5, -2], { dtype: 'float64', device: 'cuda' });
    const c = tensor([3, 4], { dtype: 'int32', device: 'cuda' });
    const h = tensor([7, 8]);
    allReduce([a, b, h], 'mean');
    allReduce([c], 'sum');
    broadcast([a, c], 0);
    barrier();
    expect(Array.from(a.toArray())).toEqual(av);
    expect(Array.from(b.toArray())).toEqual([1.5, -2]);
    expect(Array.from(c.toArray())).toEqual([3, 4]);
    expect(Array.from(h.toArray())).toEqual([7, 8]);
    expect(() => allReduce([c], 'mean')).toThrow(/tensors\[0\] must be a float32 or float64 tensor for 'mean'/);
    const half = tensor([1, 2], { dtype: 'bfloat16', device: 'cuda' });
    expect(() => allReduce([a, half], 'sum')).toThrow(/allReduce: tensors\[1\] must be a float32, float64 or int32 tensor \(collectives do not carry bfloat16 or float16 yet\)/);
    half.dispose();
    expect(() => broadcast([a], 1)).toThrow(/src must be a rank below the world size 1, got 1/);
    expect(() => checkSameTensors([['a', a], ['c', c]])).not.toThrow();
    expect(() => initDistributed({ backend: 'nccl' })).toThrow(expect.objectContaining({ code: 'ERR_DIST_ALREADY_INITIALIZED' }));
    for (const t of [a, b, c, h]) t.dispose();
    destroyProcessGroup();
    expect(getProcessGroup()).toBeNull();
  });
});

const describeMpi = hasMpirun ? describe : describe.skip;
if (!hasMpirun) {
  // eslint-disable-next-line no-console
  console.warn('distributed.test.ts: mpirun not found (apt-get install openmpi-bin libopenmpi3); the MPI suites are skipped');
}

describeMpi('two MPI ranks on this machine (skipped without mpirun)', () => {
  jest.setTimeout(300000);

  test('allReduce (bucketed, mean and sum, every dtype), broadcast and barrier', () => {
    const r = mpirun(2, [child, 'collectives']);
    expect(r.stderr).not.toMatch(/error/i);
    expect(r.status).toBe(0);
    const out = lines(r.stdout).sort((a, b) => (a.rank as number) - (b.rank as number));
    expect(out.map((o) => o.rank)).toEqual([0, 1]);
    for (const o of out) {
      // mean of i and 2i; of 0.5 and 1.5; sum of [1, 7] and [2, 7]; rank 1's 11s.
      expect(o).toMatchObject({ world: 2, a0: 0, a1: 1.5, aLast: 4498.5, b: 1, c: [3, 14], x: [11, 11, 11, 11, 11] });
      expect(o.group).toMatchObject({ backend: 'mpi', worldSize: 2, device: 'cpu' });
    }
  });

  test("DistributedDataParallel: every rank takes rank 0's parameters and the mean gradient; the Trainer checks the shards", () => {
    const r = mpirun(2, [child, 'ddp']);
    expect(r.status).toBe(0);
    const out = lines(r.stdout).sort((a, b) => (a.rank as number) - (b.rank as number));
    expect(out.map((o) => o.rank)).toEqual([0, 1]);
    for (const o of out) {
      expect(o.afterBroadcast).toEqual([1, 2, 5]);
      expect(o.grads).toEqual([1.5, 15, 2]);
      expect(o.trainer).toEqual({ message: expect.stringMatching(/every rank needs the same number of micro-batches per epoch \(options\.train\), got 2, 3 on ranks 0 to 1/) });
    }
  });

  test('mismatched parameter shapes between ranks are an error on every rank, the differing one saying what', () => {
    const r = mpirun(2, [child, 'mismatch']);
    expect(r.status).toBe(0);
    const out = Object.fromEntries(lines(r.stdout).map((o) => [o.rank, o]));
    expect(out[1]).toMatchObject({ code: 'ERR_DIST_MISMATCH' });
    expect(out[1].message).toMatch(/rank 1 differ from rank 0's: layers\.0\.lora_B: float32 \[4, 3\] here, layers\.0\.lora_B: float32 \[3, 4\] on rank 0/);
    expect(out[0]).toMatchObject({ code: 'ERR_DIST_MISMATCH' });
    expect(out[0].message).toMatch(/rank 1 differs from rank 0/);
  });

  test('a rank that dies ends the job (the other is not left waiting)', () => {
    const r = mpirun(2, [child, 'die'], 60000);
    expect(r.error).toBeUndefined();  // no spawnSync timeout: mpirun ended it
    expect(r.status).toBe(3);
    expect(r.stdout).not.toMatch(/allReduce returned/);
  });

  test('a rank that never joins gives the others ERR_DIST_TIMEOUT, and the group stays broken', () => {
    const r = mpirun(2, [child, 'timeout'], 60000);
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(4);
    const out = lines(r.stdout);
    expect(out[0]).toMatchObject({ rank: 0, code: 'ERR_DIST_TIMEOUT' });
    expect(out[0].message).toMatch(/did not complete within 1\.5\d* s: another rank has died, stalled/);
    expect(out[1]).toMatchObject({ rank: 0, after: { code: 'ERR_DIST_FAILED' } });
  });

  describe('lora-cuda finetune', () => {
    let tmp: string;
    let model: string;
    let data: string;
    beforeAll(async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-dist-'));
      ({ model, data } = await finetuneFixture(tmp));
    });
    afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

    // --seq-len 3 cuts every example to 3 tokens, so each rank's half of a batch has as many target
    // tokens as the other's and the mean of the ranks' mean losses is the whole batch's mean loss.
    // No dropout: the ranks draw their masks from the same generator state. --no-pack: padded batches of
    // --batch-size examples, the ones a rank's half is compared against.
    const args = (out: string, extra: string[] = []) => ['finetune', '--model', model, '--data', data, '--out', out,
      '--no-pack', '--batch-size', '4', '--seq-len', '3', '--dropout', '0', '--epochs', '17', '--lr', '0.01', '--log-every', '10', '--seed', '3', ...extra];
    const adapter = (dir: string) => {
      const st = SafetensorsFile.openSync(path.join(dir, 'adapter_model.safetensors'));
      try {
        return Object.fromEntries(st.keys().map((k) => [k, Array.from(st.readSync(k).toArray())]));
      } finally {
        st.close();
      }
    };
    const lossLines = (s: string) => s.split('\n').filter((l) => l.startsWith('step ')).map((l) => l.replace(/\s+[\d,]+ tok\/s$/, ''));

    test('two ranks on half the batch each give the adapter of one process on the whole batch after 50 steps; resume works', () => {
      const one = spawnSync(process.execPath, ['-r', register, bin, ...args(path.join(tmp, 'one'), ['--max-steps', '50'])], { encoding: 'utf8', cwd: root });
      expect(one.stderr).toBe('');
      expect(one.status).toBe(0);
      const two = mpirun(2, [bin, ...args(path.join(tmp, 'two'), ['--max-steps', '50'])]);
      expect(two.status).toBe(0);
      // Rank 0 alone prints: each line once.
      expect(two.stdout.match(/^distributed: 2 ranks over mpi, 2 examples per rank per micro-batch$/gm)).toHaveLength(1);
      expect(lossLines(two.stdout)).toHaveLength(5);
      expect(lossLines(two.stdout)).toEqual(lossLines(one.stdout));

      const a = adapter(path.join(tmp, 'one'));
      const b = adapter(path.join(tmp, 'two'));
      expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
      let trained = 0;
      for (const k of Object.keys(a)) {
        if (k.includes('lora_B')) trained = Math.max(trained, ...a[k].map(Math.abs));  // B starts at zero
        a[k].forEach((v, i) => expect(Math.abs(v - b[k][i])).toBeLessThanOrEqual(1e-5 + 1e-4 * Math.abs(v)));
      }
      expect(trained).toBeGreaterThan(1e-2);

      // Stopped at step 20 and resumed by two ranks: the same adapter again.
      const part = mpirun(2, [bin, ...args(path.join(tmp, 'resumed'), ['--max-steps', '20'])]);
      expect(part.status).toBe(0);
      const rest = mpirun(2, [bin, 'finetune', '--model', model, '--data', data, '--out', path.join(tmp, 'resumed'), '--resume', '--max-steps', '50']);
      expect(rest.status).toBe(0);
      expect(rest.stdout).toMatch(/resuming from .* at step 20 of 51/);
      const c = adapter(path.join(tmp, 'resumed'));
      for (const k of Object.keys(b)) expect(c[k]).toEqual(b[k]);
    });

    test('packed rows (the default for text) are shared out by group: each rank trains its own packed micro-batches', () => {
      const packed = (out: string) => ['finetune', '--model', model, '--data', data, '--out', out, '--batch-size', '4',
        '--seq-len', '3', '--dropout', '0', '--epochs', '2', '--lr', '0.01', '--seed', '3'];
      const one = spawnSync(process.execPath, ['-r', register, bin, ...packed(path.join(tmp, 'packed-one'))], { encoding: 'utf8', cwd: root });
      expect(one.status).toBe(0);
      const two = mpirun(2, [bin, ...packed(path.join(tmp, 'packed-two'))]);
      expect(two.status).toBe(0);
      expect(two.stdout).toMatch(/^distributed: 2 ranks over mpi, one token-budget micro-batch per rank per micro-batch$/m);
      // Half as many steps per epoch as one process: the groups of an epoch are split between the ranks.
      const steps = (s: string) => Number(/x (\d+) steps? =/.exec(s)![1]);
      expect(steps(one.stdout)).toBeGreaterThan(2);
      expect(steps(two.stdout)).toBe(Math.ceil(steps(one.stdout) / 2));
    });

    test('lora-cuda launch --nproc 2 runs the same job through mpirun', () => {
      const r = spawnSync(process.execPath, ['-r', register, bin, 'launch', '--nproc', '2', '--', ...args(path.join(tmp, 'launched'), ['--max-steps', '50'])],
        { encoding: 'utf8', cwd: root, timeout: 120000, env: mpiEnv });
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/^distributed: 2 ranks over mpi/m);
      const a = adapter(path.join(tmp, 'two'));
      const b = adapter(path.join(tmp, 'launched'));
      for (const k of Object.keys(a)) expect(b[k]).toEqual(a[k]);
    });

    test('SIGUSR1 to mpirun (which passes it on) stops every rank after the same step, with a checkpoint', async () => {
      const out = path.join(tmp, 'signalled');
      const p = spawn('mpirun', ['-np', '2', process.execPath, '-r', register, bin, ...args(out, ['--epochs', '100000', '--log-every', '1000'])],
        { env: mpiEnv, cwd: root });
      let stdout = '';
      let stderr = '';
      let sent = false;
      p.stdout.on('data', (d) => {
        stdout += d;
        // Training has started on rank 0 once it prints the plan.
        if (!sent && /^training: /m.test(stdout)) {
          sent = true;
          p.kill('SIGUSR1');
        }
      });
      p.stderr.on('data', (d) => void (stderr += d));
      const code = await new Promise<number | null>((resolve) => p.on('exit', (c) => resolve(c)));
      expect(sent).toBe(true);
      expect(code).toBe(130);
      expect(stderr).toMatch(/^interrupt: finishing the current step, then saving/m);
      expect(stderr).toMatch(/^rank 1: interrupt: finishing the current step/m);
      const state = JSON.parse(fs.readFileSync(path.join(out, 'checkpoint', 'trainer_state.json'), 'utf8'));
      expect(state.step).toBeGreaterThan(0);
      expect(stderr).toContain(`interrupted at step ${state.step}/`);
    });

    test('--batch-size must split evenly across the ranks', () => {
      const r = mpirun(2, [bin, ...args(path.join(tmp, 'odd'), ['--batch-size', '3', '--max-steps', '1'])]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/--batch-size 3 is the global batch, split across the 2 ranks: give a multiple of 2/);
    });
  });
});
