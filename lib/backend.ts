// What the native backends can do in this process, and the CUDA controls.
import type { AddonSource, CpuInfo } from './native';
import * as runtime from './ops/runtime';
import { parseDevice } from './device';
import { typeError } from './errors';

export interface CudaDeviceInfo {
  name: string;
  /** Total memory in bytes. */
  memory: number;
  /** Compute capability, e.g. '9.0'. */
  capability: string;
  multiprocessors: number;
  /**
   * The CUDA runtime's number for the device (after CUDA_VISIBLE_DEVICES). 'cuda:N' is `devices[N]`,
   * counting usable devices only, so this differs from N when a device before it is unusable.
   */
  ordinal: number;
}
export interface UnusableCudaDeviceInfo extends CudaDeviceInfo {
  /** Why it cannot be used: e.g. the binary has no GPU code for it, and what to do about that. */
  reason: string;
}
export interface CudaInfo {
  /** The CUDA backend was compiled into this build. */
  compiled: boolean;
  /** A driver, a GPU that runs this build's kernels, and cuBLAS were found. */
  available: boolean;
  /** Why CUDA is not available, in words ('' when it is). */
  reason: string;
  /** The GPUs that ran a test kernel at the probe: 'cuda:N' is devices[N]. */
  devices: CudaDeviceInfo[];
  /** GPUs that are present but cannot be used (no GPU code for them in this build, a driver that cannot compile its PTX, ...), each with the reason. */
  unusableDevices: UnusableCudaDeviceInfo[];
  /** The cuBLAS library loaded at run time, or null when none was found (or not looked for). */
  cublas: { path: string; version: string } | null;
  /** CUDA runtime version this build was compiled with (13000 = 13.0; 0 without CUDA). */
  runtimeVersion: number;
  /** Highest CUDA version the installed driver supports (0 = no driver). */
  driverVersion: number;
  /** GPU architectures compiled in, e.g. '75-real,...,90-real,...,120-virtual'. */
  architectures: string;
}
export interface BackendInfo {
  /**
   * blas: 'openblas', 'cblas' or 'builtin'; blasPath: the library loaded; threads: our CPU pool size;
   * features: the processor's extensions that matter ('avx2', 'fma', 'avx512f', 'avx512vl', 'avx512bf16');
   * kernels: what the built-in kernels use on it ('avx512', 'avx2+fma' or 'generic'; LORA_CUDA_CPU_KERNELS forces one).
   * bf16Gemm: the bfloat16 matrix product, 'avx512bf16' (native vdpbf16ps kernel, with the AVX-512 kernels on a
   * processor with AVX512_BF16) or 'panels' (float32 GEMM on converted panels; LORA_CUDA_BF16_GEMM forces one).
   */
  cpu: CpuInfo;
  cuda: CudaInfo;
  /** The native addon this process loaded: its path, and whether it is a prebuilt binary, a local build or LORA_CUDA_ADDON's. */
  addon: AddonSource;
}

export function backendInfo(): BackendInfo {
  const info = runtime.backendInfo();
  return { cpu: info.cpu, cuda: { ...info.cuda, reason: info.cuda.available ? '' : info.cuda.reason }, addon: info.addon };
}

export interface CudaMemoryStats {
  /** Bytes held by live tensors (and an op's temporaries) on the device. */
  allocated: number;
  /** Bytes the caching allocator holds from the driver (allocated plus cached free blocks). */
  reserved: number;
  /** Highest `allocated` since the process started or resetPeakMemoryStats(). */
  peak: number;
}

function deviceIndex(where: string, device: unknown): number {
  if (device === undefined) return parseDevice(where, 'device', 'cuda').index;
  if (typeof device === 'number') {
    if (!Number.isInteger(device) || device < 0) throw new RangeError(`${where}: device must be a device index >= 0, 'cuda' or 'cuda:N', got ${device}`);
    return parseDevice(where, 'device', `cuda:${device}`).index;
  }
  const d = parseDevice(where, 'device', device);
  if (d.type !== 'cuda') throw new RangeError(`${where}: device must be a CUDA device ('cuda' or 'cuda:N'), got ${JSON.stringify(device)}`);
  return d.index;
}

export const cuda = {
  /** True when a CUDA device can be used. */
  isAvailable(): boolean {
    return runtime.backendInfo().cuda.available;
  },
  /** Number of usable CUDA devices (0 without CUDA). */
  deviceCount(): number {
    const c = runtime.backendInfo().cuda;
    return c.available ? c.devices.length : 0;
  },
  /**
   * Waits until the work queued on a device ('cuda', 'cuda:N' or N; default:
   * every device used so far) is done. An error raised by a queued kernel is
   * thrown here. Without CUDA, the no-argument form does nothing.
   */
  synchronize(device?: string | number): void {
    if (device === undefined) {
      if (runtime.backendInfo().cuda.available) runtime.cudaSynchronize(-1);
      return;
    }
    runtime.cudaSynchronize(deviceIndex('cuda.synchronize', device));
  },
  /** Memory held on a device (default cuda:0). */
  memoryStats(device?: string | number): CudaMemoryStats {
    return runtime.cudaMemoryStats(deviceIndex('cuda.memoryStats', device));
  },
  /** Restarts the `peak` of memoryStats() from the current allocation. */
  resetPeakMemoryStats(device?: string | number): void {
    runtime.cudaResetPeak(deviceIndex('cuda.resetPeakMemoryStats', device));
  },
  /** Returns cached, unused device memory to the driver (tensors in use are not touched). */
  emptyCache(device?: string | number): void {
    runtime.cudaEmptyCache(deviceIndex('cuda.emptyCache', device));
  },
  /**
   * TF32 tensor-core math for float32 matrix products and attention: faster on
   * Ampere and newer, with a 10-bit mantissa for the products. Off by default.
   */
  setAllowTF32(allow: boolean): void {
    if (typeof allow !== 'boolean') throw typeError('cuda.setAllowTF32', 'allow', 'a boolean', allow);
    runtime.cudaSetAllowTF32(allow);
  },
  getAllowTF32(): boolean {
    return runtime.cudaGetAllowTF32();
  },
};

/** Bytes of native tensor memory (CPU and GPU) held by tensors made on this thread. */
export function nativeMemoryBytes(): number {
  return runtime.liveBytes();
}
