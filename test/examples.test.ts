import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');

test("the README's first code block is examples/quickstart.ts, verbatim", () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const block = /```ts\n([\s\S]*?)```/.exec(readme);
  expect(block).not.toBeNull();
  expect(block![1]).toBe(fs.readFileSync(path.join(root, 'examples', 'quickstart.ts'), 'utf8'));
});

test('the quick-start example runs, prints the replaced layers and a falling loss', () => {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'log').mockImplementation((...args: unknown[]) => {
    lines.push(args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' '));
  });
  try {
    jest.isolateModules(() => {
      require('../examples/quickstart');
    });
  } finally {
    spy.mockRestore();
  }
  expect(lines[0]).toBe('replaced layers: ["q_proj","k_proj","v_proj"]');
  const losses = lines.filter((l) => l.startsWith('step ')).map((l) => Number(l.split('loss ')[1]));
  expect(losses).toHaveLength(4);
  expect(losses[3]).toBeLessThan(losses[0]);
});
