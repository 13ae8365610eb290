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

test("the README's training-loop block is examples/training-loop.ts, verbatim", () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  expect(blocks).toContain(fs.readFileSync(path.join(root, 'examples', 'training-loop.ts'), 'utf8'));
});

test('the training-loop example runs: schedule, clipping, a falling loss, then it counts on', () => {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'log').mockImplementation((...args: unknown[]) => {
    lines.push(args.map(String).join(' '));
  });
  try {
    jest.isolateModules(() => {
      require('../examples/training-loop');
    });
  } finally {
    spy.mockRestore();
  }
  const losses = lines.filter((l) => l.startsWith('step ')).map((l) => Number(/loss ([\d.]+)/.exec(l)![1]));
  expect(losses).toHaveLength(4);
  expect(losses[3]).toBeLessThan(0.1 * losses[0]);
  expect(lines[lines.length - 1]).toBe('3, 4, 5 -> 6, 7, 8, 9');
});

test("the README's Trainer block is examples/trainer.ts, verbatim", () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  expect(blocks).toContain(fs.readFileSync(path.join(root, 'examples', 'trainer.ts'), 'utf8'));
});

test('the Trainer example runs: a falling loss, two checkpoints, then it counts on', async () => {
  const lines: string[] = [];
  const spy = jest.spyOn(console, 'log').mockImplementation((...args: unknown[]) => {
    lines.push(args.map(String).join(' '));
  });
  const sigint = process.listenerCount('SIGINT');
  let out = '';
  try {
    let done: Promise<void> = Promise.resolve();
    jest.isolateModules(() => {
      done = require('../examples/trainer').done;
    });
    await done;
  } finally {
    spy.mockRestore();
    out = /adapter written to (.+)$/m.exec(lines.join('\n'))?.[1] ?? '';
    if (out) fs.rmSync(out, { recursive: true, force: true });
  }
  expect(process.listenerCount('SIGINT')).toBe(sigint);
  const losses = lines.filter((l) => l.startsWith('step ')).map((l) => Number(/loss ([\d.]+)/.exec(l)![1]));
  expect(losses).toHaveLength(4);
  expect(losses[3]).toBeLessThan(0.1 * losses[0]);
  expect(lines.filter((l) => l.startsWith('checkpoint'))).toEqual(['checkpoint at step 50 (periodic)', 'checkpoint at step 100 (end)']);
  expect(out).not.toBe('');
  expect(lines[lines.length - 2]).toBe(`done at step 100; adapter written to ${out}`);
  expect(lines[lines.length - 1]).toBe('3, 4, 5 -> 6, 7, 8, 9');
});
