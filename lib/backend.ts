// What the native backends can do in this process.
import { native, CpuInfo } from './native';

export interface CudaDeviceInfo {
  name: string;
  memory: number;
  capability: string;
}
export interface CudaInfo {
  /** The CUDA backend was compiled into this build. */
  compiled: boolean;
  /** A usable GPU, driver and cuBLAS were found. */
  available: boolean;
  /** Why CUDA is not available, in words ('' when it is). */
  reason: string;
  devices: CudaDeviceInfo[];
}
export interface BackendInfo {
  /** blas: 'openblas', 'cblas' or 'builtin'; blasPath: the library loaded; threads: our CPU pool size. */
  cpu: CpuInfo;
  cuda: CudaInfo;
}

export function backendInfo(): BackendInfo {
  const info = native.backendInfo();
  return { cpu: info.cpu, cuda: { ...info.cuda, reason: info.cuda.available ? '' : info.cuda.reason } };
}

export const cuda = {
  /** True when a CUDA device can be used. */
  isAvailable(): boolean {
    return native.backendInfo().cuda.available;
  },
  /** Number of usable CUDA devices (0 without CUDA). */
  deviceCount(): number {
    const c = native.backendInfo().cuda;
    return c.available ? c.devices.length : 0;
  },
};

/** Bytes of native tensor memory held on this thread (CPU tensors). */
export function nativeMemoryBytes(): number {
  return native.liveBytes();
}
