// The public types: test/types/*.ts are compiled with tsc --noEmit (strict, as users compile
// against the package). They hold typed uses that must compile and @ts-expect-error lines for
// misuse that must not, so a typing that accepts the misuse fails here.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');

test('test/types compile, and every @ts-expect-error marks an error', () => {
  const files = fs.readdirSync(path.join(root, 'test', 'types')).filter((f) => f.endsWith('.ts')).map((f) => path.join('test', 'types', f));
  expect(files.length).toBeGreaterThan(0);
  const tsc = require.resolve('typescript/bin/tsc');
  const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--target', 'ES2022', '--module', 'commonjs', '--moduleResolution', 'node',
    '--types', 'node', '--skipLibCheck', '--esModuleInterop', ...files], { cwd: root, encoding: 'utf8', timeout: 300_000 });
  // An unused @ts-expect-error is itself an error (TS2578), so both directions are checked.
  expect(r.stdout + r.stderr).toBe('');
  expect(r.status).toBe(0);
}, 300_000);
