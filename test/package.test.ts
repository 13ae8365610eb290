// The package as users load it: by name, from the compiled dist/ (built by
// npm install, and again before npm test), through require and import.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const built = fs.existsSync(path.join(root, 'dist', 'lib', 'index.mjs'));
const run = (args: string[]) => spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8' });

(built ? describe : describe.skip)('package entry points (dist/)', () => {
  test("require('lora-cuda') gives the API", () => {
    const r = run(['-e', `
      const m = require('lora-cuda');
      const l = new m.LoRALinear(new m.Linear(4, 3), { r: 2 });
      console.log(JSON.stringify({ keys: Object.keys(m).sort(), shape: l.forward(m.randn([5, 4])).shape }));`]);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout);
    expect(out.shape).toEqual([5, 3]);
    expect(out.keys).toEqual(expect.arrayContaining(['tensor', 'LoRALinear', 'injectLora', 'Adam', 'AdamW', 'F', 'backendInfo', 'cuda']));
  });

  test("import … from 'lora-cuda' gives the same names as require", () => {
    const r = run(['--input-type=module', '-e', `
      import * as esm from 'lora-cuda';
      import { createRequire } from 'module';
      const cjs = createRequire(process.cwd() + '/')('lora-cuda');
      const names = Object.keys(esm).filter((k) => k !== 'default').sort();
      const { tensor, qkvFilter, Linear } = esm;
      console.log(JSON.stringify({
        same: JSON.stringify(names) === JSON.stringify(Object.keys(cjs).sort()),
        sameObjects: esm.Tensor === cjs.Tensor,
        sum: tensor([1, 2, 3]).sum().item(),
        qkv: qkvFilter('a.q_proj', new Linear(2, 2)),
      }));`]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ same: true, sameObjects: true, sum: 6, qkv: true });
  });
});

if (!built) {
  test.skip('package entry points: dist/ is not built (run npm run build:ts)', () => undefined);
}
