#!/usr/bin/env python3
"""PyTorch peer of DistAlign's whole-step benchmarks (`distalign bench step`, `distalign bench dpo`).

The same GPT-2 training step, written plainly in PyTorch: token + position embeddings, pre-LayerNorm blocks
(causal attention, tanh-GELU MLP), final LayerNorm, LM head tied to the token embedding, mean next-token
cross-entropy, backward, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, lr 1e-4). Weights
N(0, 0.02²), residual projections scaled by 1/sqrt(2L), biases 0, LayerNorm weights 1; uniform random tokens.

Workload dpo: one DPO step on the W2 model, as `distalign bench dpo` takes it: 8 pairs, prompts of 16 and
responses of 48 uniform random tokens; the 16 sequences (chosen, rejected interleaved) form a [16, 63] batch
(the last response token is only a target); ln pi(y) = sum of the response tokens' log-probs; reference
log-probs computed once with the initial weights (cached, like ours); loss = mean over pairs of
-log sigmoid(beta * ((ln pi(y+) - ln pi0(y+)) - (ln pi(y-) - ln pi0(y-)))), beta 0.1; backward; gradient
clipped to global norm 1; AdamW (betas 0.9/0.95, eps 1e-8, no weight decay, lr 1e-5).

Run with Debian's python3-torch (installed with apt, after a message, when missing and this script is run
directly; pass --no-install to fail instead):
    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 tools/peers/torch_step.py --workload w2 --threads 2
adding OPENBLAS_CORETYPE=SkylakeX only where /proc/cpuinfo's flags have avx512f (Debian's OpenBLAS 0.3.21 runs SSE3
kernels on AVX-512 CPUs it does not know; on a CPU without avx512f that core dies with SIGILL) and Haswell for the AVX2
view of an AVX-512 CPU; elsewhere leave it unset. `distalign bench peers` and the report choose it that way.
Prints one JSON object: workload, threads, torch version, the core OpenBLAS picked (openblas_core, null when the BLAS
torch loaded is not OpenBLAS), and the milliseconds of every timed step.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time


def import_torch(allow_install):
    """Imports torch; when missing, installs Debian's python3-torch with apt (announced on stderr) if allowed."""
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        if not allow_install:
            sys.exit("torch_step.py: PyTorch is not installed (Debian: apt-get install python3-torch)")
    print("torch_step.py: PyTorch is missing; installing Debian's python3-torch with apt-get "
          "(the peer needs it; pass --no-install to skip) ...", file=sys.stderr, flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "install", "-y", "python3-torch"], check=True, env=env)


import_torch(allow_install="--no-install" not in sys.argv)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

def openblas_core():
    """The core whose kernels this process's OpenBLAS uses (openblas_get_corename of the BLAS library torch loaded), or
    None when that library is not OpenBLAS or cannot be asked. Reading it costs a look at /proc/self/maps."""
    try:
        import ctypes
        with open("/proc/self/maps") as maps:
            paths = sorted({fields[5] for fields in (line.split(maxsplit=5) for line in maps)
                            if len(fields) == 6 and "blas" in os.path.basename(fields[5]) and ".so" in fields[5]})
        for path in paths:
            library = ctypes.CDLL(path.strip())   # already loaded: the same handle torch uses
            if hasattr(library, "openblas_get_corename"):
                library.openblas_get_corename.restype = ctypes.c_char_p
                return library.openblas_get_corename().decode()
    except Exception:   # informational only: never fail a measurement over it
        pass
    return None


WORKLOADS = {
    # name: (layers, heads, channels, vocab, context, rows, length)
    "w1": (12, 12, 768, 50257, 1024, 4, 64),
    "w2": (4, 4, 256, 4096, 128, 8, 128),
    # the GPU check's workload (issue #8): GPT-2 124M, 16 x 1024 tokens; run with --device cuda
    "gpt2": (12, 12, 768, 50257, 1024, 16, 1024),
}
DPO_PAIRS, DPO_PROMPT, DPO_RESPONSE, DPO_BETA = 8, 16, 48, 0.1


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

    def forward(self, x, mask, sdpa=False):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        hs = c // self.heads
        q = q.view(b, t, self.heads, hs).transpose(1, 2)
        k = k.view(b, t, self.heads, hs).transpose(1, 2)
        v = v.view(b, t, self.heads, hs).transpose(1, 2)
        if sdpa:   # PyTorch's fused kernel (flash attention on CUDA): the T x T scores are never stored
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:      # the same algorithm as ours: scores materialised, masked softmax, then A.V
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            att = att.masked_fill(mask[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(torch.nn.Module):
    def __init__(self, layers, heads, c, vocab, context, sdpa=False):
        super().__init__()
        self.sdpa = sdpa
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

    def logits(self, tokens):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.h:
            x = block(x, self.mask, self.sdpa)
        return self.ln_f(x) @ self.wte.weight.t()

    def forward(self, tokens, targets):
        logits = self.logits(tokens)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))

    def response_logps(self, tokens, targets, response_mask):
        """ln pi(y) per sequence: the response tokens' log-probs summed."""
        logp = self.logits(tokens).log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (logp * response_mask).sum(dim=-1)


def dpo_batch(vocab):
    """16 sequences (chosen, rejected per pair) of prompt + response - 1 positions; targets are the next tokens."""
    rows = []
    for _ in range(DPO_PAIRS):
        prompt = torch.randint(0, vocab, (DPO_PROMPT,))
        for _ in range(2):
            rows.append(torch.cat([prompt, torch.randint(0, vocab, (DPO_RESPONSE,))]))
    seqs = torch.stack(rows)
    tokens, targets = seqs[:, :-1], seqs[:, 1:]
    mask = torch.zeros_like(targets, dtype=torch.float32)
    mask[:, DPO_PROMPT - 1:] = 1.0
    return tokens.contiguous(), targets.contiguous(), mask


def run_dpo(args):
    layers, heads, c, vocab, context, _, _ = WORKLOADS["w2"]
    model = Gpt(layers, heads, c, vocab, context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    tokens, targets, mask = dpo_batch(vocab)
    with torch.no_grad():
        reference = model.response_logps(tokens, targets, mask)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        h = model.response_logps(tokens, targets, mask) - reference
        loss = -F.logsigmoid(DPO_BETA * (h[0::2] - h[1::2])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = (time.perf_counter() - start) * 1000
        if step >= args.warmup:
            times.append(elapsed)
    return times, float(loss)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS) + ["dpo"], default="w2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing python3-torch when missing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast to bf16 (fp32 weights and optimizer; CUDA)")
    parser.add_argument("--attention", choices=["manual", "sdpa"], default="manual",
                        help="manual: scores materialised as ours; sdpa: F.scaled_dot_product_attention (flash on CUDA)")
    parser.add_argument("--clip", type=float, default=0.0, help="clip the gradient to this global norm (0: no clipping)")
    args = parser.parse_args()
    if args.device == "cuda":
        run_cuda(args)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    if args.workload == "dpo":
        times, loss = run_dpo(args)
        print(json.dumps({"workload": "dpo", "threads": args.threads, "torch": torch.__version__, "openblas_core": openblas_core(),
                          "step_ms": times, "loss": loss}))
        return
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
    print(json.dumps({"workload": args.workload, "threads": args.threads, "torch": torch.__version__, "openblas_core": openblas_core(),
                      "step_ms": times, "loss": float(loss)}))


def run_cuda(args):
    """A training step on the GPU, as the GPU check's GpuStepBenchmark: forward, backward, clipping, AdamW
    (lr 3e-4; the step is the same work at any rate), synchronised at the end of each step; CUDA-event
    timing. FLOPs per step as ours (GpuGpt.TrainingFlops): 6 per parameter per token, tied table once, plus
    12 L C T per token for attention (the full T x T, as nanoGPT / llm.c count it)."""
    layers, heads, c, vocab, context, rows, length = WORKLOADS[args.workload]
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = Gpt(layers, heads, c, vocab, context, sdpa=args.attention == "sdpa").to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    window = torch.randint(0, vocab, (rows * length + 1,), device=device)
    tokens = window[:-1].view(rows, length)
    targets = window[1:].view(rows, length)
    times, losses = [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for step in range(args.warmup + args.steps):
        start.record()
        optimizer.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(tokens, targets)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        end.record()
        torch.cuda.synchronize()
        losses.append(float(loss))
        if step >= args.warmup:
            times.append(start.elapsed_time(end))
    parameters = sum(p.numel() for p in model.parameters())
    flops = rows * length * (6.0 * parameters + 12.0 * layers * c * length)
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"workload": args.workload, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "bf16": args.bf16, "attention": args.attention, "rows": rows, "length": length,
                      "parameters": parameters, "flops_per_step": flops, "step_ms": times, "median_ms": median,
                      "tokens_per_s": rows * length / (median * 1e-3), "tflops": flops / (median * 1e-3) / 1e12,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
