// Training examples from the data shapes people have: chat conversations
// ({"messages": [...]}, rendered with the checkpoint's chat template),
// prompt/completion pairs, Alpaca instructions and plain text. Labels follow
// TRL's completion-only training: the loss is taken on assistant turns and
// completions only, every other position is -100 (PyTorch's ignore_index).
import type { ChatMessage, Tokenizer } from './tokenizer';
import { checkBool, checkInt, checkKnownKeys, checkNumber, checkOptions, describe, rangeError, typeError } from './errors';

/** The label of a position that takes no loss (torch.nn.CrossEntropyLoss's default ignore_index). */
export const IGNORE_INDEX = -100;

/** Stanford Alpaca's prompt for an instruction with an input (its train.py PROMPT_DICT["prompt_input"]). */
export const ALPACA_PROMPT_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:';
/** Stanford Alpaca's prompt for an instruction without input (PROMPT_DICT["prompt_no_input"]). */
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:';

/** The Alpaca prompt of an instruction (an empty input uses the no-input prompt, as Stanford Alpaca does). */
export function alpacaPrompt(instruction: string, input = ''): string {
  // Function replacers: "$&" and the like in the data stay as they are.
  return input === ''
    ? ALPACA_PROMPT_NO_INPUT.replace('{instruction}', () => instruction)
    : ALPACA_PROMPT_INPUT.replace('{instruction}', () => instruction).replace('{input}', () => input);
}

/** A data row, classified. */
export type DataRow =
  | { kind: 'messages'; messages: ChatMessage[] }
  | { kind: 'chat-prompt-completion'; prompt: ChatMessage[]; completion: ChatMessage[] }
  | { kind: 'prompt-completion'; prompt: string; completion: string }
  | { kind: 'alpaca'; instruction: string; input: string; output: string }
  | { kind: 'text'; text: string };

const SHAPES = '{"messages": [{"role", "content"}, ...]}, {"prompt", "completion"}, {"instruction", "input", "output"} or {"text"}';

function what(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v;
}

function checkMessages(where: string, key: string, v: unknown): ChatMessage[] {
  if (!Array.isArray(v)) throw new TypeError(`${where}: "${key}" must be an array of {"role", "content"} messages, got ${what(v)}`);
  v.forEach((m, i) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) {
      throw new TypeError(`${where}: "${key}"[${i}] must be a {"role", "content"} object, got ${what(m)}`);
    }
    const o = m as Record<string, unknown>;
    if (typeof o.role !== 'string') throw new TypeError(`${where}: "${key}"[${i}].role must be a string, got ${what(o.role)}`);
    if (!('content' in o)) throw new TypeError(`${where}: "${key}"[${i}] (role ${JSON.stringify(o.role)}) has no "content"`);
  });
  return v as ChatMessage[];
}

/**
 * Classifies one parsed row; `where` names it in errors (e.g. "data.jsonl line 7").
 * Keys other than the shape's own are ignored (datasets carry ids and metadata).
 */
export function parseRow(row: unknown, where = 'row'): DataRow {
  if (row === null || typeof row !== 'object' || Array.isArray(row)) {
    throw new TypeError(`${where}: expected a JSON object, one of ${SHAPES}; got ${what(row)}`);
  }
  const o = row as Record<string, unknown>;
  const str = (k: string): string => {
    if (typeof o[k] !== 'string') throw new TypeError(`${where}: "${k}" must be a string, got ${what(o[k])}`);
    return o[k] as string;
  };
  const has = (k: string) => k in o;
  const shapes = [has('messages'), has('prompt') || has('completion'), has('instruction') || has('output'), has('text')].filter(Boolean).length;
  if (shapes > 1) {
    throw new TypeError(`${where}: mixes the keys of several shapes (${Object.keys(o).map((k) => JSON.stringify(k)).join(', ')}); give one of ${SHAPES}`);
  }
  if (has('messages')) return { kind: 'messages', messages: checkMessages(where, 'messages', o.messages) };
  if (has('prompt') || has('completion')) {
    if (!has('prompt') || !has('completion')) {
      throw new TypeError(`${where}: has "${has('prompt') ? 'prompt' : 'completion'}" without "${has('prompt') ? 'completion' : 'prompt'}"; give both`);
    }
    // TRL's conversational prompt-completion: both are message lists.
    if (Array.isArray(o.prompt) || Array.isArray(o.completion)) {
      return { kind: 'chat-prompt-completion', prompt: checkMessages(where, 'prompt', o.prompt), completion: checkMessages(where, 'completion', o.completion) };
    }
    return { kind: 'prompt-completion', prompt: str('prompt'), completion: str('completion') };
  }
  if (has('instruction') || has('output')) {
    if (!has('instruction') || !has('output')) {
      throw new TypeError(`${where}: has "${has('instruction') ? 'instruction' : 'output'}" without "${has('instruction') ? 'output' : 'instruction'}"; an Alpaca row needs "instruction" and "output" ("input" may be empty or absent)`);
    }
    const input = has('input') && o.input !== null ? str('input') : '';
    return { kind: 'alpaca', instruction: str('instruction'), input, output: str('output') };
  }
  if (has('text')) return { kind: 'text', text: str('text') };
  const keys = Object.keys(o);
  throw new TypeError(`${where}: unknown row shape (${keys.length ? `keys ${keys.map((k) => JSON.stringify(k)).join(', ')}` : 'an empty object'}); expected ${SHAPES}`);
}

/**
 * Parses JSON Lines text into row objects with their 1-based line numbers (for
 * buildExamples' `lines`); blank lines are skipped, a line that is not JSON or
 * not a known shape is an error naming it.
 */
export function parseJsonl(text: string, name = 'data'): { rows: Record<string, unknown>[]; lines: number[] } {
  if (typeof text !== 'string') throw typeError('parseJsonl', 'text', 'a string', text);
  const rows: Record<string, unknown>[] = [];
  const lines: number[] = [];
  text.replace(/^\uFEFF/, '').split(/\r?\n/).forEach((l, i) => {
    if (l.trim() === '') return;
    const where = `${name} line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch (e) {
      throw new SyntaxError(`${where}: not valid JSON (${(e as Error).message}); each line must be one JSON object, one of ${SHAPES}`);
    }
    parseRow(v, where);
    rows.push(v as Record<string, unknown>);
    lines.push(i + 1);
  });
  return { rows, lines };
}

/** One training example: `labels[t]` is `ids[t]` where the loss is taken, else -100. */
export interface TrainingExample {
  ids: number[];
  labels: number[];
  /** The source line (or 1-based row number) it came from. */
  line: number;
}

/** Why rows were left out. */
export interface DroppedCounts {
  /** Conversations without an assistant turn (nothing to train on). */
  noAssistantTurn: number;
  /** Rows under 2 tokens (no next token to predict). */
  tooShort: number;
  /** Rows whose every trained token lay beyond maxLength. */
  noTargetsAfterTruncation: number;
}

export interface ExamplesReport {
  rows: number;
  kept: number;
  /** Kept rows cut to maxLength. */
  truncated: number;
  dropped: DroppedCounts;
  /** Tokens of the kept examples, and those that carry a loss (labels other than -100 after position 0). */
  tokens: number;
  targets: number;
  /** Tokens the tokenizer mapped to its unknown token, over all rows before truncation. */
  unknownTokens: number;
  /** About how many non-space characters the tokenizer dropped without a token (a tokenizer without unk_token). */
  droppedCharacters: number;
  /** Tokens over all rows before truncation. */
  totalTokens: number;
  /** Conversations whose template rewrites earlier turns, their assistant tokens found by content. */
  foundByContent: number;
  /** Prompt/completion rows whose prompt alone tokenizes differently from the start of the whole (TRL's mismatch warning). */
  promptMismatches: number;
  /** Human-readable warnings (unknown tokens, truncation), for the caller to print. */
  warnings: string[];
}

export interface ExamplesOptions {
  /** Keep at most this many tokens of a row (the rest is cut off, as TRL's max_length keeps the start). */
  maxLength?: number;
  /** Append EOS to text, completion and Alpaca rows unless they end with it (TRL's SFT and Stanford Alpaca do). Default true. */
  addEos?: boolean;
  /** A named chat template or a template text, as applyChatTemplate's chatTemplate. */
  chatTemplate?: string;
  /** Extra chat template variables. */
  templateVariables?: Record<string, unknown>;
  /** Warn when more than this share of the tokens is unknown to the tokenizer. Default 0.05. */
  unknownWarnShare?: number;
  /** Source line of each row (from parseJsonl), for messages; default the 1-based row number. */
  lines?: number[];
  /** Names the data in messages. Default "data". */
  name?: string;
}

/** Length of the common prefix of two id lists. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function nonSpace(s: string): number {
  let n = 0;
  for (const ch of s) if (!/\s/u.test(ch)) n++;
  return n;
}

const SPECIAL_TEXTS = new WeakMap<object, string[]>();

/** The texts of the tokenizer's special added tokens, longest first. */
function specialTexts(tok: Tokenizer): string[] {
  let list = SPECIAL_TEXTS.get(tok);
  if (!list) {
    const added = (tok as unknown as { get_added_tokens_decoder?: () => Map<number, { content: string; special: boolean }> }).get_added_tokens_decoder?.();
    list = added ? [...added.values()].filter((t) => t.special && t.content !== '').map((t) => t.content).sort((a, b) => b.length - a.length) : [];
    SPECIAL_TEXTS.set(tok, list);
  }
  return list;
}

interface Encoded { ids: number[]; unknown: number; droppedChars: number }

/**
 * Encodes `text`; ids the tokenizer leaves unmapped become its unknown token
 * (or an error without one), and unknown and silently dropped characters are counted.
 */
function encodeChecked(tok: Tokenizer, text: string, addSpecial: boolean, where: string): Encoded {
  const enc = tok.encode(text, { add_special_tokens: addSpecial });
  const unk = tok.unkTokenId;
  let unknown = 0;
  const ids = enc.ids.map((raw, i) => {
    const id = raw as unknown;
    if (typeof id === 'number' && Number.isInteger(id)) {
      if (id === unk) unknown++;
      return id;
    }
    if (unk === null) throw new Error(`${where}: the tokenizer has no id for ${describe(enc.tokens[i])} and no unknown token to stand for it`);
    unknown++;
    return unk;
  });
  // What the known tokens decode to against the text, special tokens left out of both.
  const known = ids.filter((id) => id !== unk);
  const decoded = tok.decode(known, { skip_special_tokens: true });
  let plain = text;
  for (const sp of specialTexts(tok)) plain = plain.split(sp).join(' ');
  const droppedChars = Math.max(0, nonSpace(plain) - nonSpace(decoded) - unknown);
  return { ids, unknown, droppedChars };
}

type Built = { ids: number[]; labels: number[]; unknown: number; droppedChars: number; byContent?: boolean; promptMismatch?: boolean } | { skip: keyof DroppedCounts };

/**
 * Assistant spans of a conversation as character ranges of its rendering, turn by turn; for a
 * template that renders earlier turns differently once later turns follow, by their content.
 */
function chatSpans(tok: Tokenizer, messages: ChatMessage[], trainFrom: number | null, o: ExamplesOptions, where: string): { text: string; spans: [number, number][]; byContent: boolean } {
  const render = (m: ChatMessage[], gen: boolean): string => {
    try {
      return tok.applyChatTemplate(m, { addGenerationPrompt: gen, chatTemplate: o.chatTemplate, templateVariables: o.templateVariables });
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  };
  const text = render(messages, false);
  const spans: [number, number][] = [];
  // A turn's tokens: what rendering the turn adds to the rendering of the messages before it
  // with the generation prompt (its content and end-of-turn token, e.g. "...<|im_end|>\n").
  const turns = trainFrom === null
    ? messages.map((m, i) => (m.role === 'assistant' ? i : -1)).filter((i) => i >= 0)
    : [trainFrom];
  for (const i of turns) {
    const before = render(messages.slice(0, i), true);
    const upTo = trainFrom === null ? render(messages.slice(0, i + 1), false) : text;
    if (!upTo.startsWith(before) || !text.startsWith(upTo)) return { text, spans: spansByContent(tok, messages, trainFrom, text, where), byContent: true };
    spans.push([before.length, upTo.length]);
  }
  return { text, spans, byContent: false };
}

/**
 * The fallback for templates that rewrite history (Qwen3 drops the reasoning of earlier turns):
 * every message's content is looked up in the rendering in order (as it is, or trimmed, as
 * Llama 3's template writes it), and a trained turn's span is its content and the EOS text
 * (tokenizer_config.json eos_token) when that follows at once.
 */
function spansByContent(tok: Tokenizer, messages: ChatMessage[], trainFrom: number | null, text: string, where: string): [number, number][] {
  const spans: [number, number][] = [];
  const eos = tok.specialTokens.eos_token;
  let from = 0;
  messages.forEach((m, i) => {
    const trained = trainFrom === null ? m.role === 'assistant' : i >= trainFrom;
    const c = m.content;
    let at = -1;
    let needle = '';
    if (typeof c === 'string' && c.trim() !== '') {
      for (needle of [c, c.trim()]) {
        at = text.indexOf(needle, from);
        if (at >= 0) break;
      }
    }
    if (at < 0) {
      if (!trained) return;
      throw new Error(`${where}: the chat template renders earlier turns differently once later turns follow, and the content of message ${i} (${m.role}) is not in the rendering as text, so its tokens cannot be located; use prompt/completion rows or a template that renders turn by turn`);
    }
    let end = at + needle.length;
    if (trained && eos !== undefined && eos !== '' && text.startsWith(eos, end)) end += eos.length;
    if (trained) spans.push([at, end]);
    from = end;
  });
  return spans;
}

function buildRow(tok: Tokenizer, row: DataRow, o: ExamplesOptions, addEos: boolean, eosId: number | null, where: string): Built {
  const withEos = (e: Encoded, labels: number[]): Built => {
    if (addEos && eosId !== null && e.ids[e.ids.length - 1] !== eosId) {
      e.ids.push(eosId);
      labels.push(eosId);
    }
    return { ids: e.ids, labels, unknown: e.unknown, droppedChars: e.droppedChars };
  };
  switch (row.kind) {
    case 'text': {
      const e = encodeChecked(tok, row.text, true, where);
      return withEos(e, e.ids.slice());
    }
    case 'prompt-completion':
    case 'alpaca': {
      const prompt = row.kind === 'alpaca' ? alpacaPrompt(row.instruction, row.input) : row.prompt;
      const completion = row.kind === 'alpaca' ? row.output : row.completion;
      // As TRL and Stanford Alpaca: tokenize prompt + completion whole, and leave out of the
      // loss the tokens the prompt alone tokenizes to.
      const e = encodeChecked(tok, prompt + completion, true, where);
      const p = tok.encode(prompt, { add_special_tokens: true }).ids as number[];
      // TRL masks len(prompt_ids) tokens even when they are not a prefix (a token merged across the
      // boundary), warning about the mismatch; so do we, counting it.
      const k = Math.min(p.length, e.ids.length);
      const built = withEos(e, e.ids.map((id, t) => (t < k ? IGNORE_INDEX : id)));
      return commonPrefix(p, e.ids) < p.length ? { ...built, promptMismatch: true } : built;
    }
    case 'messages':
    case 'chat-prompt-completion': {
      const messages = row.kind === 'messages' ? row.messages : [...row.prompt, ...row.completion];
      const trainFrom = row.kind === 'messages' ? null : row.prompt.length;
      if (trainFrom === null ? !messages.some((m) => m.role === 'assistant') : row.kind === 'chat-prompt-completion' && row.completion.length === 0) {
        return { skip: 'noAssistantTurn' };
      }
      const { text, spans, byContent } = chatSpans(tok, messages, trainFrom, o, where);
      const e = encodeChecked(tok, text, false, where);
      const labels = new Array<number>(e.ids.length).fill(IGNORE_INDEX);
      for (const [a, b] of spans) {
        // Token boundaries from the tokenization of the text before each boundary.
        const ka = commonPrefix(tok.encode(text.slice(0, a), { add_special_tokens: false }).ids as number[], e.ids);
        const kb = b === text.length ? e.ids.length : commonPrefix(tok.encode(text.slice(0, b), { add_special_tokens: false }).ids as number[], e.ids);
        for (let t = ka; t < kb; t++) labels[t] = e.ids[t];
      }
      return { ids: e.ids, labels, unknown: e.unknown, droppedChars: e.droppedChars, byContent };
    }
  }
}

/**
 * Turns rows (parsed JSON objects) into training examples with
 * completion-only labels, truncated to `maxLength`, and reports what was
 * truncated, dropped and why, and how much of the text the tokenizer did not know.
 */
export function buildExamples(rows: readonly unknown[], tokenizer: Tokenizer, options?: ExamplesOptions): { examples: TrainingExample[]; report: ExamplesReport } {
  const where = 'buildExamples';
  if (!Array.isArray(rows)) throw typeError(where, 'rows', 'an array of rows', rows);
  if (tokenizer === null || typeof tokenizer !== 'object' || typeof (tokenizer as Tokenizer).applyChatTemplate !== 'function') {
    throw typeError(where, 'tokenizer', 'a Tokenizer (loadTokenizer)', tokenizer);
  }
  const o = checkOptions(where, options) as ExamplesOptions;
  checkKnownKeys(where, o as Record<string, unknown>, ['maxLength', 'addEos', 'chatTemplate', 'templateVariables', 'unknownWarnShare', 'lines', 'name']);
  const maxLength = o.maxLength === undefined ? Infinity : checkInt(where, 'maxLength', o.maxLength, 2);
  const addEos = o.addEos === undefined ? true : checkBool(where, 'addEos', o.addEos);
  const share = o.unknownWarnShare === undefined ? 0.05 : checkNumber(where, 'unknownWarnShare', o.unknownWarnShare);
  if (share < 0 || share > 1) throw rangeError(where, 'unknownWarnShare', 'a number in [0, 1]', share);
  if (o.lines !== undefined && (!Array.isArray(o.lines) || o.lines.length !== rows.length)) {
    throw typeError(where, 'lines', `an array of ${rows.length} line numbers (one per row)`, o.lines);
  }
  const name = o.name ?? 'data';
  const eosText = tokenizer.specialTokens.eos_token;
  const eosId = eosText === undefined ? null : tokenizer.token_to_id(eosText) ?? null;
  const report: ExamplesReport = {
    rows: rows.length, kept: 0, truncated: 0, dropped: { noAssistantTurn: 0, tooShort: 0, noTargetsAfterTruncation: 0 },
    tokens: 0, targets: 0, unknownTokens: 0, droppedCharacters: 0, totalTokens: 0, foundByContent: 0, promptMismatches: 0, warnings: [],
  };
  const examples: TrainingExample[] = [];
  rows.forEach((raw, r) => {
    const line = o.lines ? o.lines[r] : r + 1;
    const at = o.lines ? `${name} line ${line}` : `${name} row ${line}`;
    const row = parseRow(raw, at);
    const built = buildRow(tokenizer, row, o, addEos, eosId, at);
    if ('skip' in built) {
      report.dropped[built.skip]++;
      return;
    }
    if (built.byContent) report.foundByContent++;
    if (built.promptMismatch) report.promptMismatches++;
    report.unknownTokens += built.unknown;
    report.droppedCharacters += built.droppedChars;
    report.totalTokens += built.ids.length;
    let { ids, labels } = built;
    const cut = ids.length > maxLength;
    if (cut) {
      ids = ids.slice(0, maxLength);
      labels = labels.slice(0, maxLength);
    }
    // Position t - 1 predicts labels[t]: at least one label after position 0.
    if (ids.length < 2) {
      report.dropped.tooShort++;
      return;
    }
    const targets = labels.slice(1).filter((l) => l !== IGNORE_INDEX).length;
    if (targets === 0) {
      report.dropped.noTargetsAfterTruncation++;
      return;
    }
    if (cut) report.truncated++;
    report.kept++;
    report.tokens += ids.length;
    report.targets += targets;
    examples.push({ ids, labels, line });
  });
  const unknown = report.unknownTokens + report.droppedCharacters;
  const total = report.totalTokens + report.droppedCharacters;
  if (total > 0 && unknown / total > share) {
    report.warnings.push(`${name}: ${(100 * unknown / total).toFixed(1)}% of the text is unknown to the tokenizer (${report.unknownTokens} unknown tokens, ${report.droppedCharacters} characters dropped without a token); the model cannot learn it — check that the tokenizer belongs to the model and suits the data`);
  }
  if (report.foundByContent > 0) {
    report.warnings.push(`${name}: the chat template renders earlier turns differently once later turns follow (${report.foundByContent} conversations); their assistant tokens were found by their content (content and EOS trained, as rendered in the whole conversation)`);
  }
  if (report.promptMismatches > 0) {
    report.warnings.push(`${name}: in ${report.promptMismatches} rows the prompt alone tokenizes differently from the start of prompt + completion (a token spans the boundary); the loss starts after as many tokens as the prompt alone has, as in TRL — end prompts at a space or newline to avoid it`);
  }
  if (report.truncated > 0) report.warnings.push(`${name}: ${report.truncated} of ${report.rows} rows were cut to maxLength ${maxLength}`);
  const d = report.dropped;
  const reasons = [
    d.noAssistantTurn ? `${d.noAssistantTurn} without an assistant turn` : '',
    d.tooShort ? `${d.tooShort} under 2 tokens` : '',
    d.noTargetsAfterTruncation ? `${d.noTargetsAfterTruncation} with nothing to train on within maxLength ${maxLength}` : '',
  ].filter(Boolean);
  if (reasons.length) report.warnings.push(`${name}: ${rows.length - report.kept} of ${report.rows} rows were dropped: ${reasons.join(', ')}`);
  return { examples, report };
}
