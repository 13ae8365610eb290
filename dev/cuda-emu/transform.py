#!/usr/bin/env python3
"""Rewrites a CUDA source file (.cu, .cuh) into C++ for the CUDA emulator.

    transform.py INPUT OUTPUT NAME

NAME is how messages and __FILE__ name the file (e.g. cuda/softmax.cu). The
output keeps every line where it was (a #line directive names the original),
so compiler messages and the emulator's reports point into the real source.
Three constructs change; everything else is compiled as written:

  kernel<<<grid, block, smem, stream>>>(args);
      -> ::emu::launch(::emu::LaunchSite{"kernel", __FILE__, __LINE__}, kernel,
                       grid, block, smem, stream, args);
  __shared__ T name[N]...;   (static shared memory, one per block)
      -> a reference into the block's shared memory, from ::emu::static_smem
  extern __shared__ T name[];   (dynamic shared memory)
      -> #define name (reinterpret_cast<T*>(::emu::dynamic_smem()))
  const __grid_constant__ T name   (a kernel parameter)
      -> const T& name   (the parameter refers to the launch's copy, not a copy of it)

Anything it cannot rewrite (a <<< it cannot parse, a __shared__ of another
form) is an error, so that no CUDA construct reaches the compiler unconverted.
"""
import re
import sys


def code_mask(src):
    """True for every character outside comments, string and character literals."""
    mask = [True] * len(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith('//', i):
            j = src.find('\n', i)
            j = n if j < 0 else j
            for k in range(i, j):
                mask[k] = False
            i = j
        elif src.startswith('/*', i):
            j = src.find('*/', i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                mask[k] = False
            i = j
        elif c in '"\'':
            # A digit separator (1'000) is not a character literal.
            if c == "'" and i > 0 and src[i - 1].isalnum() and i + 1 < n and src[i + 1].isalnum():
                i += 1
                continue
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == '\\' else 1
            for k in range(i, min(j + 1, n)):
                mask[k] = False
            i = j + 1
        else:
            i += 1
    return mask


class TransformError(Exception):
    pass


def line_of(src, pos):
    return src.count('\n', 0, pos) + 1


def match_forward(src, mask, i, open_c, close_c):
    """Index of the bracket closing the one at src[i] (parentheses and brackets nest)."""
    depth = 0
    pairs = {'(': ')', '[': ']', '{': '}'}
    stack = []
    j = i
    while j < len(src):
        if mask[j]:
            c = src[j]
            if c in pairs:
                stack.append(pairs[c])
            elif c in ')]}':
                if not stack or stack.pop() != c:
                    raise TransformError('unbalanced %r at line %d' % (c, line_of(src, j)))
                if not stack:
                    return j
        j += 1
    raise TransformError('unclosed %r at line %d' % (open_c, line_of(src, i)))


def split_top(text):
    """Splits at commas outside parentheses, brackets and braces."""
    parts, depth, cur = [], 0, ''
    for c in text:
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        if c == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += c
    parts.append(cur)
    return parts


def kernel_start(src, mask, end):
    """Start of the kernel expression (name, qualifiers, template arguments) ending before `end`."""
    j = end
    while j > 0 and src[j - 1].isspace():
        j -= 1
    if j > 0 and src[j - 1] == '>':
        depth, paren = 0, 0
        k = j - 1
        while k >= 0:
            c = src[k]
            if mask[k]:
                if c == ')':
                    paren += 1
                elif c == '(':
                    paren -= 1
                elif paren == 0 and c == '>':
                    depth += 1
                elif paren == 0 and c == '<':
                    depth -= 1
                    if depth == 0:
                        break
            k -= 1
        if k < 0:
            raise TransformError('unbalanced template arguments before <<< at line %d' % line_of(src, end))
        j = k
    k = j
    while True:
        while k > 0 and (src[k - 1].isalnum() or src[k - 1] == '_'):
            k -= 1
        if k >= 2 and src[k - 2:k] == '::':
            k -= 2
            continue
        break
    if k == j or src[k].isdigit():
        raise TransformError('no kernel name before <<< at line %d' % line_of(src, end))
    return k


def rewrite_launches(src):
    mask = code_mask(src)
    out, pos, count = [], 0, 0
    i = 0
    while True:
        i = src.find('<<<', i)
        if i < 0:
            break
        if not mask[i]:
            i += 3
            continue
        start = kernel_start(src, mask, i)
        # The configuration: up to the >>> outside parentheses.
        j, depth = i + 3, 0
        while j < len(src):
            if mask[j]:
                if src[j] in '([{':
                    depth += 1
                elif src[j] in ')]}':
                    depth -= 1
                elif depth == 0 and src.startswith('>>>', j):
                    break
            j += 1
        else:
            raise TransformError('no >>> after <<< at line %d' % line_of(src, i))
        config = src[i + 3:j]
        k = j + 3
        while k < len(src) and src[k].isspace():
            k += 1
        if k >= len(src) or src[k] != '(':
            raise TransformError('no argument list after >>> at line %d' % line_of(src, j))
        close = match_forward(src, mask, k, '(', ')')
        args = src[k + 1:close]
        m = close + 1
        while m < len(src) and src[m].isspace() and src[m] != '\n':
            m += 1
        if m >= len(src) or src[m] != ';':
            raise TransformError('a launch must be a statement of its own (line %d)' % line_of(src, start))
        kernel = src[start:i].rstrip()
        parts = split_top(config)
        if not 2 <= len(parts) <= 4:
            raise TransformError('launch configuration %r at line %d: expected 2 to 4 values' % (config, line_of(src, i)))
        parts += ['0', 'nullptr'][len(parts) - 2:]
        name = ' '.join(kernel.split()).replace('\\', '\\\\').replace('"', '\\"')
        text = '::emu::launch(::emu::LaunchSite{"%s", __FILE__, __LINE__}, %s, %s%s%s);' % (
            name, kernel, ', '.join(p.strip() for p in parts), ', ' if args.strip() else '', args)
        # Lines dropped between the parts come back after the statement.
        lost = src.count('\n', start, m + 1) - text.count('\n')
        out.append(src[pos:start])
        out.append(text + '\n' * lost)
        pos = m + 1
        i = m + 1
        count += 1
    out.append(src[pos:])
    return ''.join(out), count


SHARED = re.compile(r'\b(extern\s+)?__shared__\s+(?:__align__\s*\(\s*(\d+)\s*\)\s+)?([^;=()]*?)\s*\b(\w+)\s*((?:\[[^\]]*\]\s*)*);')
GRID_CONSTANT = re.compile(r'\bconst\s+__grid_constant__\s+(?:const\s+)?([\w:]+(?:\s*<[^<>()]*>)?)\s+(\w+)')


def rewrite_shared(src):
    mask = code_mask(src)
    out, pos = [], 0
    count = 0
    for m in SHARED.finditer(src):
        if not mask[m.start()]:
            continue
        extern, align, typ, name, dims = m.groups()
        typ = ' '.join(typ.split())
        dims = ''.join(dims.split())
        if not typ:
            raise TransformError('cannot read the __shared__ declaration at line %d' % line_of(src, m.start()))
        if extern:
            if dims != '[]':
                raise TransformError('extern __shared__ %s must be an unsized array (line %d)' % (name, line_of(src, m.start())))
            ls = src.rfind('\n', 0, m.start()) + 1
            le = src.find('\n', m.end())
            le = len(src) if le < 0 else le
            if src[ls:m.start()].strip() or src[m.end():le].strip():
                raise TransformError('extern __shared__ %s must be alone on its line (line %d)' % (name, line_of(src, m.start())))
            text = '#define %s (reinterpret_cast<%s*>(::emu::dynamic_smem()))' % (name, typ)
        else:
            t = 'emu_shared_t_%s_' % name
            s = 'emu_shared_site_%s_' % name
            al = 'alignof(%s)' % t
            if align:
                al = '(%s > %s ? %s : %s)' % (align, al, align, al)
            text = ('static char %s; using %s = %s%s; %s& %s = *static_cast<%s*>(::emu::static_smem(&%s, sizeof(%s), %s));'
                    % (s, t, typ, dims, t, name, t, s, t, al))
        lost = src.count('\n', m.start(), m.end())
        out.append(src[pos:m.start()])
        out.append(text + '\n' * lost)
        pos = m.end()
        count += 1
    out.append(src[pos:])
    src = ''.join(out)
    mask = code_mask(src)
    left = [m.start() for m in re.finditer(r'\b__shared__\b', src) if mask[m.start()]]
    if left:
        raise TransformError('a __shared__ declaration of an unsupported form at line %d' % line_of(src, left[0]))
    return src, count


def rewrite_grid_constant(src):
    src, n = GRID_CONSTANT.subn(lambda m: 'const %s& %s' % (m.group(1), m.group(2)), src)
    mask = code_mask(src)
    left = [m.start() for m in re.finditer(r'\b__grid_constant__\b', src) if mask[m.start()]]
    if left:
        raise TransformError('a __grid_constant__ parameter of an unsupported form at line %d' % line_of(src, left[0]))
    return src, n


def transform(src, name):
    src, _ = rewrite_shared(src)
    src, _ = rewrite_grid_constant(src)
    src, _ = rewrite_launches(src)
    # nvcc includes the runtime header before anything else in a .cu file.
    return '#include <cuda_runtime.h>\n#line 1 "%s"\n%s' % (name, src)


def main(argv):
    if len(argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    src_path, out_path, name = argv[1:]
    with open(src_path, encoding='utf-8') as f:
        src = f.read()
    try:
        out = transform(src, name)
    except TransformError as e:
        sys.stderr.write('%s: %s\n' % (src_path, e))
        return 1
    if out.count('\n') != src.count('\n') + 2:
        sys.stderr.write('%s: the rewrite moved lines (internal error)\n' % src_path)
        return 1
    tmp = out_path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(out)
    import os
    os.replace(tmp, out_path)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
