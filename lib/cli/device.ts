// The --device option shared by the commands: 'cpu' or 'cuda', defaulting to
// CUDA when this build can use it.
import { backendInfo } from '../backend';
import { CliError, UsageError } from './io';

export type CliDevice = 'cpu' | 'cuda';

/** The --dtype values: the checkpoint's own (torch_dtype) or a storage dtype for the weights. */
export const CLI_DTYPES = ['auto', 'float32', 'bfloat16', 'float16'] as const;
export type CliDtype = (typeof CLI_DTYPES)[number];
export const DTYPE_HELP = 'the weights\' dtype: auto (config.json\'s torch_dtype), float32, bfloat16 or float16 (default: auto on cuda, float32 on cpu)';

/**
 * Resolves a --dtype value. Not given: 'auto' on CUDA (a bf16 checkpoint stays bf16 and runs on tensor
 * cores) and 'float32' on the CPU, where the half GEMM converts panels to float32 and is no faster
 * than float32's (bfloat16 halves the weights' memory there; ask for it). A value outside CLI_DTYPES
 * is a usage error (exit 2).
 */
export function resolveDtype(value: unknown, device: CliDevice): CliDtype {
  if (value === undefined) return device === 'cuda' ? 'auto' : 'float32';
  if (typeof value !== 'string' || !(CLI_DTYPES as readonly string[]).includes(value)) {
    throw new UsageError(`--dtype must be ${CLI_DTYPES.join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value as CliDtype;
}

/**
 * Resolves a --device value: undefined means cuda when available, else cpu.
 * A value other than cpu/cuda is a usage error (exit 2); cuda on a machine or
 * build without it is a failure (exit 1) that says why and what to use instead.
 */
export function resolveDevice(value: string | undefined): CliDevice {
  const cuda = backendInfo().cuda;
  if (value === undefined) return cuda.available ? 'cuda' : 'cpu';
  if (value !== 'cpu' && value !== 'cuda') throw new UsageError(`--device must be cpu or cuda, got ${JSON.stringify(value)}`);
  if (value === 'cuda' && !cuda.available) {
    throw new CliError(`--device cuda is not available: ${cuda.reason || 'no usable CUDA device'}; use --device cpu`);
  }
  return value;
}
