// Learning-rate schedules: torch.optim.lr_scheduler.LambdaLR and the warm-up schedules of Hugging
// Face transformers (get_linear_schedule_with_warmup and friends), with the same formulas, so a
// Python training recipe carries over step for step.
import { Adam } from './optim';
import { checkInt, checkKnownKeys, checkNumber, checkOptions, rangeError, typeError } from './errors';

/** The factor on each group's base learning rate at a step (0 = before the first optimiser step). */
export type LrLambda = (step: number) => number;

/** What LambdaLR.stateDict() returns and loadStateDict() takes. */
export interface LambdaLRStateDict {
  lastStep: number;
  baseLrs: number[];
}

/**
 * Sets every parameter group's lr to baseLr · lrLambda(step), as torch's LambdaLR: the constructor
 * applies step 0, and each `step()` (call it after `optimizer.step()`) moves to the next. baseLrs are
 * the groups' learning rates when the schedule is made.
 */
export class LambdaLR {
  readonly optimizer: Adam;
  readonly baseLrs: number[];
  /** The step whose learning rates are set now (0 after construction). */
  lastStep = -1;
  private readonly lambdas: LrLambda[];
  private readonly where = 'LambdaLR';

  /** lrLambda: one function for every group, or one per group. */
  constructor(optimizer: Adam, lrLambda: LrLambda | LrLambda[]) {
    const where = this.where;
    checkOptimizer(where, optimizer);
    const groups = optimizer.paramGroups.length;
    const lambdas = Array.isArray(lrLambda) ? lrLambda : Array.from({ length: groups }, () => lrLambda);
    if (lambdas.length !== groups) throw rangeError(where, 'lrLambda', `one function per parameter group (${groups})`, `${lambdas.length} functions`);
    lambdas.forEach((f, i) => {
      if (typeof f !== 'function') throw typeError(where, Array.isArray(lrLambda) ? `lrLambda[${i}]` : 'lrLambda', 'a function (step) => factor', f);
    });
    this.optimizer = optimizer;
    this.lambdas = lambdas;
    this.baseLrs = optimizer.paramGroups.map((g) => g.lr);
    this.advance(where);
  }

  /** Moves to the next step and sets the groups' learning rates for it. */
  step(): void {
    this.advance(`${this.where}.step`);
  }

  /** step() for the constructor and loadStateDict too, whose names a bad factor's error carries. */
  private advance(where: string): void {
    const next = this.lastStep + 1;
    // Every factor is checked before any group changes.
    const lrs = this.lambdas.map((f, i) => {
      const factor = f(next);
      if (typeof factor !== 'number' || !Number.isFinite(factor) || factor < 0) {
        throw rangeError(where, `the factor for group ${i} at step ${next}`, 'a finite number >= 0', factor);
      }
      return this.baseLrs[i] * factor;
    });
    this.lastStep = next;
    lrs.forEach((lr, i) => {
      this.optimizer.paramGroups[i].lr = lr;
    });
  }

  /** The learning rates set now, one per group. */
  getLastLr(): number[] {
    return this.optimizer.paramGroups.map((g) => g.lr);
  }

  stateDict(): LambdaLRStateDict {
    return { lastStep: this.lastStep, baseLrs: [...this.baseLrs] };
  }

  /** Restores stateDict() output (for checkpoints) and sets that step's learning rates. */
  loadStateDict(sd: LambdaLRStateDict): void {
    const where = `${this.where}.loadStateDict`;
    if (sd === null || typeof sd !== 'object' || !Array.isArray(sd.baseLrs)) throw typeError(where, 'stateDict', 'the object returned by stateDict()', sd);
    checkInt(where, 'stateDict.lastStep', sd.lastStep);
    if (sd.baseLrs.length !== this.baseLrs.length) throw rangeError(where, 'stateDict.baseLrs', `${this.baseLrs.length} learning rates (one per group)`, sd.baseLrs);
    sd.baseLrs.forEach((lr, i) => {
      checkNumber(where, `stateDict.baseLrs[${i}]`, lr);
      if (lr <= 0) throw rangeError(where, `stateDict.baseLrs[${i}]`, 'a number > 0', lr);
    });
    const saved = { lastStep: this.lastStep, baseLrs: [...this.baseLrs] };
    sd.baseLrs.forEach((lr, i) => {
      this.baseLrs[i] = lr;
    });
    this.lastStep = sd.lastStep - 1;
    try {
      this.advance(where);
    } catch (e) {
      saved.baseLrs.forEach((lr, i) => {
        this.baseLrs[i] = lr;
      });
      this.lastStep = saved.lastStep;
      throw e;
    }
  }
}

function checkOptimizer(where: string, optimizer: unknown): void {
  if (!(optimizer instanceof Adam)) throw typeError(where, 'optimizer', 'an Adam or AdamW optimiser', optimizer);
}

/** The optimiser and options of a warm-up schedule, checked under its name (before LambdaLR sees them). */
function checkSteps(where: string, optimizer: unknown, options: unknown, needsTotal: boolean): { warmup: number; total: number; cycles: number } {
  checkOptimizer(where, optimizer);
  const o = checkOptions(where, options);
  checkKnownKeys(where, o, needsTotal ? ['numWarmupSteps', 'numTrainingSteps', 'numCycles'] : ['numWarmupSteps']);
  const warmup = o.numWarmupSteps === undefined ? 0 : checkInt(where, 'options.numWarmupSteps', o.numWarmupSteps);
  let total = 0;
  if (needsTotal) {
    if (o.numTrainingSteps === undefined) throw typeError(where, 'options.numTrainingSteps', 'an integer (the number of optimiser steps of the run)', undefined);
    total = checkInt(where, 'options.numTrainingSteps', o.numTrainingSteps, 1);
    if (warmup > total) throw rangeError(where, 'options.numWarmupSteps', `at most numTrainingSteps (${total})`, warmup);
  }
  const cycles = o.numCycles === undefined ? 0.5 : checkNumber(where, 'options.numCycles', o.numCycles);
  if (cycles <= 0) throw rangeError(where, 'options.numCycles', 'a number > 0', cycles);
  return { warmup, total, cycles };
}

/** Linear warm-up from 0 over numWarmupSteps, then linear decay to 0 at numTrainingSteps (transformers' get_linear_schedule_with_warmup). */
export function getLinearScheduleWithWarmup(optimizer: Adam, options: { numWarmupSteps?: number; numTrainingSteps: number }): LambdaLR {
  const where = 'getLinearScheduleWithWarmup';
  const { warmup, total } = checkSteps(where, optimizer, options, true);
  return new LambdaLR(optimizer, (s) => {
    if (s < warmup) return s / Math.max(1, warmup);
    return Math.max(0, (total - s) / Math.max(1, total - warmup));
  });
}

/**
 * Linear warm-up, then a cosine decay (transformers' get_cosine_schedule_with_warmup): numCycles is
 * the number of cosine waves after the warm-up, 0.5 (the default) being one half-wave from the base
 * rate down to 0 at numTrainingSteps.
 */
export function getCosineScheduleWithWarmup(optimizer: Adam, options: { numWarmupSteps?: number; numTrainingSteps: number; numCycles?: number }): LambdaLR {
  const where = 'getCosineScheduleWithWarmup';
  const { warmup, total, cycles } = checkSteps(where, optimizer, options, true);
  return new LambdaLR(optimizer, (s) => {
    if (s < warmup) return s / Math.max(1, warmup);
    const progress = (s - warmup) / Math.max(1, total - warmup);
    return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
  });
}

/** Linear warm-up over numWarmupSteps, then the base rate (transformers' get_constant_schedule_with_warmup). */
export function getConstantScheduleWithWarmup(optimizer: Adam, options?: { numWarmupSteps?: number }): LambdaLR {
  const where = 'getConstantScheduleWithWarmup';
  const { warmup } = checkSteps(where, optimizer, options, false);
  return new LambdaLR(optimizer, (s) => (s < warmup ? s / Math.max(1, warmup) : 1));
}
