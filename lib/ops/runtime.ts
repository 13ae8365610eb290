// The runtime: what the backends can do in this process, native memory, and the
// CUDA device controls (device index -1: every CUDA device used so far).
import { native, AddonSource, CpuInfo, NativeCudaInfo, NativeMemoryStats, addonSource } from '../native';

export function backendInfo(): { cpu: CpuInfo; cuda: NativeCudaInfo; addon: AddonSource } {
  return { ...native.backendInfo(), addon: addonSource() };
}

/** Bytes of native tensor memory held by tensors made on this thread. */
export function liveBytes(): number {
  return native.liveBytes();
}

export function cudaSynchronize(index: number): void {
  native.cudaSynchronize(index);
}

export function cudaMemoryStats(index: number): NativeMemoryStats {
  return native.cudaMemoryStats(index);
}

export function cudaResetPeak(index: number): void {
  native.cudaResetPeak(index);
}

export function cudaEmptyCache(index: number): void {
  native.cudaEmptyCache(index);
}

export function cudaSetAllowTF32(allow: boolean): void {
  native.cudaSetAllowTF32(allow);
}

export function cudaGetAllowTF32(): boolean {
  return native.cudaGetAllowTF32();
}
