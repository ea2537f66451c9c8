#!/usr/bin/env python3
"""PyTorch peer of DistAlign's whole-step benchmark (`distalign bench step`).

The same GPT-2 training step, written plainly in PyTorch: token + position embeddings, pre-LayerNorm blocks
(causal attention, tanh-GELU MLP), final LayerNorm, LM head tied to the token embedding, mean next-token
cross-entropy, backward, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, lr 1e-4). Weights
N(0, 0.02²), residual projections scaled by 1/sqrt(2L), biases 0, LayerNorm weights 1; uniform random tokens.

Run with Debian's python3-torch:
    OPENBLAS_CORETYPE=SkylakeX OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 tools/peers/torch_step.py --workload w2 --threads 2
Prints one JSON object: workload, threads, torch version, and the milliseconds of every timed step.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

WORKLOADS = {
    # name: (layers, heads, channels, vocab, context, rows, length)
    "w1": (12, 12, 768, 50257, 1024, 4, 64),
    "w2": (4, 4, 256, 4096, 128, 8, 128),
}


class Block(torch.nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = torch.nn.LayerNorm(c)
        self.c_attn = torch.nn.Linear(c, 3 * c)
        self.c_proj = torch.nn.Linear(c, c)
        self.ln_2 = torch.nn.LayerNorm(c)
        self.c_fc = torch.nn.Linear(c, 4 * c)
        self.mlp_proj = torch.nn.Linear(4 * c, c)

    def forward(self, x, mask):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        hs = c // self.heads
        q = q.view(b, t, self.heads, hs).transpose(1, 2)
        k = k.view(b, t, self.heads, hs).transpose(1, 2)
        v = v.view(b, t, self.heads, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(mask[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(torch.nn.Module):
    def __init__(self, layers, heads, c, vocab, context):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, c)
        self.wpe = torch.nn.Embedding(context, c)
        self.h = torch.nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(c)
        self.register_buffer("mask", torch.tril(torch.ones(context, context)).view(1, 1, context, context))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.zeros_(p)
            elif "ln_" in name:
                torch.nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                torch.nn.init.normal_(p, 0.0, std)

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x, self.mask)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="w2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    layers, heads, c, vocab, context, rows, length = WORKLOADS[args.workload]
    model = Gpt(layers, heads, c, vocab, context)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    window = torch.randint(0, vocab, (rows * length + 1,))
    tokens = window[:-1].view(rows, length)
    targets = window[1:].view(rows, length)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss = model(tokens, targets)
        loss.backward()
        optimizer.step()
        elapsed = (time.perf_counter() - start) * 1000
        if step >= args.warmup:
            times.append(elapsed)
    print(json.dumps({"workload": args.workload, "threads": args.threads, "torch": torch.__version__,
                      "step_ms": times, "loss": float(loss)}))


if __name__ == "__main__":
    main()
