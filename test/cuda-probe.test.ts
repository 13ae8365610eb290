// The CUDA probe launches a kernel on every device before calling it usable: a
// GPU the binary has no code for (a newer architecture than the build knows)
// or whose driver cannot compile the build's PTX answers every query and fails
// only at its first launch. These run under the CUDA emulator
// (scripts/test-cuda-emu.sh), which makes every launch on chosen devices fail
// as such a GPU does (LORA_CUDA_EMU_LAUNCH_ERROR); the probe runs once per
// process, so each case is a child process. Elsewhere they are skipped.
import { spawnSync } from 'child_process';
import * as path from 'path';
import { backendInfo } from '../lib';
import type { CudaInfo } from '../lib';

const root = path.resolve(__dirname, '..');
const emulated = backendInfo().cuda.architectures === 'emulated';
if (!emulated) console.warn('CUDA probe tests skipped: they need the CUDA emulator (bash scripts/test-cuda-emu.sh)');

interface ChildResult {
  info: CudaInfo;
  deviceCount: number;
  cpuSum: number;
  refused: string | null; // the error of zeros on 'cuda' (null: none)
  sums: number[]; // x * x summed on each usable device, then the same on cuda:0 after a trip through every device
  beyond: string | null; // the error of cuda:<number of usable devices>
}

// One process: the probe's verdict, then what CPU and CUDA ops do after it.
function probe(env: Record<string, string>): ChildResult {
  const script = `
    const L = require('./lib');
    const info = L.backendInfo().cuda;
    const x = L.tensor([1, 2, 3, 4]);
    const out = { info, deviceCount: L.cuda.deviceCount(), cpuSum: x.mul(x).sum().item(), refused: null, sums: [], beyond: null };
    try { L.zeros([2], { device: 'cuda' }); } catch (e) { out.refused = e.constructor.name + ': ' + e.message; }
    if (info.available) {
      let t = x;
      for (let i = 0; i < info.devices.length; ++i) {
        const d = x.to('cuda:' + i);
        out.sums.push(d.mul(d).sum().item());
        t = t.to('cuda:' + i).add(1);
      }
      out.sums.push(t.sum().item());
      L.cuda.synchronize();
      try { L.zeros([2], { device: 'cuda:' + info.devices.length }); } catch (e) { out.beyond = e.constructor.name + ': ' + e.message; }
    }
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync(process.execPath, ['-r', './test/helpers/ts-register.js', '-e', script], {
    cwd: root, encoding: 'utf8', timeout: 120_000, env: { ...process.env, LORA_CUDA_EMU_DEVICES: '1', LORA_CUDA_EMU_LAUNCH_ERROR: '', ...env },
  });
  if (r.status !== 0) throw new Error(`the child failed (status ${r.status}, signal ${r.signal}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ChildResult;
}

const device = 'lora-cuda CUDA emulator, compute capability 9.0';

(emulated ? describe : describe.skip)('the CUDA probe launches a kernel on each device', () => {
  test('the emulated device runs the probe kernel and is used as cuda:0', () => {
    const r = probe({});
    expect(r.info.available).toBe(true);
    expect(r.info.devices.map((d) => d.ordinal)).toEqual([0]);
    expect(r.info.unusableDevices).toEqual([]);
    expect(r.sums).toEqual([30, 14]);
  });

  test('a GPU without a kernel image for this build: CUDA is not available, the reason names the device and what to do', () => {
    const r = probe({ LORA_CUDA_EMU_LAUNCH_ERROR: '0:no-kernel-image' });
    expect(r.info.available).toBe(false);
    expect(r.info.devices).toEqual([]);
    expect(r.info.unusableDevices).toEqual([expect.objectContaining({ ordinal: 0, name: 'lora-cuda CUDA emulator', capability: '9.0' })]);
    const reason = r.info.unusableDevices[0].reason;
    expect(reason).toMatch(new RegExp(`^CUDA device 0 \\(${device}\\) cannot run this build's kernels: no kernel image is available`));
    expect(reason).toMatch(/\(cudaErrorNoKernelImageForDevice\)\. The binary has GPU code for emulated only; build it from source for this GPU with LORA_CUDA_ARCHS=90-real/);
    expect(r.info.reason).toBe(reason);
    // Everything else runs on the CPU; a CUDA device argument is refused with the reason.
    expect(r.cpuSum).toBe(30);
    expect(r.deviceCount).toBe(0);
    expect(r.refused).toMatch(/^RangeError: zeros: options.device "cuda" is not available \(CUDA device 0 .*cudaErrorNoKernelImageForDevice/);
  });

  test('a driver that cannot compile the PTX: the reason says to update the driver or build for the GPU', () => {
    const r = probe({ LORA_CUDA_EMU_LAUNCH_ERROR: '0:unsupported-ptx' });
    expect(r.info.available).toBe(false);
    expect(r.info.reason).toMatch(new RegExp(`^CUDA device 0 \\(${device}\\) cannot run this build's kernels: .*\\(cudaErrorUnsupportedPtxVersion\\)`));
    expect(r.info.reason).toMatch(/cannot compile the PTX of this build \(CUDA 13\.0\) for it: update the driver to one for CUDA 13\.0 or newer, or build it from source for this GPU with LORA_CUDA_ARCHS=90-real/);
    expect(r.cpuSum).toBe(30);
    expect(r.refused).toMatch(/^RangeError: .*not available \(CUDA device 0 .*cudaErrorUnsupportedPtxVersion/);
  });

  test('some devices unusable: cuda:N counts the usable ones, the others are listed with their reasons', () => {
    const r = probe({ LORA_CUDA_EMU_DEVICES: '4', LORA_CUDA_EMU_LAUNCH_ERROR: '0:no-kernel-image,2:unsupported-ptx' });
    expect(r.info.available).toBe(true);
    expect(r.info.reason).toBe('');
    expect(r.info.devices.map((d) => d.ordinal)).toEqual([1, 3]);
    expect(r.deviceCount).toBe(2);
    expect(r.info.unusableDevices.map((d) => d.ordinal)).toEqual([0, 2]);
    expect(r.info.unusableDevices[0].reason).toMatch(/^CUDA device 0 .*cudaErrorNoKernelImageForDevice/);
    expect(r.info.unusableDevices[1].reason).toMatch(/^CUDA device 2 .*cudaErrorUnsupportedPtxVersion/);
    // cuda:0 and cuda:1 are devices 1 and 3 (a launch on 0 or 2 would fail), and tensors move between them.
    expect(r.sums).toEqual([30, 30, 18]);
    expect(r.beyond).toMatch(/^RangeError: zeros: options.device "cuda:2" does not exist \(2 CUDA device\(s\); 2 more cannot be used, backendInfo\(\)\.cuda\.unusableDevices says why\)$/);
  });

  test('lora-cuda doctor lists the usable GPUs and, for the others, why and what to do', () => {
    const main = "require('./lib/cli/index').main(['doctor']).then((code) => { process.exitCode = code; })";
    const r = spawnSync(process.execPath, ['-r', './test/helpers/ts-register.js', '-e', main], {
      cwd: root, encoding: 'utf8', timeout: 120_000,
      env: { ...process.env, LORA_CUDA_EMU_DEVICES: '2', LORA_CUDA_EMU_LAUNCH_ERROR: '0:no-kernel-image' },
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^cuda:0 +lora-cuda CUDA emulator \(device 1\), 2\.0 GiB, compute capability 9\.0, 4 multiprocessors$/m);
    expect(r.stdout).toMatch(/^device 0 +lora-cuda CUDA emulator, compute capability 9\.0: not used\n +-> CUDA device 0 .*LORA_CUDA_ARCHS=90-real/m);
    expect(r.stdout).toMatch(/^gpu +available \(1 device\)$/m);
    expect(r.stdout).toMatch(/^ready: the CPU path works, and CUDA$/m);
  });
});
