// The process groups' native calls (binding/distributed.cpp): MPI and NCCL collectives on tensors
// in place. lib/distributed.ts checks everything first.
import { native } from '../native';
import type { NativeTensor } from '../native';
import type { Tensor } from '../tensor';

export interface MpiLibraryInfo { loaded: boolean; path: string; version: string; error: string }
export interface NcclLibraryInfo extends MpiLibraryInfo { compiled: boolean }

interface DistributedBinding {
  mpiInfo(): MpiLibraryInfo;
  mpiInit(): { rank: number; worldSize: number };
  mpiInitialized(): boolean;
  mpiAllReduce(t: NativeTensor[], mean: boolean, timeoutS: number, bucketBytes: number): void;
  mpiBroadcast(t: NativeTensor[], root: number, timeoutS: number, bucketBytes: number): void;
  mpiBarrier(timeoutS: number): void;
  mpiAbort(code: number): void;
  mpiFinalize(): void;
  ncclInfo(): NcclLibraryInfo;
  ncclUniqueId(): Buffer;
  ncclInit(world: number, rank: number, id: Buffer, device: number, timeoutS: number): void;
  ncclAllReduce(t: NativeTensor[], mean: boolean, timeoutS: number, bucketBytes: number): void;
  ncclBroadcast(t: NativeTensor[], root: number, timeoutS: number, bucketBytes: number): void;
  ncclBarrier(timeoutS: number): void;
  ncclDestroy(): void;
}

const d = (native as unknown as { distributed: DistributedBinding }).distributed;

export type Engine = 'mpi' | 'nccl';

function handles(ts: readonly Tensor[]): NativeTensor[] {
  return ts.map((t) => t._h);
}

function written(ts: readonly Tensor[]): void {
  for (const t of ts) t._bumpVersion();
}

export const mpiInfo = (): MpiLibraryInfo => d.mpiInfo();
export const ncclInfo = (): NcclLibraryInfo => d.ncclInfo();
export const mpiInit = (): { rank: number; worldSize: number } => d.mpiInit();
export const mpiInitialized = (): boolean => d.mpiInitialized();
export const mpiAbort = (code: number): void => d.mpiAbort(code);
export const mpiFinalize = (): void => d.mpiFinalize();
export const ncclUniqueId = (): Buffer => d.ncclUniqueId();
export const ncclInit = (world: number, rank: number, id: Buffer, device: number, timeoutS: number): void =>
  d.ncclInit(world, rank, id, device, timeoutS);
export const ncclDestroy = (): void => d.ncclDestroy();

export function allReduce(engine: Engine, ts: readonly Tensor[], mean: boolean, timeoutS: number, bucketBytes: number): void {
  if (engine === 'mpi') d.mpiAllReduce(handles(ts), mean, timeoutS, bucketBytes);
  else d.ncclAllReduce(handles(ts), mean, timeoutS, bucketBytes);
  written(ts);
}

export function broadcast(engine: Engine, ts: readonly Tensor[], root: number, timeoutS: number, bucketBytes: number): void {
  if (engine === 'mpi') d.mpiBroadcast(handles(ts), root, timeoutS, bucketBytes);
  else d.ncclBroadcast(handles(ts), root, timeoutS, bucketBytes);
  written(ts);
}

export function barrier(engine: Engine, timeoutS: number): void {
  if (engine === 'mpi') d.mpiBarrier(timeoutS);
  else d.ncclBarrier(timeoutS);
}
