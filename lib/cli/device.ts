// The --device option shared by the commands: 'cpu' or 'cuda', defaulting to
// CUDA when this build can use it.
import { backendInfo } from '../backend';
import { CliError, UsageError } from './io';

export type CliDevice = 'cpu' | 'cuda';

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
