// Data-parallel training over several processes: a process group on MPI (CPU processes, one
// machine or many) or NCCL (one GPU per process), as PyTorch's torch.distributed does. Rank and
// world size come from the launcher's environment: mpirun (OMPI_COMM_WORLD_*), or torchrun-style
// RANK / WORLD_SIZE / LOCAL_RANK (what `lora-cuda launch` sets for NCCL). Both libraries are
// loaded at run time (src/distributed/mpi.cpp, cuda/nccl.cpp): nothing is needed without them.
//
// Every rank must make the same collective calls in the same order with tensors of the same
// shapes, or they wait for each other until the timeout (default 30 minutes, as PyTorch's).
import { isHalf } from './dtype';
import * as fs from 'fs';
import * as path from 'path';
import * as dist from './ops/distributed';
import type { MpiLibraryInfo, NcclLibraryInfo } from './ops/distributed';
import { Tensor } from './tensor';
import { tensor, zeros } from './creation';
import { checkInt, checkKnownKeys, checkOneOf, checkOptions, describe, rangeError, typeError } from './errors';
import { assertTensor } from './checks';
import { backendInfo } from './backend';
import type { DeviceSpec } from './device';
import { noGrad } from './autograd';

export type DistributedBackend = 'mpi' | 'nccl';
export type ReduceOp = 'mean' | 'sum';

export interface DistributedOptions {
  /** mpi: CPU tensors (CUDA ones are staged through the host); nccl: CUDA tensors, one GPU per local rank; auto (default): nccl when NCCL and a GPU are there, else mpi. */
  backend?: DistributedBackend | 'auto';
  /** A collective that has not completed after this long throws ERR_DIST_TIMEOUT (a rank died or stalled); 0 = wait forever. Default 1 800 000 (30 min), or $LORA_CUDA_DIST_TIMEOUT seconds. */
  timeoutMs?: number;
  /** Bytes per reduction (the tensors of a call are packed, then reduced in pieces of this size). Default 25 MiB, as PyTorch DDP's bucket_cap_mb. */
  bucketBytes?: number;
  /** nccl without mpirun: a file path all ranks can see, new for each run, through which rank 0 passes NCCL's unique id. Default $LORA_CUDA_RENDEZVOUS. */
  rendezvous?: string;
  /** nccl: the CUDA device of this process; default the local rank. */
  device?: number;
}

export interface ProcessGroup {
  readonly backend: DistributedBackend;
  readonly rank: number;
  readonly worldSize: number;
  readonly localRank: number;
  readonly localWorldSize: number;
  /** Where this rank's collectives run: 'cpu' (mpi) or 'cuda:N' (nccl). */
  readonly device: 'cpu' | `cuda:${number}`;
  readonly timeoutMs: number;
  readonly bucketBytes: number;
}

/** What the launcher told this process: null fields when it was not started by one. */
export interface LaunchEnv {
  launcher: 'mpirun' | 'torchrun' | null;
  rank: number | null;
  worldSize: number | null;
  localRank: number | null;
  localWorldSize: number | null;
}

const DEFAULT_TIMEOUT_MS = 30 * 60 * 1000;
const DEFAULT_BUCKET = 25 * 1024 * 1024;

let group: ProcessGroup | null = null;
let exitHook = false;

function envInt(env: NodeJS.ProcessEnv, name: string): number | null {
  const v = env[name];
  if (v === undefined || v === '') return null;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`initDistributed: the environment variable ${name} must be a non-negative integer, got ${describe(v)}`);
  return n;
}

/** Rank, world size and local rank as the launcher set them: Open MPI's mpirun, then torchrun's variables. */
export function launchEnv(env: NodeJS.ProcessEnv = process.env): LaunchEnv {
  const ompi = envInt(env, 'OMPI_COMM_WORLD_SIZE');
  if (ompi !== null) {
    return {
      launcher: 'mpirun', rank: envInt(env, 'OMPI_COMM_WORLD_RANK'), worldSize: ompi,
      localRank: envInt(env, 'OMPI_COMM_WORLD_LOCAL_RANK'), localWorldSize: envInt(env, 'OMPI_COMM_WORLD_LOCAL_SIZE'),
    };
  }
  const world = envInt(env, 'WORLD_SIZE');
  if (world !== null) {
    const rank = envInt(env, 'RANK');
    return {
      launcher: 'torchrun', rank, worldSize: world,
      localRank: envInt(env, 'LOCAL_RANK') ?? rank, localWorldSize: envInt(env, 'LOCAL_WORLD_SIZE') ?? world,
    };
  }
  return { launcher: null, rank: null, worldSize: null, localRank: null, localWorldSize: null };
}

/** Whether MPI and NCCL can be loaded here, and if not, why (what to install). Loads them; starts nothing. */
export function distributedInfo(): { mpi: MpiLibraryInfo; nccl: NcclLibraryInfo } {
  return { mpi: dist.mpiInfo(), nccl: dist.ncclInfo() };
}

function unavailable(where: string, what: string, reason: string): Error {
  return Object.assign(new Error(`${where}: ${what} is not available: ${reason}`), { code: 'ERR_DIST_UNAVAILABLE' });
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** NCCL's unique id from rank 0 through a file: written whole (rename), read by the others once there. */
function rendezvousId(where: string, file: string, rank: number, timeoutMs: number): Buffer {
  if (rank === 0) {
    const id = dist.ncclUniqueId();
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, id.toString('hex'));
    fs.renameSync(tmp, file);
    return id;
  }
  const start = Date.now();
  for (;;) {
    try {
      const hex = fs.readFileSync(file, 'utf8').trim();
      if (/^[0-9a-f]{256}$/.test(hex)) return Buffer.from(hex, 'hex');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (timeoutMs > 0 && Date.now() - start > timeoutMs) {
      throw Object.assign(new Error(`${where}: rank ${rank} waited ${timeoutMs} ms for rank 0 to write NCCL's unique id to ${file}; is rank 0 running, and is the path on a file system all ranks share?`),
        { code: 'ERR_DIST_TIMEOUT' });
    }
    sleepMs(20);
  }
}

/**
 * Joins this process to the job's process group (once per process). Throws ERR_DIST_UNAVAILABLE
 * naming what to install when the backend's library is missing.
 */
export function initDistributed(options: DistributedOptions = {}): ProcessGroup {
  const where = 'initDistributed';
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, ['backend', 'timeoutMs', 'bucketBytes', 'rendezvous', 'device']);
  if (group) throw Object.assign(new Error(`${where}: this process already belongs to a process group (${group.backend}, rank ${group.rank} of ${group.worldSize})`), { code: 'ERR_DIST_ALREADY_INITIALIZED' });
  const want = o.backend === undefined ? 'auto' : checkOneOf(where, 'options.backend', o.backend, ['mpi', 'nccl', 'auto'] as const);
  const envTimeout = process.env.LORA_CUDA_DIST_TIMEOUT;
  const timeoutMs = o.timeoutMs !== undefined ? checkInt(where, 'options.timeoutMs', o.timeoutMs, 0)
    : envTimeout ? checkInt(where, 'LORA_CUDA_DIST_TIMEOUT', Number(envTimeout), 0) * 1000 : DEFAULT_TIMEOUT_MS;
  const bucketBytes = o.bucketBytes === undefined ? DEFAULT_BUCKET : checkInt(where, 'options.bucketBytes', o.bucketBytes, 1024);
  if (o.rendezvous !== undefined && (typeof o.rendezvous !== 'string' || o.rendezvous === '')) throw typeError(where, 'options.rendezvous', 'a file path', o.rendezvous);
  if (o.device !== undefined) checkInt(where, 'options.device', o.device, 0);
  const env = launchEnv();
  let backend: DistributedBackend;
  if (want === 'auto') {
    const cuda = backendInfo().cuda;
    backend = cuda.available && cuda.devices.length > 0 && dist.ncclInfo().loaded ? 'nccl' : 'mpi';
  } else {
    backend = want;
  }
  const timeoutS = timeoutMs / 1000;

  let made: ProcessGroup;
  if (backend === 'mpi') {
    if (env.launcher === 'torchrun' && (env.worldSize ?? 1) > 1) {
      throw Object.assign(new Error(`${where}: the MPI backend needs its processes started by mpirun (or lora-cuda launch --backend mpi); these ${env.worldSize} were started with RANK/WORLD_SIZE, which is for the nccl backend`), { code: 'ERR_DIST_LAUNCHER' });
    }
    const info = dist.mpiInfo();
    if (!info.loaded) throw unavailable(where, 'MPI', info.error);
    const { rank, worldSize } = dist.mpiInit();
    made = {
      backend, rank, worldSize, localRank: env.localRank ?? 0, localWorldSize: env.localWorldSize ?? 1,
      device: 'cpu', timeoutMs, bucketBytes,
    };
  } else {
    const info = dist.ncclInfo();
    if (!info.loaded) throw unavailable(where, 'NCCL', info.error);
    const cuda = backendInfo().cuda;
    if (!cuda.available) throw unavailable(where, 'NCCL', `it needs CUDA, and ${cuda.reason}`);
    let rank: number;
    let worldSize: number;
    let id: Buffer;
    if (env.launcher === 'mpirun') {
      // Started by mpirun: MPI numbers the ranks and carries the id.
      const mi = dist.mpiInfo();
      if (!mi.loaded) throw unavailable(where, 'MPI (to pass NCCL its unique id under mpirun)', mi.error);
      ({ rank, worldSize } = dist.mpiInit());
      const buf = zeros([32], { dtype: 'int32' });
      try {
        if (rank === 0) {
          const raw = dist.ncclUniqueId();
          buf.copy_(Array.from(new Int32Array(raw.buffer, raw.byteOffset, 32)));
        }
        dist.broadcast('mpi', [buf], 0, timeoutS, bucketBytes);
        id = Buffer.from(new Int32Array(buf.toArray() as Int32Array).buffer);
      } finally {
        buf.dispose();
      }
    } else {
      if (env.rank === null || env.worldSize === null) {
        rank = 0;
        worldSize = 1;
        id = dist.ncclUniqueId();
      } else {
        rank = env.rank;
        worldSize = env.worldSize;
        if (rank >= worldSize) throw new RangeError(`${where}: RANK ${rank} is not below WORLD_SIZE ${worldSize}`);
        const file = (o.rendezvous as string | undefined) ?? process.env.LORA_CUDA_RENDEZVOUS;
        if (worldSize === 1) id = dist.ncclUniqueId();
        else if (!file) {
          throw Object.assign(new Error(`${where}: NCCL with ${worldSize} ranks outside mpirun needs a rendezvous file for its unique id: set LORA_CUDA_RENDEZVOUS (or options.rendezvous) to a new path all ranks can see, or start the ranks with lora-cuda launch or mpirun`), { code: 'ERR_DIST_RENDEZVOUS' });
        } else id = rendezvousId(where, file, rank, timeoutMs);
      }
    }
    const device = (o.device as number | undefined) ?? env.localRank ?? 0;
    if (device >= cuda.devices.length) {
      throw rangeError(where, 'the CUDA device of this rank (options.device, else the local rank)', `below the ${cuda.devices.length} usable device${cuda.devices.length === 1 ? '' : 's'} (one GPU per local rank)`, device);
    }
    dist.ncclInit(worldSize, rank, id, device, timeoutS);
    made = {
      backend, rank, worldSize, localRank: env.localRank ?? 0, localWorldSize: env.localWorldSize ?? 1,
      device: `cuda:${device}` as const, timeoutMs, bucketBytes,
    };
  }
  group = Object.freeze(made);
  if (!exitHook) {
    exitHook = true;
    // A clean exit finalises MPI (else mpirun reports the job as failed). A failing rank does not:
    // mpirun sees it exit and ends the other ranks, instead of letting them wait in a collective.
    process.on('exit', (code) => {
      if (code === 0 && dist.mpiInitialized()) dist.mpiFinalize();
    });
  }
  return group;
}

/** The process group of this process, or null before initDistributed (and after destroyProcessGroup). */
export function getProcessGroup(): ProcessGroup | null {
  return group;
}

/** Leaves the process group (NCCL: destroys the communicator; MPI: finalises, after which no new group can be made in this process). */
export function destroyProcessGroup(): void {
  if (!group) return;
  if (group.backend === 'nccl') dist.ncclDestroy();
  if (dist.mpiInitialized()) dist.mpiFinalize();
  group = null;
}

/** Ends every rank of the job now (MPI_Abort), for a rank that cannot go on; a no-op without a group. */
export function abortDistributed(code = 1): void {
  if (group?.backend === 'mpi' || dist.mpiInitialized()) dist.mpiAbort(code);
}

function requireGroup(where: string): ProcessGroup {
  if (!group) throw Object.assign(new Error(`${where}: no process group; call initDistributed() first`), { code: 'ERR_DIST_NOT_INITIALIZED' });
  return group;
}

function checkTensors(where: string, tensors: unknown): Tensor[] {
  if (!Array.isArray(tensors)) throw typeError(where, 'tensors', 'an array of tensors', tensors);
  const seen = new Set<Tensor>();
  tensors.forEach((t, i) => {
    assertTensor(where, `tensors[${i}]`, t);
    t._checkLive(where, `tensors[${i}]`);
    if (seen.has(t)) throw rangeError(where, `tensors[${i}]`, 'a tensor not already in the list', t);
    // The native collectives pack float32, float64 and int32 only: a half tensor is refused here
    // rather than skipped or packed with the wrong element size.
    if (isHalf(t.dtype)) throw typeError(where, `tensors[${i}]`, 'a float32, float64 or int32 tensor (collectives do not carry bfloat16 or float16 yet)', t);
    seen.add(t);
  });
  return tensors as Tensor[];
}

/** Runs a collective on the group's device: tensors elsewhere are copied there and back. */
function onGroupDevice(g: ProcessGroup, ts: Tensor[], body: (ts: Tensor[]) => void): void {
  const staged = ts.map((t) => (t.device === g.device ? t : t.to(g.device)));
  try {
    body(staged);
    noGrad(() => staged.forEach((s, i) => {
      if (s !== ts[i]) ts[i].copy_(s);
    }));
  } finally {
    staged.forEach((s, i) => {
      if (s !== ts[i]) s.dispose();
    });
  }
}

/**
 * Sums (or averages) each tensor, in place, over every rank: all of them packed into buckets of
 * options.bucketBytes, so a step's gradients cost one call. Float tensors for 'mean'.
 */
export function allReduce(tensors: readonly Tensor[], op: ReduceOp = 'mean'): void {
  const where = 'allReduce';
  const g = requireGroup(where);
  const ts = checkTensors(where, tensors);
  const mean = checkOneOf(where, 'op', op, ['mean', 'sum'] as const) === 'mean';
  if (mean) ts.forEach((t, i) => {
    if (t.dtype === 'int32') throw typeError(where, `tensors[${i}]`, "a float32 or float64 tensor for 'mean'", t);
  });
  if (!ts.length) return;
  onGroupDevice(g, ts, (s) => dist.allReduce(g.backend, s, mean, g.timeoutMs / 1000, g.bucketBytes));
}

/** Copies rank `src`'s values of each tensor into every other rank's, in place. */
export function broadcast(tensors: readonly Tensor[], src = 0): void {
  const where = 'broadcast';
  const g = requireGroup(where);
  const ts = checkTensors(where, tensors);
  checkInt(where, 'src', src, 0);
  if (src >= g.worldSize) throw rangeError(where, 'src', `a rank below the world size ${g.worldSize}`, src);
  if (!ts.length) return;
  onGroupDevice(g, ts, (s) => dist.broadcast(g.backend, s, src, g.timeoutMs / 1000, g.bucketBytes));
}

/** Returns once every rank has called it (or throws ERR_DIST_TIMEOUT). */
export function barrier(): void {
  const g = requireGroup('barrier');
  dist.barrier(g.backend, g.timeoutMs / 1000);
}

/** Sums (or averages) plain numbers over the ranks (float64). */
export function allReduceNumbers(values: readonly number[], op: ReduceOp = 'sum'): number[] {
  const g = requireGroup('allReduceNumbers');
  if (!values.length) return [];
  const t = tensor([...values], { dtype: 'float64', device: g.device });
  try {
    allReduce([t], op);
    return Array.from(t.toArray());
  } finally {
    t.dispose();
  }
}

/**
 * Checks that every rank has the same named tensors (names, dtypes and shapes, in order), as
 * rank 0 has them; throws ERR_DIST_MISMATCH on every rank otherwise, the differing ranks naming
 * what differs. Call it before the first collective on them.
 */
export function checkSameTensors(named: readonly (readonly [string, Tensor])[], what = 'the trained parameters'): void {
  const where = 'checkSameTensors';
  const g = requireGroup(where);
  const lines = named.map(([n, t]) => `${n}: ${t.dtype} [${t.shape.join(', ')}]`);
  const mine = Buffer.from(lines.join('\n'), 'utf8');
  const len = allReduceNumbers([g.rank === 0 ? mine.length : 0], 'sum')[0];
  const buf = zeros([Math.max(len, 1)], { dtype: 'int32', device: g.device });
  let theirs: string;
  try {
    if (g.rank === 0 && len) buf.copy_(Array.from(mine));
    broadcast([buf], 0);
    theirs = Buffer.from(Array.from(buf.toArray()).slice(0, len)).toString('utf8');
  } finally {
    buf.dispose();
  }
  const ref = theirs === '' ? [] : theirs.split('\n');
  let detail = '';
  if (ref.join('\n') !== lines.join('\n')) {
    if (ref.length !== lines.length) detail = `${lines.length} tensors here, ${ref.length} on rank 0`;
    const i = lines.findIndex((l, k) => l !== ref[k]);
    if (i >= 0 && i < ref.length) detail += `${detail ? '; ' : ''}${lines[i]} here, ${ref[i]} on rank 0`;
    else if (!detail) detail = 'they differ from rank 0';
  }
  const flags = new Array<number>(g.worldSize).fill(0);
  flags[g.rank] = detail ? 1 : 0;
  const bad = allReduceNumbers(flags, 'sum').map((v, r) => (v > 0 ? r : -1)).filter((r) => r >= 0);
  if (bad.length) {
    const msg = detail
      ? `${where}: ${what} of rank ${g.rank} differ from rank 0's: ${detail}`
      : `${where}: ${what} differ between ranks: rank${bad.length > 1 ? 's' : ''} ${bad.join(', ')} differ${bad.length > 1 ? '' : 's'} from rank 0 (each says how)`;
    throw Object.assign(new Error(msg), { code: 'ERR_DIST_MISMATCH', ranks: bad });
  }
}

/**
 * Which examples a rank sees, as PyTorch's DistributedSampler: the (shuffled, per epoch) indices
 * padded by repeating from the start to a multiple of the world size (or cut, dropLast), and dealt
 * round-robin: rank r gets positions r, r + worldSize, ...
 */
export class DistributedSampler {
  readonly numSamples: number;
  readonly totalSize: number;
  constructor(readonly size: number, readonly rank: number, readonly worldSize: number,
    private readonly order: (epoch: number) => readonly number[] = () => Array.from({ length: size }, (_, i) => i),
    readonly dropLast = false) {
    const where = 'DistributedSampler';
    checkInt(where, 'size', size, 0);
    checkInt(where, 'worldSize', worldSize, 1);
    checkInt(where, 'rank', rank, 0);
    if (rank >= worldSize) throw rangeError(where, 'rank', `below worldSize ${worldSize}`, rank);
    this.numSamples = dropLast ? Math.floor(size / worldSize) : Math.ceil(size / worldSize);
    this.totalSize = this.numSamples * worldSize;
  }

  /** This rank's indices for `epoch`. */
  indices(epoch: number): number[] {
    let all = [...this.order(epoch)];
    if (all.length !== this.size) throw new RangeError(`DistributedSampler: the order of epoch ${epoch} has ${all.length} indices, expected ${this.size}`);
    if (this.dropLast) all = all.slice(0, this.totalSize);
    else while (all.length < this.totalSize && all.length > 0) all = all.concat(all.slice(0, this.totalSize - all.length));
    const out: number[] = [];
    for (let i = this.rank; i < all.length; i += this.worldSize) out.push(all[i]);
    return out;
  }
}

/** A model whose trainable tensors are named (Module, LlamaForCausalLM). */
interface NamedParameters {
  namedParameters(): Iterable<[string, Tensor]>;
}

/**
 * Data-parallel training of a model's trainable parameters, as PyTorch's DistributedDataParallel:
 * at construction every rank checks that it has the same parameters as rank 0 and takes rank 0's
 * values; after each backward, syncGradients() averages the gradients over the ranks (one bucketed
 * all-reduce), so every rank's optimiser takes the same step.
 */
export class DistributedDataParallel {
  readonly group: ProcessGroup;
  readonly params: Tensor[];
  readonly names: string[];

  constructor(model: NamedParameters | readonly Tensor[], options: { params?: readonly Tensor[]; broadcast?: boolean } = {}) {
    const where = 'DistributedDataParallel';
    this.group = requireGroup(where);
    const o = checkOptions(where, options);
    checkKnownKeys(where, o, ['params', 'broadcast']);
    let named: [string, Tensor][];
    if (Array.isArray(model)) named = (model as Tensor[]).map((p, i) => [`params[${i}]`, p]);
    else if (model !== null && typeof model === 'object' && typeof (model as NamedParameters).namedParameters === 'function') {
      const all = [...(model as NamedParameters).namedParameters()];
      const want = options.params ? new Set(options.params) : null;
      named = all.filter(([, p]) => (want ? want.has(p) : p.requiresGrad));
      if (want && named.length !== want.size) throw rangeError(where, 'options.params', "tensors of the model's parameters", options.params);
    } else throw typeError(where, 'model', 'a model with namedParameters() or an array of tensors', model);
    named.forEach(([n, p]) => assertTensor(where, n, p));
    this.params = named.map(([, p]) => p);
    this.names = named.map(([n]) => n);
    checkSameTensors(named);
    if (options.broadcast !== false) this.broadcastParameters();
  }

  /** Gives every rank rank 0's parameter values. */
  broadcastParameters(): void {
    broadcast(this.params, 0);
  }

  /**
   * Averages the gradients of the parameters over the ranks, in place (a missing gradient counts as
   * zeros, and is made when another rank has one).
   */
  syncGradients(): void {
    const grads: Tensor[] = [];
    const made: [Tensor, Tensor][] = [];
    for (const p of this.params) {
      let gr = p.grad;
      if (!gr) {
        gr = zeros(p.shape, { dtype: p.dtype, device: p.device as DeviceSpec });
        made.push([p, gr]);
      }
      grads.push(gr);
    }
    allReduce(grads, 'mean');
    for (const [p, gr] of made) {
      p.grad = gr;
    }
  }
}
