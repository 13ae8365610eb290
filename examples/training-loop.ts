import {
  AdamW, LlamaForCausalLM, clipGradNorm, getLinearScheduleWithWarmup, getLoraAB, injectLora, manualSeed,
} from 'lora-cuda';

// A tiny Llama with random weights (LlamaForCausalLM.fromPretrained(dir) loads a real one).
manualSeed(0);
const model = new LlamaForCausalLM({
  model_type: 'llama', vocab_size: 32, hidden_size: 32, intermediate_size: 64,
  num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
});
injectLora(model, { r: 8, alpha: 32 }); // every Linear, the head included: the random base knows nothing

// Teach it to count: each token is followed by the next one (runs of 8 from every start).
const run = (start: number) => Array.from({ length: 8 }, (_, i) => start + i);
const batch = Array.from({ length: 25 }, (_, start) => run(start));
const steps = 100;
const params = getLoraAB(model);
const opt = new AdamW(params, { lr: 2e-2 });
const sched = getLinearScheduleWithWarmup(opt, { numWarmupSteps: 5, numTrainingSteps: steps });
for (let step = 1; step <= steps; step++) {
  const loss = model.loss(batch);
  loss.backward();
  const norm = clipGradNorm(params, 1.0);
  opt.step();
  sched.step();
  opt.zeroGrad();
  if (step % 25 === 0) console.log(`step ${step} loss ${loss.item().toFixed(3)} grad-norm ${norm.item().toFixed(3)}`);
}
console.log('3, 4, 5 ->', model.generate([[3, 4, 5]], { maxNewTokens: 4 })[0].slice(3).join(', '));
