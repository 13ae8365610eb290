import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaForCausalLM, Trainer, injectLora, manualSeed, saveAdapter } from 'lora-cuda';

// The counting task of examples/training-loop.ts, trained by a Trainer: same schedule, same clipping.
manualSeed(0);
const model = new LlamaForCausalLM({
  model_type: 'llama', vocab_size: 32, hidden_size: 32, intermediate_size: 64,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
});
injectLora(model, { r: 8, alpha: 32 });
const run = (start: number) => Array.from({ length: 8 }, (_, i) => start + i);
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'counting-'));

const trainer = new Trainer({
  model,
  train: [{ ids: Array.from({ length: 25 }, (_, start) => run(start)) }], // one batch per epoch
  epochs: 100,
  optimizer: { lr: 2e-2 },
  lrSchedule: 'linear',
  warmupSteps: 5,
  maxGradNorm: 1.0,
  logEvery: 25,
  checkpointDir: path.join(out, 'checkpoint'), // trainer.loadCheckpoint(dir) continues a stopped run
  saveEvery: 50,
  onLog: ({ step, loss, gradNorm }) => console.log(`step ${step} loss ${loss.toFixed(3)} grad-norm ${gradNorm!.toFixed(3)}`),
  onCheckpoint: ({ step, reason }) => console.log(`checkpoint at step ${step} (${reason})`),
});
const stop = () => trainer.stop(); // Ctrl-C: finish the step, write a checkpoint, return
process.on('SIGINT', stop);

export const done = trainer.train().then(async (result) => {
  process.off('SIGINT', stop);
  await saveAdapter(model, out);
  console.log(`${result.reason} at step ${result.step}; adapter written to ${out}`);
  console.log('3, 4, 5 ->', model.generate([[3, 4, 5]], { maxNewTokens: 4 })[0].slice(3).join(', '));
});
