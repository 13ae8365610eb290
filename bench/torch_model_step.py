#!/usr/bin/env python3
"""The PyTorch side of `lora-cuda bench --model` (bench/model.ts): one LoRA training step of a
Llama-shaped model (forward, cross-entropy, backward, AdamW on the adapters), timed the same way.

The model is written out here (torch only, no transformers) with transformers' Llama semantics:
RMSNorm in float32, rotate-half rotary embeddings, grouped-query attention (repeat_kv), causal
softmax attention, SiLU-gated MLP, tied or untied head. LoRA is the seed article's LoRALinear on
q_proj and v_proj: A = randn(r, in) * 0.01, B = zeros(out, r), out = W x + (x A^T) B^T * alpha / r.

With "dtype": "bfloat16" the model is bfloat16 and the adapters float32 (PEFT's autocast_adapter_dtype:
x is cast to float32 for the adapter, its output back to bfloat16), RMSNorm computes in float32 and the
logits go to float32 for the loss, as transformers does.

Prints one JSON object on stdout: the step times (wall, and CPU time of all threads: medians, and every
measured step in "times" and "cpuTimes") and tokens per second. bench/model.ts runs it once per round.
Usage: torch_model_step.py CONFIG_JSON (the same object bench/model.ts uses), e.g.
  {"vocab": 49152, "hidden": 576, "intermediate": 1536, "layers": 4, "heads": 9, "kvHeads": 3,
   "batch": 4, "seq": 128, "r": 8, "alpha": 32, "lr": 1e-4, "steps": 10, "warmup": 2, "threads": 2}
"""
import ctypes
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """The seed article's LoRA wrapper (frozen base, trainable A and B, scale alpha / r)."""

    def __init__(self, orig, r, alpha):
        super().__init__()
        self.orig_linear = orig
        orig.weight.requires_grad = False
        self.scale = alpha / r
        self.A = nn.Parameter(torch.randn(r, orig.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(orig.out_features, r))

    def forward(self, x):
        out = self.orig_linear(x)
        h = x.to(self.A.dtype)
        return out + (torch.matmul(torch.matmul(h, self.A.t()), self.B.t()) * self.scale).to(out.dtype)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(dt)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, H, KV = c["hidden"], c["heads"], c["kvHeads"]
        self.H, self.KV, self.hd = H, KV, D // H
        self.q_proj = nn.Linear(D, H * self.hd, bias=False)
        self.k_proj = nn.Linear(D, KV * self.hd, bias=False)
        self.v_proj = nn.Linear(D, KV * self.hd, bias=False)
        self.o_proj = nn.Linear(H * self.hd, D, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.KV, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.H // self.KV
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd) + mask
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, T, self.H * self.hd)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, I = c["hidden"], c["intermediate"]
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], 1e-5)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"], 1e-5)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"], 1e-5)
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as SmolLM-135M
        hd = c["hidden"] // c["heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        t = torch.arange(c["seq"], dtype=torch.float32)
        emb = torch.cat((torch.outer(t, inv),) * 2, dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        T = c["seq"]
        self.mask = torch.full((T, T), float("-inf")).triu(1)

    def loss(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, self.cos, self.sin, self.mask)
        logits = self.lm_head(self.norm(x)).float()
        V = logits.shape[-1]
        # The model's loss: each position predicts the next token (the last predicts nothing).
        return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def blas_kernel():
    """The BLAS library torch's products ran on, and OpenBLAS's kernel (OPENBLAS_CORETYPE or detected)."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "blas" in line.split()[-1].lower() and ".so" in line})
    except OSError:
        return None
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)  # already loaded: the same handle
            core, config = h.openblas_get_corename, h.openblas_get_config
        except (OSError, AttributeError):
            continue
        core.restype = config.restype = ctypes.c_char_p
        return "%s (%s, kernel %s)" % (os.path.basename(lib), config().decode().strip(), core().decode())
    return os.path.basename(libs[0]) if libs else None


def main():
    c = json.loads(sys.argv[1])
    torch.set_num_threads(int(c.get("threads", os.cpu_count() or 1)))
    torch.manual_seed(0)
    model = Model(c)
    for p in model.parameters():
        nn.init.normal_(p, std=0.02) if p.dim() > 1 else None
        p.requires_grad = False
    dt = torch.bfloat16 if c.get("dtype") == "bfloat16" else torch.float32
    model.to(dt)
    model.cos, model.sin, model.mask = model.cos.to(dt), model.sin.to(dt), model.mask.to(dt)
    for layer in model.layers:
        a = layer.self_attn
        a.q_proj = LoRALinear(a.q_proj, c["r"], c["alpha"])
        a.v_proj = LoRALinear(a.v_proj, c["r"], c["alpha"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c["lr"])
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"]), generator=g)

    def step():
        loss = model.loss(ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(c["warmup"]):
        step()
    times = []
    cpu = []
    loss = 0.0
    for _ in range(c["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    s = sorted(times)
    median = s[len(s) // 2]
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": len(times),
        "medianMs": median, "minMs": s[0], "cpuMs": sorted(cpu)[len(cpu) // 2], "tokensPerSecond": c["batch"] * c["seq"] / (median / 1000),
        "loss": loss, "trainable": sum(p.numel() for p in params),
        "times": times, "cpuTimes": cpu, "blas": blas_kernel(),
    }))


if __name__ == "__main__":
    main()
