// Which GPU architectures a source build compiles (cuda/architectures.cmake):
// the default list trimmed to what the nvcc found can compile, a list the user
// gives used as given or refused with what nvcc knows. Older toolkits are
// stand-in nvcc scripts that answer --version, --list-gpu-code and
// --list-gpu-arch as those releases do; the functions run through cmake -P, as
// CMakeLists.txt runs them before enable_language(CUDA).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const hasCmake = spawnSync('cmake', ['--version']).status === 0;
if (!hasCmake) console.warn('cuda/architectures.cmake tests skipped: cmake is not on PATH');

// The default list, as CMakeLists.txt sets it.
const defaults = /set\(LORA_CUDA_DEFAULT_ARCHITECTURES "([^"]+)"\)/.exec(fs.readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8'))![1];

const upTo90 = ['50', '52', '53', '60', '61', '62', '70', '72', '75', '80', '86', '87', '89', '90', '90a'];
const toolkits: Record<string, { release: string; targets: string[] | null }> = {
  '12.0': { release: '12.0, V12.0.76', targets: upTo90 },
  '12.4': { release: '12.4, V12.4.131', targets: upTo90 },
  '12.8': { release: '12.8, V12.8.61', targets: [...upTo90, '100', '100a', '101', '101a', '120', '120a'] },
  // As nvcc 13.0 prints them (sm_110 before sm_103), without Maxwell, Pascal and Volta.
  '13.0': { release: '13.0, V13.0.88', targets: ['75', '80', '86', '87', '88', '89', '90', '100', '110', '103', '120', '121'] },
  // A later toolkit that no longer compiles for sm_75 and knows a newer architecture.
  future: { release: '14.2, V14.2.1', targets: ['80', '86', '89', '90', '100', '120', '130'] },
  // One that cannot list its targets.
  mute: { release: '12.2, V12.2.91', targets: null },
  // One too old for any of the default list.
  old: { release: '10.2, V10.2.89', targets: ['30', '35', '50', '52', '60', '61', '70', '72'] },
};

let dir = '';
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-archs-'));
  for (const [name, t] of Object.entries(toolkits)) {
    const list = (prefix: string) => (t.targets === null ? 'exit 1' : `printf '${t.targets.map((n) => `${prefix}_${n}\\n`).join('')}'; exit 0`);
    fs.writeFileSync(path.join(dir, `nvcc-${name}`), [
      '#!/bin/sh',
      'case "$1" in',
      `  --version) printf 'nvcc: NVIDIA (R) Cuda compiler driver\\nCuda compilation tools, release ${t.release}\\n'; exit 0;;`,
      `  --list-gpu-code) ${list('sm')};;`,
      `  --list-gpu-arch) ${list('compute')};;`,
      'esac',
      'exit 2',
      '',
    ].join('\n'), { mode: 0o755 });
  }
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Outcome { version: string; codes: string; archs: string; list: string; note: string; error: string }

function select(nvcc: string, wanted: string, explicit: boolean): Outcome {
  const exe = path.isAbsolute(nvcc) ? nvcc : path.join(dir, `nvcc-${nvcc}`);
  const r = spawnSync('cmake', [`-DNVCC=${exe}`, `-DWANTED=${wanted}`, `-DEXPLICIT=${explicit ? 'ON' : 'OFF'}`,
    '-P', path.join(root, 'test', 'helpers', 'cuda-architectures.cmake')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cmake -P failed (status ${r.status}): ${r.stderr}`);
  return JSON.parse(r.stderr.trim()) as Outcome;
}

(hasCmake ? describe : describe.skip)('GPU architectures of a source build', () => {
  test('the default list is the one the project documents', () => {
    expect(defaults).toBe('75-real;80-real;86-real;90-real;100-real;120-real;120-virtual');
  });

  test.each(['12.0', '12.4'])('nvcc %s: the default list without sm_100 and sm_120, with compute_90 PTX for later GPUs', (v) => {
    const o = select(v, defaults, false);
    expect(o.version).toBe(v);
    expect(o.list).toBe('75-real;80-real;86-real;90-real;90-virtual');
    expect(o.note).toBe(`nvcc ${v} cannot compile for sm_100, sm_120, so the default list leaves them out (a newer CUDA toolkit builds them); ` +
      'GPUs newer than sm_90 run the compute_90 PTX, which the driver compiles at first use');
    expect(o.error).toBe('');
  });

  test.each(['12.8', '13.0'])('nvcc %s: the whole default list', (v) => {
    const o = select(v, defaults, false);
    expect(o).toMatchObject({ version: v, list: defaults, note: '', error: '' });
  });

  test('a toolkit that dropped an architecture of the list: left out, and said', () => {
    const o = select('future', defaults, false);
    expect(o.list).toBe('80-real;86-real;90-real;100-real;120-real;120-virtual');
    expect(o.note).toMatch(/^nvcc 14\.2 cannot compile for sm_75, so the default list leaves them out/);
  });

  test('an nvcc that knows none of the default list: an error that says what it knows', () => {
    const o = select('old', defaults, false);
    expect(o.list).toBe('');
    expect(o.error).toBe('nvcc 10.2 can compile none of the default GPU architectures (75-real, 80-real, 86-real, 90-real, 100-real, 120-real, 120-virtual); ' +
      'it knows sm_30, sm_35, sm_50, sm_52, sm_60, sm_61, sm_70, sm_72. Set LORA_CUDA_ARCHS to a list of those, or build with a newer CUDA toolkit');
  });

  test('an nvcc that cannot list its targets: the list as given, and a note', () => {
    const o = select('mute', defaults, false);
    expect(o).toMatchObject({ version: '12.2', codes: '', list: defaults, error: '' });
    expect(o.note).toMatch(/^nvcc 12\.2 did not list the architectures it supports/);
  });

  test('a list the user gives is used as given when nvcc knows every entry', () => {
    expect(select('12.4', '90-real', true)).toMatchObject({ list: '90-real', note: '', error: '' });
    expect(select('12.4', '75;86-real;90-virtual', true)).toMatchObject({ list: '75;86-real;90-virtual', error: '' });
    expect(select('13.0', '121-real;native', true)).toMatchObject({ list: '121-real;native', error: '' });
  });

  test('a list the user gives with an entry nvcc does not know: an error naming it and what nvcc knows', () => {
    const o = select('12.4', '90-real;100-real;120-virtual', true);
    expect(o.list).toBe('');
    expect(o.error).toBe('nvcc 12.4 cannot compile for sm_100, compute_120; it knows sm_50, sm_52, sm_53, sm_60, sm_61, sm_62, sm_70, sm_72, ' +
      'sm_75, sm_80, sm_86, sm_87, sm_89, sm_90 (and compute_NN of each for PTX). Choose from those, or build with a newer CUDA toolkit');
    expect(select('13.0', '95', true).error).toMatch(/^nvcc 13\.0 cannot compile for sm_95, compute_95; it knows sm_75, sm_80, .*sm_100, sm_103, sm_110, sm_120, sm_121 /);
    expect(select('13.0', '90-real;sm_90', true).error).toMatch(/^nvcc 13\.0 cannot compile for "sm_90" \(expected NN, NN-real or NN-virtual\)/);
  });

  const real = ['nvcc', '/usr/local/cuda/bin/nvcc'].find((n) => spawnSync(n, ['--version']).status === 0);
  (real ? test : test.skip)('the nvcc installed here answers, and the selection matches its release', () => {
    const o = select(spawnSync('sh', ['-c', `command -v ${real}`], { encoding: 'utf8' }).stdout.trim(), defaults, false);
    expect(o.version).toMatch(/^\d+\.\d+$/);
    expect(o.codes.split(';')).toContain('90');
    const [major, minor] = o.version.split('.').map(Number);
    if (major > 12 || (major === 12 && minor >= 8)) expect(o).toMatchObject({ list: defaults, note: '' });
    else expect(o.list).toBe('75-real;80-real;86-real;90-real;90-virtual');
  });
});
