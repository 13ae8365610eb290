// Chat templates and training data: Qwen2's and Llama 3's chat templates (and a ChatML
// chat_template.jinja) rendered against Jinja2's output in transformers' environment, with the
// assistant characters written out by hand (test/fixtures/chat-templates.json, from
// test/fixtures/generate_chat.py); completion-only labels checked token by token; bad input.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadTokenizer, Tokenizer, ChatMessage } from '../lib/tokenizer';
import { ALPACA_PROMPT_INPUT, IGNORE_INDEX, alpacaPrompt, buildExamples, parseJsonl } from '../lib/data';
import { expectThrows } from './helpers/expect-throws';

interface Case { template: string; messages: ChatMessage[]; add_generation_prompt: boolean; expected: string; mask: string }
const FIX = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'chat-templates.json'), 'utf8')) as {
  special_tokens: Record<string, string>;
  templates: Record<string, string>;
  cases: Case[];
  rewrite_cases: Case[];
  raising: { template: string; messages: ChatMessage[]; error: string };
};

// A character-level tokenizer: printable ASCII and "\n" one token each, the special tokens of
// both formats as added tokens, "<unk>" for anything else, BOS added by the post-processor.
const CHARS = [...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)), '\n'];
const SPECIALS = ['<unk>', '<|begin_of_text|>', '<|im_start|>', '<|im_end|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>', '<|endoftext|>'];
const VOCAB: Record<string, number> = Object.fromEntries([...CHARS, ...SPECIALS].map((t, i) => [t, i]));
const UNK = VOCAB['<unk>'];
const BOS = VOCAB['<|begin_of_text|>'];
const EOS = VOCAB['<|im_end|>'];

function tokenizerJson(unk: string | null = '<unk>', merges: [string, string][] = []): object {
  const vocab = { ...VOCAB };
  merges.forEach(([a, b], i) => { vocab[a + b] = Object.keys(VOCAB).length + i; });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: SPECIALS.map((content) => ({ id: VOCAB[content], content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null, pre_tokenizer: null, decoder: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [BOS], tokens: ['<|begin_of_text|>'] } },
    },
    model: { type: 'BPE', dropout: null, unk_token: unk, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

function makeTokenizer(chatTemplate?: unknown, extra: Record<string, unknown> = {}): Tokenizer {
  return new Tokenizer(tokenizerJson(), { ...FIX.special_tokens, ...(chatTemplate === undefined ? {} : { chat_template: chatTemplate }), ...extra });
}

/** The ids of `text` and the index of each token's first character, by walking it (no tokenizer). */
function walk(text: string): { ids: number[]; starts: number[] } {
  const ids: number[] = [];
  const starts: number[] = [];
  for (let i = 0; i < text.length;) {
    const sp = SPECIALS.find((s) => text.startsWith(s, i));
    starts.push(i);
    if (sp) {
      ids.push(VOCAB[sp]);
      i += sp.length;
    } else {
      ids.push(VOCAB[text[i]] ?? UNK);
      i += 1;
    }
  }
  return { ids, starts };
}

describe('applyChatTemplate', () => {
  test.each(FIX.cases.map((c) => [`${c.template} ${c.messages.length} messages${c.add_generation_prompt ? ' + generation prompt' : ''}`, c] as const))(
    '%s renders as Jinja2 does', (_, c) => {
      const tok = makeTokenizer(FIX.templates[c.template]);
      expect(tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt })).toBe(c.expected);
      // Token ids: the template writes BOS itself; none is added on top.
      expect(tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt, tokenize: true })).toEqual(walk(c.expected).ids);
    });

  test('addGenerationPrompt defaults to false; the special tokens are the config\'s (string or AddedToken object)', () => {
    const tok = makeTokenizer('{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}|{{ add_generation_prompt }}|{{ messages | length }}',
      { bos_token: { content: '<s>', lstrip: false }, additional_special_tokens: ['<x>'] });
    expect(tok.applyChatTemplate([{ role: 'user', content: 'a' }])).toBe('<s>|<|im_end|>|<|endoftext|>|<unk>|false|1');
    expect(tok.specialTokens).toEqual({ bos_token: '<s>', eos_token: '<|im_end|>', pad_token: '<|endoftext|>', unk_token: '<unk>', additional_special_tokens: ['<x>'] });
    expect(tok.unkTokenId).toBe(UNK);
  });

  test('named templates: "default" unless one is chosen by name; template variables reach the template', () => {
    const tok = makeTokenizer([{ name: 'default', template: FIX.templates.qwen2 }, { name: 'llama', template: FIX.templates.llama3 }, { name: 'v', template: '{{ x }}' }]);
    const c = FIX.cases.find((k) => k.template === 'llama3') as Case;
    const q = FIX.cases.find((k) => k.template === 'qwen2' && k.messages === FIX.cases.find((j) => j.template === 'qwen2')?.messages) as Case;
    expect(tok.applyChatTemplate(q.messages, { addGenerationPrompt: q.add_generation_prompt })).toBe(q.expected);
    expect(tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt, chatTemplate: 'llama' })).toBe(c.expected);
    expect(tok.applyChatTemplate([], { chatTemplate: 'v', templateVariables: { x: 'seven' } })).toBe('seven');
    // With tools, transformers picks the "tool_use" template when there is one.
    const tools = makeTokenizer([{ name: 'default', template: 'plain' }, { name: 'tool_use', template: '{{ tools[0].name }}|{{ documents | length }}' }]);
    expect(tools.applyChatTemplate([], { tools: [{ name: 'search' }], documents: [1, 2] })).toBe('search|2');
    expect(tools.applyChatTemplate([])).toBe('plain');
    expect(tok.chatTemplate).toBe(FIX.templates.qwen2);
  });

  test('loadTokenizer reads chat_template.jinja, which takes precedence over tokenizer_config.json', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-template-'));
    try {
      fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson()));
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...FIX.special_tokens, chat_template: FIX.templates.llama3 }));
      let tok = await loadTokenizer(dir);
      const l = FIX.cases.find((k) => k.template === 'llama3') as Case;
      expect(tok.applyChatTemplate(l.messages, { addGenerationPrompt: l.add_generation_prompt })).toBe(l.expected);
      fs.writeFileSync(path.join(dir, 'chat_template.jinja'), FIX.templates.chatml_file);
      tok = await loadTokenizer(dir);
      for (const c of FIX.cases.filter((k) => k.template === 'chatml_file')) {
        expect(tok.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt })).toBe(c.expected);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a template that fails to render, fails to parse, or is missing is a clear error', () => {
    const r = FIX.raising;
    const tok = makeTokenizer(FIX.templates[r.template]);
    expectThrows(() => tok.applyChatTemplate(r.messages), Error, new RegExp(`failed to render these 2 messages: ${r.error}`));
    expectThrows(() => makeTokenizer('{% for m in messages %}').applyChatTemplate([]), Error, /applyChatTemplate: the chat template (could not be parsed|failed to render)/);
    expectThrows(() => makeTokenizer().applyChatTemplate([]), Error, /this tokenizer has no chat template/);
    expectThrows(() => makeTokenizer([{ name: 'tool_use', template: 'x' }]).applyChatTemplate([]), Error, /named templates: tool_use/);
    expectThrows(() => tok.applyChatTemplate([], { chatTemplate: 'nope' }), RangeError, /chatTemplate must be one of the tokenizer's templates \("default"\)/);
    expectThrows(() => tok.applyChatTemplate({} as unknown as ChatMessage[]), TypeError, /messages must be an array/);
    expectThrows(() => tok.applyChatTemplate([{ content: 'x' } as unknown as ChatMessage]), TypeError, /messages\[0\]\.role must be a string/);
    expectThrows(() => tok.applyChatTemplate([], { addGenerationPrompt: 1 as unknown as boolean }), TypeError, /addGenerationPrompt must be a boolean/);
    expectThrows(() => tok.applyChatTemplate([], { add_generation_prompt: true } as never), TypeError, /unknown option "add_generation_prompt"/);
    expectThrows(() => makeTokenizer(5), TypeError, /chat_template must be a string or a list/);
  });
});

describe('buildExamples', () => {
  /** Labels from the fixture's hand-written character mask: a token is trained when its first character is. */
  function expectedLabels(text: string, mask: string): { ids: number[]; labels: number[] } {
    const { ids, starts } = walk(text);
    return { ids, labels: ids.map((id, t) => (mask[starts[t]] === '1' ? id : IGNORE_INDEX)) };
  }

  test.each(FIX.cases.filter((c) => !c.add_generation_prompt && c.messages.some((m) => m.role === 'assistant'))
    .map((c) => [`${c.template} ${c.messages.length} messages`, c] as const))(
    '%s: labels only on the assistant turns, token by token', (_, c) => {
      const tok = makeTokenizer(FIX.templates[c.template]);
      const { examples, report } = buildExamples([{ messages: c.messages, id: 'extra keys are ignored' }], tok);
      const want = expectedLabels(c.expected, c.mask);
      expect(examples).toHaveLength(1);
      expect(examples[0].ids).toEqual(want.ids);
      expect(examples[0].labels).toEqual(want.labels);
      expect(report.kept).toBe(1);
      expect(report.targets).toBe(want.labels.filter((l) => l !== IGNORE_INDEX).length);
      expect(report.warnings).toEqual([]);
    });

  test('conversational prompt/completion: loss on the completion messages only', () => {
    const c = FIX.cases.find((k) => k.template === 'qwen2' && k.messages.length === 5 && !k.add_generation_prompt) as Case;
    const tok = makeTokenizer(FIX.templates.qwen2);
    const { examples } = buildExamples([{ prompt: c.messages.slice(0, 4), completion: c.messages.slice(4) }], tok);
    const lastOnly = c.mask.slice(0, c.expected.lastIndexOf('<|im_start|>assistant\n') + '<|im_start|>assistant\n'.length).replace(/1/g, '0');
    const want = expectedLabels(c.expected, lastOnly + c.mask.slice(lastOnly.length));
    expect(examples[0].ids).toEqual(want.ids);
    expect(examples[0].labels).toEqual(want.labels);
    expect(want.labels.slice(0, 60).every((l) => l === IGNORE_INDEX)).toBe(true);
  });

  test('prompt/completion, Alpaca and text rows: BOS from the tokenizer, EOS appended, loss after the prompt', () => {
    const tok = makeTokenizer();
    const prompt = 'Q: 1+1?\nA:';
    const { examples, report } = buildExamples([
      { prompt, completion: ' 2' },
      { instruction: 'Add.', input: '1 and 1', output: '2' },
      { instruction: 'Say hi.', output: 'hi', input: '' },
      { text: 'plain' },
    ], tok);
    const ids0 = [BOS, ...walk(prompt + ' 2').ids, EOS];
    expect(examples[0].ids).toEqual(ids0);
    expect(examples[0].labels).toEqual(ids0.map((id, t) => (t <= prompt.length ? IGNORE_INDEX : id)));
    // Stanford Alpaca's prompts, written out.
    const p1 = 'Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n1 and 1\n\n### Response:';
    const p2 = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:';
    expect(alpacaPrompt('Add.', '1 and 1')).toBe(p1);
    expect(alpacaPrompt('Say hi.')).toBe(p2);
    expect(alpacaPrompt('$& $1', '$`')).toBe(ALPACA_PROMPT_INPUT.replace('{instruction}', '$$& $$1').replace('{input}', '$$`'));
    for (const [ex, p, out] of [[examples[1], p1, '2'], [examples[2], p2, 'hi']] as const) {
      const ids = [BOS, ...walk(p + out).ids, EOS];
      expect(ex.ids).toEqual(ids);
      expect(ex.labels).toEqual(ids.map((id, t) => (t <= p.length ? IGNORE_INDEX : id)));
    }
    const ids3 = [BOS, ...walk('plain').ids, EOS];
    expect(examples[3].ids).toEqual(ids3);
    expect(examples[3].labels).toEqual(ids3);
    expect(report).toMatchObject({ rows: 4, kept: 4, truncated: 0, dropped: { noAssistantTurn: 0, tooShort: 0, noTargetsAfterTruncation: 0 } });
    // addEos: false leaves EOS out; a text that ends with EOS gets no second one.
    expect(buildExamples([{ text: 'ab' }], tok, { addEos: false }).examples[0].ids).toEqual([BOS, VOCAB.a, VOCAB.b]);
    expect(buildExamples([{ text: 'ab<|im_end|>' }], tok).examples[0].ids).toEqual([BOS, VOCAB.a, VOCAB.b, EOS]);
  });

  test('a prompt that tokenizes differently alone: the loss starts after as many tokens as it has (TRL), counted', () => {
    const tok = new Tokenizer(tokenizerJson('<unk>', [['a', 'b']]), FIX.special_tokens);
    const AB = tok.token_to_id('ab') as number;
    const { examples, report } = buildExamples([{ prompt: 'xa', completion: 'b' }, { prompt: 'x ', completion: 'ab' }], tok);
    expect(examples[0].ids).toEqual([BOS, VOCAB.x, AB, EOS]);
    expect(examples[0].labels).toEqual([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, EOS]);
    expect(examples[1].labels).toEqual([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, AB, EOS]);
    expect(report.promptMismatches).toBe(1);
    expect(report.warnings.join('\n')).toMatch(/in 1 rows the prompt alone tokenizes differently/);
  });

  test('conversations without an assistant turn are counted skips; truncation and drops are reported with their reasons', () => {
    const tok = makeTokenizer(FIX.templates.qwen2);
    const c = FIX.cases.find((k) => k.template === 'qwen2' && k.messages.length === 5 && !k.add_generation_prompt) as Case;
    const firstTrained = c.mask.indexOf('1');
    const full = walk(c.expected).ids.length;
    // Cut inside the first assistant turn: kept and truncated; cut before it: dropped.
    const cutAt = walk(c.expected.slice(0, firstTrained)).ids.length + 3;
    const { examples, report } = buildExamples([
      { messages: c.messages },
      { messages: [{ role: 'user', content: 'no answer' }] },
      { messages: [] },
      { messages: c.messages },
      { text: '' },
    ], tok, { maxLength: cutAt, addEos: false });
    expect(full).toBeGreaterThan(cutAt);
    expect(examples).toHaveLength(2);
    expect(examples[0].ids).toEqual(walk(c.expected).ids.slice(0, cutAt));
    expect(examples[0].labels.filter((l) => l !== IGNORE_INDEX)).toHaveLength(3);
    expect(examples.map((e) => e.line)).toEqual([1, 4]);
    expect(report).toMatchObject({ rows: 5, kept: 2, truncated: 2, dropped: { noAssistantTurn: 2, tooShort: 1, noTargetsAfterTruncation: 0 } });
    expect(report.warnings.join('\n')).toMatch(/2 of 5 rows were cut to maxLength/);
    expect(report.warnings.join('\n')).toMatch(/3 of 5 rows were dropped: 2 without an assistant turn, 1 under 2 tokens/);
    const short = buildExamples([{ messages: c.messages }], tok, { maxLength: cutAt - 3 });
    expect(short.examples).toHaveLength(0);
    expect(short.report.dropped.noTargetsAfterTruncation).toBe(1);
    expect(short.report.truncated).toBe(0);
  });

  test('unknown tokens and characters dropped without a token are counted and warned about', () => {
    const tok = makeTokenizer();
    const clean = buildExamples([{ text: 'all known here' }], tok);
    expect(clean.report.unknownTokens).toBe(0);
    expect(clean.report.warnings).toEqual([]);
    const odd = buildExamples([{ text: 'ééé ab' }], tok);
    expect(odd.report.unknownTokens).toBe(3);
    expect(odd.examples[0].ids).toEqual([BOS, UNK, UNK, UNK, VOCAB[' '], VOCAB.a, VOCAB.b, EOS]);
    expect(odd.report.warnings.join('\n')).toMatch(/unknown to the tokenizer \(3 unknown tokens, 0 characters dropped/);
    // Without an unk_token the tokenizer drops what it does not know: counted from the decoded text.
    const noUnk = new Tokenizer(tokenizerJson(null), { ...FIX.special_tokens, unk_token: undefined });
    const lost = buildExamples([{ text: 'ééé ab' }], noUnk);
    expect(lost.examples[0].ids).toEqual([BOS, VOCAB[' '], VOCAB.a, VOCAB.b, EOS]);
    expect(lost.report.droppedCharacters).toBe(3);
    expect(lost.report.warnings.join('\n')).toMatch(/0 unknown tokens, 3 characters dropped without a token/);
    // The threshold is an option.
    expect(buildExamples([{ text: 'é' + 'a'.repeat(30) }], tok, { unknownWarnShare: 0.01 }).report.warnings).toHaveLength(1);
    expect(buildExamples([{ text: 'é' + 'a'.repeat(30) }], tok).report.warnings).toHaveLength(0);
  });

  test('ids a tokenizer leaves unmapped become its unknown token, or an error without one', () => {
    // A WordLevel model gives no id for a word it does not know; with an unk_token in the config that is the unknown token.
    const wl = (unk: string | null) => new Tokenizer({
      version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
      pre_tokenizer: { type: 'WhitespaceSplit' }, post_processor: null, decoder: null,
      model: { type: 'WordLevel', vocab: { a: 0, b: 1, '<unk>': 2 }, unk_token: unk },
    }, unk === null ? {} : { unk_token: unk });
    const { examples, report } = buildExamples([{ text: 'a zz b' }], wl('<unk>'));
    expect(examples[0].ids).toEqual([0, 2, 1]);
    expect(report.unknownTokens).toBe(1);
    expectThrows(() => buildExamples([{ text: 'a zz b' }], wl(null)), Error, /data row 1: the tokenizer has no id for "zz" and no unknown token/);
  });

  test('a template that rewrites earlier turns: assistant tokens found by content (and EOS), reported', () => {
    const c = FIX.rewrite_cases[0];
    const tok = makeTokenizer(FIX.templates.rewrite);
    const { examples, report } = buildExamples([{ messages: c.messages }, { messages: c.messages.slice(0, 3) }], tok);
    const want = expectedLabels(c.expected, c.mask);
    expect(examples[0].ids).toEqual(want.ids);
    expect(examples[0].labels).toEqual(want.labels);
    // Ending on the assistant's turn, the conversation renders turn by turn: no fallback.
    expect(report.foundByContent).toBe(1);
    expect(report.warnings.join('\n')).toMatch(/renders earlier turns differently once later turns follow \(1 conversations\)/);
  });

  test('a template whose turns cannot be located is an error naming the row', () => {
    const tok = makeTokenizer('{% for m in messages %}{{ m.role }}:{{ m.content | upper }};{% endfor %}{{ messages | length }}');
    expectThrows(() => buildExamples([{ text: 'x' }, { messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }] }], tok),
      Error, /data row 2: the chat template renders earlier turns differently once later turns follow, and the content of message 1 \(assistant\) is not in the rendering/);
    const raising = makeTokenizer(FIX.templates.chatml_file);
    expectThrows(() => buildExamples([{ messages: [{ role: 'tool', content: 'x' }, { role: 'assistant', content: 'y' }] }], raising, { name: 'chat.jsonl' }),
      Error, /chat\.jsonl row 1: applyChatTemplate: the chat template failed to render these 2 messages: Unknown role: tool/);
  });

  test('bad rows and options: errors with the line number', () => {
    const tok = makeTokenizer(FIX.templates.qwen2);
    const text = ['{"text": "a"}', '', '{"question": "q", "answer": "a"}'].join('\n');
    expectThrows(() => parseJsonl(text, 'train.jsonl'), TypeError, /train\.jsonl line 3: unknown row shape \(keys "question", "answer"\); expected \{"messages"/);
    expectThrows(() => parseJsonl('{"text": "a"}\n{"text": ', 'd.jsonl'), SyntaxError, /d\.jsonl line 2: not valid JSON/);
    expectThrows(() => parseJsonl('[1]'), TypeError, /data line 1: expected a JSON object/);
    const { rows, lines } = parseJsonl('\n{"text": "a"}\r\n\n{"prompt": "p", "completion": "c"}\n');
    expect(lines).toEqual([2, 4]);
    expect(buildExamples(rows, tok, { lines, name: 'f.jsonl' }).examples.map((e) => e.line)).toEqual([2, 4]);
    const bad: [unknown, RegExp][] = [
      [{ text: 5 }, /"text" must be a string, got number/],
      [{ prompt: 'p' }, /has "prompt" without "completion"/],
      [{ output: 'o' }, /has "output" without "instruction"/],
      [{ text: 'a', prompt: 'p', completion: 'c' }, /mixes the keys of several shapes/],
      [{ messages: 'hi' }, /"messages" must be an array/],
      [{ messages: [{ role: 'user' }] }, /"messages"\[0\] \(role "user"\) has no "content"/],
      [{ messages: [{ content: 'x' }] }, /"messages"\[0\]\.role must be a string/],
      [{ prompt: [{ role: 'user', content: 'x' }], completion: 'y' }, /"completion" must be an array/],
      [{}, /unknown row shape \(an empty object\)/],
      [null, /expected a JSON object/],
    ];
    for (const [row, re] of bad) {
      expectThrows(() => buildExamples([{ text: 'ok' }, row], tok, { lines: [10, 11] }), TypeError, new RegExp(`data line 11: ${re.source}`));
    }
    expectThrows(() => buildExamples([], tok, { maxLength: 1 }), RangeError, /maxLength must be an integer >= 2/);
    expectThrows(() => buildExamples([], tok, { lines: [1] }), TypeError, /lines must be an array of 0 line numbers/);
    expectThrows(() => buildExamples([], tok, { max_length: 5 } as never), TypeError, /unknown option "max_length"/);
    expectThrows(() => buildExamples([], {} as Tokenizer), TypeError, /tokenizer must be a Tokenizer/);
    expectThrows(() => buildExamples([], tok, { unknownWarnShare: 2 }), RangeError, /unknownWarnShare must be a number in \[0, 1\]/);
  });
});
