// A process that puts a FIFO (named pipe) where each file the project reads is expected, calls the
// reader, and prints what happened, one JSON line per case ({ name, result }: 'ok' or the first line
// of the error), then { name: 'done' }. A reader that opens a FIFO with a plain open() waits for a
// writer forever, so test/files.test.ts runs this in a child process and kills it if it stops.
//
//   node -r ./test/helpers/ts-register.js test/helpers/fifo-child.ts DIR
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import {
  AdamW, LlamaForCausalLM, SafetensorsFile, injectLora, loadAdapter, loadOptimizerState, loadSafetensorsSync, loadTokenizer,
  readCheckpoint, saveAdapter, tensor,
} from '../../lib';
import { main } from '../../lib/cli/index';
import { finetuneFixture } from './finetune-fixture';

const work = process.argv[2];
const say = (name: string, result: string) => process.stdout.write(`${JSON.stringify({ name, result })}\n`);

function fifo(p: string): void {
  fs.rmSync(p, { force: true });
  execFileSync('mkfifo', [p]);
}

/** A copy of directory `src` with `file` in it replaced by a FIFO. */
function withFifo(src: string, name: string, file: string, remove: string[] = []): string {
  const dest = path.join(work, name);
  fs.cpSync(src, dest, { recursive: true });
  for (const f of remove) fs.rmSync(path.join(dest, f));
  fifo(path.join(dest, file));
  return dest;
}

async function attempt(name: string, f: () => unknown): Promise<void> {
  try {
    await f();
    say(name, 'ok');
  } catch (e) {
    say(name, String((e as Error).message).split('\n')[0]);
  }
}

async function cli(argv: string[]): Promise<void> {
  let err = '';
  const code = await main(argv, { stdout: () => undefined, stderr: (t) => { err += t; }, isTTY: false, columns: 80 });
  if (code !== 0) throw new Error(err.trim());
}

async function run(): Promise<void> {
  const { model, data } = await finetuneFixture(work);
  const adapter = path.join(work, 'adapter');
  const m = await LlamaForCausalLM.fromPretrained(model);
  injectLora(m, { r: 2, targetModules: ['q_proj'] });
  await saveAdapter(m, adapter);
  const lone = path.join(work, 'lone.safetensors');
  fifo(lone);

  await attempt('SafetensorsFile.open', () => SafetensorsFile.open(lone));
  await attempt('SafetensorsFile.openSync', () => SafetensorsFile.openSync(lone));
  await attempt('loadSafetensorsSync', () => loadSafetensorsSync(lone));
  await attempt('config.json', () => LlamaForCausalLM.fromPretrained(withFifo(model, 'm-config', 'config.json')));
  await attempt('model.safetensors', () => LlamaForCausalLM.fromPretrained(withFifo(model, 'm-weights', 'model.safetensors')));
  await attempt('model.safetensors.index.json', () => LlamaForCausalLM.fromPretrained(withFifo(model, 'm-index', 'model.safetensors.index.json', ['model.safetensors'])));
  await attempt('adapter_config.json', async () => loadAdapter(await LlamaForCausalLM.fromPretrained(model), withFifo(adapter, 'a-config', 'adapter_config.json')));
  await attempt('adapter_model.safetensors', async () => loadAdapter(await LlamaForCausalLM.fromPretrained(model), withFifo(adapter, 'a-weights', 'adapter_model.safetensors')));
  await attempt('tokenizer.json', () => loadTokenizer(withFifo(model, 't-json', 'tokenizer.json')));
  await attempt('tokenizer_config.json', () => loadTokenizer(withFifo(model, 't-config', 'tokenizer_config.json')));
  const ckpt = path.join(work, 'ckpt');
  fs.mkdirSync(ckpt);
  fifo(path.join(ckpt, 'trainer_state.json'));
  await attempt('trainer_state.json', () => readCheckpoint(ckpt));
  await attempt('optimizer.safetensors', () => loadOptimizerState(new AdamW([tensor([1]).requiresGrad_(true)]), lone));
  // A save reads the config there only to compare it with the new one: a FIFO is replaced, not waited on.
  const overFifo = withFifo(adapter, 'a-save', 'adapter_config.json');
  await attempt('saveAdapter over adapter_config.json', async () => {
    await saveAdapter(m, overFifo);
    await loadAdapter(await LlamaForCausalLM.fromPretrained(model), overFifo);
  });
  const dataFifo = path.join(work, 'fifo.txt');
  fifo(dataFifo);
  await attempt('finetune --data', () => cli(['finetune', '--model', model, '--data', dataFifo, '--out', path.join(work, 'ft-out')]));
  await attempt('merge tokenizer.json', () => cli(['merge', '--model', withFifo(model, 'merge-tok', 'tokenizer.json'), '--adapter', adapter, '--out', path.join(work, 'merged')]));
  await attempt('generate tokenizer_config.json', () => cli(['generate', '--model', withFifo(model, 'gen-config', 'tokenizer_config.json'), '--prompt', 'the cat', '--device', 'cpu']));
  say('done', String(fs.existsSync(data)));
}

run().catch((e) => {
  say('crashed', String(e?.stack ?? e));
  process.exitCode = 1;
});
