// lora-cuda: LoRA fine-tuning for Node.js on a native core.
export { Tensor } from './tensor';
export type { NestedList } from './tensor';
export { where } from './tensor';
export type { ValuesIndices } from './tensor';
export type { DType } from './dtype';
export { tensor, zeros, ones, full, randn, rand } from './creation';
export type { TensorOptions, TensorDataOptions, TensorData, NestedArray } from './creation';
export { cat, stack } from './joins';
export { tidy, keep } from './scope';
export type { DeviceSpec } from './device';
export { noGrad, isGradEnabled, enableGrad, setGradEnabled } from './autograd';
export type { BackwardOptions } from './tensor';
export { manualSeed, getRngState, setRngState } from './random';
export { Module } from './nn/module';
export type { StateDict, LoadStateDictResult } from './nn/module';
export { Linear, Sequential, ModuleList, ReLU, GELU, SiLU, Identity } from './nn/layers';
export { ModuleDict } from './nn/containers';
export { Dropout } from './nn/dropout';
export { LayerNorm } from './nn/normalization';
export type { LayerNormOptions } from './nn/normalization';
export type { ForwardInput, ForwardOutput, LayerTaking, ChainedLayers, SequentialInput, SequentialOutput } from './nn/containers';
export type { LinearOptions } from './nn/layers';
export * as F from './nn/functional';
export type { Reduction, CrossEntropyOptions } from './nn/functional';
export {
  LoRALinear, injectLora, qkvFilter, getLoraParameters, getLoraAB, loraLayers, mergeLora, unmergeLora, withAdaptersDisabled,
} from './lora';
export type { LoRAOptions, InjectLoraOptions, LoraFilter, LoraInit } from './lora';
export {
  getNbTrainableParameters, printTrainableParameters, mergeAndUnload, unload, ModulesToSaveWrapper, modulesToSaveLayers, LoRAEmbedding, loraEmbeddingLayers,
  activeAdapter, listAdapters, setAdapter, deleteAdapter,
} from './lora';
export type { PeftTargets } from './lora';
export { Embedding, RMSNorm } from './nn/transformer';
export { LlamaForCausalLM, parseLlamaConfig } from './models/llama';
export type { LlamaConfig, FromPretrainedOptions, GenerateOptions } from './models/llama';
export type { BatchOptions } from './models/llama';
export type { RopeScaling, RotaryTablesOptions, AttentionOptions, EmbeddingOptions, RMSNormOptions } from './nn/transformer';
export type { EmbeddingLookupOptions } from './nn/transformer';
export { saveAdapter, loadAdapter, saveMerged, PEFT_IGNORED_FIELDS, PEFT_FIELD_HANDLING } from './peft';
export type { SaveAdapterOptions, LoadAdapterOptions } from './peft';
export { SafetensorsFile, SafetensorsError, loadSafetensors, loadSafetensorsSync, saveSafetensors, saveSafetensorsSync } from './safetensors';
export type { SafetensorsDtype, SafetensorsEntry, SafetensorsReadOptions, WriteOptions as SafetensorsWriteOptions } from './safetensors';
export { loadTokenizer, Tokenizer } from './tokenizer';
export type { Encoding, TokenizerConstructor } from './tokenizer';
export type { ChatMessage, ChatTemplateOptions, SpecialTokens } from './tokenizer';
export { buildExamples, parseJsonl, parseRow, alpacaPrompt, IGNORE_INDEX, ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT } from './data';
export type { DataRow, TrainingExample, ExamplesOptions, ExamplesReport, DroppedCounts } from './data';
export { Adam, AdamW, saveOptimizerState, loadOptimizerState } from './optim';
export { LambdaLR, getLinearScheduleWithWarmup, getCosineScheduleWithWarmup, getConstantScheduleWithWarmup } from './schedule';
export type { LrLambda, LambdaLRStateDict } from './schedule';
export { Trainer, TrainerError, readCheckpoint } from './trainer';
export type {
  TrainerOptions, TrainerBatch, BatchSource, TrainData, LossFunction, LrScheduleName, TrainerStepInfo, TrainerLogInfo, TrainerEvalInfo,
  TrainerCheckpointInfo, CheckpointReason, TrainResult, TrainerErrorCode, CheckpointInfo,
} from './trainer';
export { clipGradNorm } from './nn/utils';
export type { ClipGradNormOptions } from './nn/utils';
export type { AdamOptions, AdamStateDict, ParamGroup, ParamGroupInput } from './optim';
export { backendInfo, cuda, nativeMemoryBytes } from './backend';
export type { BackendInfo, CudaInfo, CudaDeviceInfo, UnusableCudaDeviceInfo } from './backend';
export type { AddonSource, CpuInfo } from './native';
export {
  initDistributed, destroyProcessGroup, getProcessGroup, abortDistributed, allReduce, allReduceNumbers, broadcast, barrier,
  checkSameTensors, launchEnv, distributedInfo, DistributedDataParallel, DistributedSampler,
} from './distributed';
export type { DistributedOptions, DistributedBackend, ProcessGroup, ReduceOp, LaunchEnv } from './distributed';
