// The atomic-write helpers every file the project writes goes through (lib/atomic.ts): a failure at any
// point leaves the old file or directory as it was and no temporary file behind.
import fs = require('fs'); // the module object itself, so jest.spyOn reaches the code under test
import * as os from 'os';
import * as path from 'path';
import {
  asideDirs, ensureWritableDir, recoverDir, replaceDir, stageFile, tempPathFor, writeFileAtomic, writeFileAtomicSync,
} from '../lib/atomic';
import { openFilesOf } from './helpers/fds';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-atomic-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(() => jest.restoreAllMocks());

const eio = (what: string) => Object.assign(new Error(`EIO: i/o error, ${what}`), { code: 'EIO' });

/** A fresh directory holding `name` with the content "old". */
function withOld(name = 'state.json'): { dir: string; file: string } {
  const dir = fs.mkdtempSync(path.join(tmp, 'case-'));
  const file = path.join(dir, name);
  fs.writeFileSync(file, 'old');
  return { dir, file };
}

function expectOld(dir: string, file: string): void {
  expect(fs.readdirSync(dir)).toEqual([path.basename(file)]); // no temporary file left
  expect(fs.readFileSync(file, 'utf8')).toBe('old');
  expect(openFilesOf(dir)).toBe(0);
}

test('temporary files are named .NAME.PID.RANDOM.tmp beside the target', () => {
  const t = tempPathFor(path.join(tmp, 'a', 'model.safetensors'));
  expect(path.dirname(t)).toBe(path.join(tmp, 'a'));
  expect(path.basename(t)).toMatch(new RegExp(`^\\.model\\.safetensors\\.${process.pid}\\.[0-9a-f]{12}\\.tmp$`));
  expect(tempPathFor('x')).not.toBe(tempPathFor('x'));
});

describe('writeFileAtomic / writeFileAtomicSync', () => {
  test('write a new file and replace an existing one, strings as UTF-8 and bytes as they are', async () => {
    const { dir, file } = withOld();
    await writeFileAtomic(file, '{"é": 1}\n');
    expect(fs.readFileSync(file, 'utf8')).toBe('{"é": 1}\n');
    writeFileAtomicSync(file, new Uint8Array([1, 2, 3]));
    expect([...fs.readFileSync(file)]).toEqual([1, 2, 3]);
    const fresh = path.join(dir, 'new.txt');
    await writeFileAtomic(fresh, '');
    expect(fs.readFileSync(fresh, 'utf8')).toBe('');
    expect(fs.readdirSync(dir).sort()).toEqual(['new.txt', 'state.json']);
    expect(openFilesOf(dir)).toBe(0);
  });

  test.each(['write', 'fsync', 'close', 'rename'] as const)('async: a failing %s leaves the old file and no temporary file', async (fn) => {
    const { dir, file } = withOld();
    jest.spyOn(fs, fn).mockImplementation(((...args: unknown[]) => {
      const cb = args[args.length - 1] as (e: Error) => void;
      if (fn === 'close') (fs.closeSync as (fd: number) => void)(args[0] as number); // it fails, but the descriptor goes
      process.nextTick(() => cb(eio(fn)));
    }) as never);
    await expect(writeFileAtomic(file, 'new')).rejects.toThrow(new RegExp(`EIO: i/o error, ${fn}`));
    jest.restoreAllMocks();
    expectOld(dir, file);
  });

  test.each(['writeSync', 'fsyncSync', 'renameSync'] as const)('sync: a failing %s leaves the old file and no temporary file', (fn) => {
    const { dir, file } = withOld();
    jest.spyOn(fs, fn).mockImplementation(() => {
      throw eio(fn);
    });
    expect(() => writeFileAtomicSync(file, 'new')).toThrow(/EIO/);
    jest.restoreAllMocks();
    expectOld(dir, file);
  });

  test('a target in a missing directory fails without creating anything; bad arguments are refused', async () => {
    const missing = path.join(tmp, 'no-such-dir', 'f.json');
    await expect(writeFileAtomic(missing, 'x')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(fs.existsSync(path.dirname(missing))).toBe(false);
    await expect(writeFileAtomic('', 'x')).rejects.toThrow(TypeError);
    expect(() => writeFileAtomicSync(path.join(tmp, 'n'), 5 as unknown as string)).toThrow(/data must be a string or a Uint8Array, got number/);
  });
});

describe('stageFile', () => {
  test('the target changes only on commit; discard leaves it as it was', async () => {
    const { dir, file } = withOld();
    const staged = await stageFile(file, 'new');
    expect(fs.readFileSync(file, 'utf8')).toBe('old');
    expect(fs.readFileSync(staged.path, 'utf8')).toBe('new');
    await staged.commit();
    expect(fs.readFileSync(file, 'utf8')).toBe('new');
    expect(fs.readdirSync(dir)).toEqual(['state.json']);
    await expect(staged.commit()).rejects.toThrow(/already committed/);

    const again = await stageFile(file, 'newer');
    await again.discard();
    expect(fs.readdirSync(dir)).toEqual(['state.json']);
    expect(fs.readFileSync(file, 'utf8')).toBe('new');
  });

  test('a failed commit removes the staged file', async () => {
    const { dir, file } = withOld();
    const staged = await stageFile(file, 'new');
    jest.spyOn(fs, 'rename').mockImplementation(((_a: unknown, _b: unknown, cb: (e: Error) => void) => {
      process.nextTick(() => cb(eio('rename')));
    }) as never);
    await expect(staged.commit()).rejects.toThrow(/EIO/);
    jest.restoreAllMocks();
    expectOld(dir, file);
  });
});

describe('replaceDir / recoverDir', () => {
  const complete = (d: string) => fs.existsSync(path.join(d, 'state.json'));
  function oldDir(): { parent: string; target: string } {
    const parent = fs.mkdtempSync(path.join(tmp, 'dir-'));
    const target = path.join(parent, 'checkpoint');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'state.json'), 'old');
    fs.writeFileSync(path.join(target, 'weights.bin'), 'old weights');
    return { parent, target };
  }
  const contents = (d: string) => Object.fromEntries(fs.readdirSync(d).sort().map((f) => [f, fs.readFileSync(path.join(d, f), 'utf8')]));

  test('the new content replaces the old as a unit; nothing is left beside it', async () => {
    const { parent, target } = oldDir();
    await replaceDir(target, async (d) => {
      expect(path.dirname(d)).toBe(parent);
      expect(path.basename(d)).toBe(`.checkpoint-tmp-${process.pid}`);
      await writeFileAtomic(path.join(d, 'state.json'), 'new');
    });
    expect(contents(target)).toEqual({ 'state.json': 'new' });
    expect(fs.readdirSync(parent)).toEqual(['checkpoint']);
    // A first write (no directory yet) works the same way.
    const fresh = path.join(parent, 'other');
    await replaceDir(fresh, (d) => writeFileAtomic(path.join(d, 'state.json'), 'x'));
    expect(contents(fresh)).toEqual({ 'state.json': 'x' });
  });

  test('a failure while filling leaves the old directory and removes the temporary one', async () => {
    const { parent, target } = oldDir();
    await expect(replaceDir(target, async (d) => {
      await writeFileAtomic(path.join(d, 'state.json'), 'new');
      throw eio('write');
    })).rejects.toThrow(/EIO/);
    expect(contents(target)).toEqual({ 'state.json': 'old', 'weights.bin': 'old weights' });
    expect(fs.readdirSync(parent)).toEqual(['checkpoint']);
  });

  test('a refused rename of the new directory (a full disk): the old one is put back, nothing is left beside it', async () => {
    const { parent, target } = oldDir();
    const rename = fs.rename;
    jest.spyOn(fs, 'rename').mockImplementation(((from: string, to: string, cb: (e: Error | null) => void) => {
      if (to === target && path.basename(from).startsWith('.checkpoint-tmp-')) return process.nextTick(() => cb(eio('rename')));
      return rename(from, to, cb);
    }) as never);
    await expect(replaceDir(target, (d) => writeFileAtomic(path.join(d, 'state.json'), 'new'))).rejects.toThrow(/EIO/);
    jest.restoreAllMocks();
    expect(contents(target)).toEqual({ 'state.json': 'old', 'weights.bin': 'old weights' });
    expect(fs.readdirSync(parent)).toEqual(['checkpoint']);
    expect(asideDirs(target, complete)).toEqual([]);
  });

  test('a kill between the two renames (simulated): recoverDir puts the complete old directory back', async () => {
    const { parent, target } = oldDir();
    const rename = fs.rename;
    jest.spyOn(fs, 'rename').mockImplementation(((from: string, to: string, cb: (e: Error | null) => void) => {
      if (to === target) return process.nextTick(() => cb(new Error('killed (simulated)')));
      return rename(from, to, cb);
    }) as never);
    await expect(replaceDir(target, (d) => writeFileAtomic(path.join(d, 'state.json'), 'new'))).rejects.toThrow('killed (simulated)');
    jest.restoreAllMocks();
    expect(fs.existsSync(target)).toBe(false);
    // The putting back failed too (the mock refuses every rename to the target): the old directory
    // waits aside; the new one, which a kill would leave, was removed with the error.
    expect(fs.readdirSync(parent).sort()).toEqual([`.checkpoint-old-${process.pid}`]);
    expect(asideDirs(target, complete)).toEqual([path.join(parent, `.checkpoint-old-${process.pid}`)]);
    // An incomplete old directory is not taken for a checkpoint, and a killed write's temporary one goes…
    fs.mkdirSync(path.join(parent, '.checkpoint-old-1'));
    fs.mkdirSync(path.join(parent, '.checkpoint-tmp-1'));
    expect(await recoverDir(target, complete)).toBe(true);
    expect(contents(target)).toEqual({ 'state.json': 'old', 'weights.bin': 'old weights' });
    expect(fs.readdirSync(parent)).toEqual(['checkpoint']); // …and every leftover is removed
    // Nothing to do when the target is complete, or when there is nothing at all.
    expect(await recoverDir(target, complete)).toBe(false);
    expect(contents(target)).toEqual({ 'state.json': 'old', 'weights.bin': 'old weights' });
    expect(await recoverDir(path.join(tmp, 'never', 'checkpoint'))).toBe(false);
  });
});

describe('ensureWritableDir', () => {
  test('creates missing directories, leaves nothing in them', () => {
    const d = path.join(tmp, 'w', 'a', 'b');
    ensureWritableDir(d);
    expect(fs.readdirSync(d)).toEqual([]);
    ensureWritableDir(d); // and again, existing
  });

  test('a path under a regular file fails with the file system\'s code', () => {
    const f = path.join(tmp, 'plain-file');
    fs.writeFileSync(f, 'x');
    expect(() => ensureWritableDir(path.join(f, 'out'))).toThrow(expect.objectContaining({ code: 'ENOTDIR' }));
    expect(() => ensureWritableDir(f)).toThrow(expect.objectContaining({ code: 'EEXIST' }));
  });

  const root = process.getuid?.() === 0;
  (root ? test.skip : test)(`a read-only directory fails${root ? ' (skipped: running as root, where permission bits do not stop writes)' : ''}`, () => {
    const d = path.join(tmp, 'read-only');
    fs.mkdirSync(d);
    fs.chmodSync(d, 0o500);
    try {
      expect(() => ensureWritableDir(d)).toThrow(expect.objectContaining({ code: 'EACCES' }));
      expect(() => ensureWritableDir(path.join(d, 'sub'))).toThrow(expect.objectContaining({ code: 'EACCES' }));
    } finally {
      fs.chmodSync(d, 0o700);
    }
  });
});
