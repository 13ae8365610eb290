import { backendInfo } from './ops/runtime';
import { DeviceType } from './ops/enums';
import { rangeError, typeError } from './errors';

/** Where a tensor lives: 'cpu', 'cuda' (device 0) or 'cuda:N'. */
export type DeviceSpec = 'cpu' | 'cuda' | `cuda:${number}`;

export interface ParsedDevice {
  type: DeviceType;
  index: number;
  name: string; // canonical: 'cpu' or 'cuda:N'
}

const CPU: ParsedDevice = { type: 'cpu', index: 0, name: 'cpu' };
const DEVICE_NAME = /^cuda(?::(\d+))?$/;

/** True for a string of the form of a device ('cpu', 'cuda', 'cuda:N'), whether or not it exists. */
export function isDeviceName(v: unknown): v is DeviceSpec {
  return v === 'cpu' || (typeof v === 'string' && DEVICE_NAME.test(v));
}

/** Parses and checks a device argument; a CUDA device must exist in this process. */
export function parseDevice(where: string, what: string, v: unknown): ParsedDevice {
  if (v === undefined || v === 'cpu') return CPU;
  if (typeof v !== 'string') throw typeError(where, what, `'cpu', 'cuda' or 'cuda:N'`, v);
  const m = DEVICE_NAME.exec(v);
  if (!m) throw rangeError(where, what, `'cpu', 'cuda' or 'cuda:N'`, v);
  const index = m[1] === undefined ? 0 : Number(m[1]);
  const info = backendInfo().cuda;
  if (!info.available) {
    throw new RangeError(`${where}: ${what} ${JSON.stringify(v)} is not available (${info.reason})`);
  }
  if (index >= info.devices.length) {
    // cuda:N counts usable devices only; say so when some were left out.
    const unusable = info.unusableDevices.length;
    const more = unusable ? `; ${unusable} more cannot be used, backendInfo().cuda.unusableDevices says why` : '';
    throw new RangeError(`${where}: ${what} ${JSON.stringify(v)} does not exist (${info.devices.length} CUDA device(s)${more})`);
  }
  return { type: 'cuda', index, name: `cuda:${index}` };
}
