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
torch loaded is not OpenBLAS), and the milliseconds of every timed step; for the training workloads also the first and
last loss, the variant's name, what was on and what was asked for but is not supported by this torch.

Variants (training workloads w1, w2, gpt2, tiny; all off by default, which is the step the CPU benchmarks time): the
step a PyTorch user would tune on a GPU, as llm.c's and nanoGPT's GPT-2 runs do, so that gpu-check compares against the
strongest one (issue 21):
    --attention sdpa   F.scaled_dot_product_attention (flash attention on CUDA; torch >= 2.0)
    --pad-vocab        token table padded with zero rows to a multiple of 64 (50,257 -> 50,304); loss over the real 50,257
    --fused-adamw      torch.optim.AdamW(fused=True) where this torch has it on this device, else foreach (and says so)
    --chunked-ce [R]   cross-entropy R rows at a time (default 4,096), gradient formed in the forward pass: no fp32
                       logits for the whole batch
    --compile          torch.compile (torch >= 2.0)
What this torch lacks (Debian's 1.13 on the CPU: SDPA, fused AdamW, torch.compile) is reported in not_supported and the
step runs without it. The same seed gives every variant the same weights and batch: padding does not change the loss,
the chunked cross-entropy equals the plain one to fp32 rounding. A CPU check of every flag in seconds:
    /usr/bin/python3 tools/peers/torch_step.py --workload tiny --warmup 0 --steps 3 --pad-vocab --chunked-ce 48
On CUDA (--device cuda) the JSON adds the median, tokens/s, and MFU in llm.c's convention (6·N + 6·L·C·T FLOPs per
token) with nanoGPT's (6·N + 12·L·C·T) beside it, against the device's dense bf16 tensor peak.
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
    # a seconds-long CPU check of the variant flags: odd vocabulary (1,001 -> padded 1,024), 4 x 32 tokens
    "tiny": (2, 2, 64, 1001, 64, 4, 32),
}
DPO_PAIRS, DPO_PROMPT, DPO_RESPONSE, DPO_BETA = 8, 16, 48, 0.1
PAD_MULTIPLE = 64          # 50,257 -> 50,304, as llm.c and nanoGPT pad GPT-2's vocabulary
DEFAULT_CE_CHUNK = 4096    # rows of logits alive at once in the chunked cross-entropy (ours: 4,096-row LM head chunks)
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a piece of torch.cuda.get_device_name(); first match wins.
BF16_PEAKS = [("H100 PCIe", 756.0, "H100 PCIe"), ("H100 NVL", 835.0, "H100 NVL"), ("H100", 989.0, "H100 SXM"),
              ("H200", 989.0, "H200 SXM"), ("H800", 989.0, "H800 SXM"), ("A100", 312.0, "A100")]


def torch_release():
    """'1.13' for '1.13.0a0': the release that decides what this torch supports."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def padded(vocab):
    return (vocab + PAD_MULTIPLE - 1) // PAD_MULTIPLE * PAD_MULTIPLE


def eager_only(fn):
    """fn kept out of torch.compile's graphs (a deliberate graph break); fn itself where nothing compiles (torch 1.x)."""
    try:
        from torch.compiler import disable          # torch >= 2.1
    except ImportError:
        try:
            from torch._dynamo import disable       # torch 2.0
        except ImportError:
            return fn
    return disable(fn)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean over rows of cross_entropy(h @ weight[:vocab].T, targets) without the whole batch's logits: `chunk` rows at a
    time, the logits in the compute dtype (bf16 under autocast), the log-softmax of that chunk alone in fp32, and the
    gradient formed at once (softmax - one-hot, scaled, written over the chunk's logits, then d(h) = d(logits) W and
    d(W) += d(logits)^T h), as llm.c's fused classifier does; backward only scales the stored d(h), d(W). Vocabulary
    padding rows of W (index >= vocab) get -inf logits, so they change neither the loss nor any gradient but their own (0)."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab, chunk, compute_dtype):
        with torch.autocast(device_type=h.device.type, enabled=False):
            n = h.shape[0]
            w = weight.to(compute_dtype)
            hc = h.to(compute_dtype)
            dh = torch.empty_like(h)
            dw = torch.zeros_like(weight)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            scale = 1.0 / n
            for start in range(0, n, chunk):
                rows = slice(start, min(start + chunk, n))
                t = targets[rows].unsqueeze(1)
                logits = hc[rows] @ w.t()                                   # [r, Vp], compute dtype
                if weight.shape[0] > vocab:
                    logits[:, vocab:] = float("-inf")
                logp = torch.log_softmax(logits, dim=1, dtype=torch.float32)  # this chunk only
                total -= logp.gather(1, t).sum()
                grad = logp.exp_()
                grad.scatter_add_(1, t, torch.full_like(t, -1.0, dtype=grad.dtype))
                torch.mul(grad, scale, out=logits)                          # d(mean loss)/d(logits), over the logits
                dh[rows] = logits @ w
                dw += logits.t() @ hc[rows]
        ctx.save_for_backward(dh, dw)
        return total * scale

    @staticmethod
    def backward(ctx, grad):
        dh, dw = ctx.saved_tensors
        return dh * grad, dw * grad, None, None, None, None


def chunked_cross_entropy(h, weight, targets, vocab, chunk, compute_dtype):
    return ChunkedCrossEntropy.apply(h, weight, targets, vocab, chunk, compute_dtype)


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
    """GPT-2. padded_vocab > vocab: the token table gets zero rows up to padded_vocab after the same random
    initialisation (so the first vocab rows, and every other weight, equal the unpadded model's), and the loss is over
    the first vocab logits only (the padding logits are set to -inf). ce_chunk > 0: ChunkedCrossEntropy with that many
    rows, in compute_dtype (the runner sets bf16 under autocast)."""

    def __init__(self, layers, heads, c, vocab, context, sdpa=False, padded_vocab=None, ce_chunk=0):
        super().__init__()
        self.sdpa = sdpa
        self.vocab = vocab
        self.ce_chunk = ce_chunk
        self.compute_dtype = torch.float32
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
        if padded_vocab is not None and padded_vocab > vocab:
            table = torch.zeros(padded_vocab, c)
            table[:vocab] = self.wte.weight.detach()
            self.wte.weight = torch.nn.Parameter(table)
        self.chunked_ce = eager_only(chunked_cross_entropy) if ce_chunk > 0 else None

    def hidden(self, tokens):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.h:
            x = block(x, self.mask, self.sdpa)
        return self.ln_f(x)

    def logits(self, tokens):
        return self.hidden(tokens) @ self.wte.weight.t()

    def forward(self, tokens, targets):
        if self.chunked_ce is not None:
            h = self.hidden(tokens)
            return self.chunked_ce(h.reshape(-1, h.shape[-1]), self.wte.weight, targets.reshape(-1), self.vocab,
                                   self.ce_chunk, self.compute_dtype)
        logits = self.logits(tokens)
        if logits.shape[-1] > self.vocab:   # padded table: the padding classes get probability 0
            logits[..., self.vocab:] = float("-inf")
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


class Variant:
    """The variant flags resolved against this torch and device: what runs (on), what was asked for and could not run
    here (not_supported: feature -> reason; the step then runs without it), and a name for tables."""

    def __init__(self, args, vocab, device):
        self.device = device
        self.not_supported = {}
        self.sdpa = args.attention == "sdpa"
        if self.sdpa and not hasattr(F, "scaled_dot_product_attention"):
            self.not_supported["sdpa"] = (f"not supported by torch {torch_release()} (F.scaled_dot_product_attention "
                                          "arrived in torch 2.0); ran manual attention")
            self.sdpa = False
        self.padded_vocab = padded(vocab) if args.pad_vocab else None
        self.vocab = vocab
        self.ce_chunk = args.chunked_ce
        self.compile = args.compile
        if self.compile and not hasattr(torch, "compile"):
            self.not_supported["compile"] = f"not supported by torch {torch_release()} (torch.compile arrived in torch 2.0); ran eager"
            self.compile = False
        self.fused_adamw = args.fused_adamw
        self.adamw = "default"          # set by optimizer()
        self.bf16 = args.bf16 and args.device == "cuda"   # autocast is the CUDA path's (run_cuda)
        self.clip = args.clip

    def optimizer(self, model, lr):
        """AdamW over two groups (weight decay 0.1 on matrices, 0 on vectors); fused=True when asked for and this torch
        has it on this device, else the multi-tensor (foreach) implementation, with the reason in not_supported."""
        def groups():   # fresh dicts per attempt: a failed constructor has already written its defaults into them
            return [{"params": [p for n, p in model.named_parameters() if p.dim() >= 2], "weight_decay": 0.1},
                    {"params": [p for n, p in model.named_parameters() if p.dim() < 2], "weight_decay": 0.0}]
        settings = dict(lr=lr, betas=(0.9, 0.95), eps=1e-8)
        if not self.fused_adamw:
            return torch.optim.AdamW(groups(), **settings)
        try:
            optimizer = torch.optim.AdamW(groups(), fused=True, **settings)
            self.adamw = "fused"
            return optimizer
        except (TypeError, RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.not_supported["fused_adamw"] = (f"not supported by torch {torch_release()} on {self.device} ({reason}); "
                                                 "ran the foreach (multi-tensor) AdamW")
            self.adamw = "foreach"
            return torch.optim.AdamW(groups(), foreach=True, **settings)

    def on(self):
        return {"attention": "sdpa" if self.sdpa else "manual", "vocab": self.vocab,
                "padded_vocab": self.padded_vocab, "adamw": self.adamw,
                "cross_entropy": f"chunked, {self.ce_chunk} rows" if self.ce_chunk > 0 else "plain",
                "compile": self.compile, "bf16_autocast": self.bf16, "clip": self.clip}

    def name(self):
        parts = ["SDPA attention" if self.sdpa else "manual attention"]
        if self.padded_vocab:
            parts.append(f"vocabulary padded to {self.padded_vocab:,}")
        if self.adamw != "default":
            parts.append(f"{self.adamw} AdamW")
        if self.ce_chunk > 0:
            parts.append(f"chunked CE ({self.ce_chunk} rows)")
        parts.append("torch.compile" if self.compile else "eager")
        return ", ".join(parts)


def shape(args):
    """(layers, heads, channels, vocab, context, rows, length) of a training workload, rows as --rows says."""
    layers, heads, c, vocab, context, rows, length = WORKLOADS[args.workload]
    return layers, heads, c, vocab, context, args.rows or rows, length


def build(args, device):
    """The model, its AdamW and the batch for a training workload, in the same order of random draws for every variant
    (seed 1, then the weights, then the tokens), so every variant starts from the same weights and batch."""
    layers, heads, c, vocab, context, rows, length = shape(args)
    variant = Variant(args, vocab, device.type)
    model = Gpt(layers, heads, c, vocab, context, sdpa=variant.sdpa, padded_vocab=variant.padded_vocab,
                ce_chunk=variant.ce_chunk)
    if variant.bf16:
        model.compute_dtype = torch.bfloat16
    model = model.to(device)
    optimizer = variant.optimizer(model, 1e-4 if device.type == "cpu" else 3e-4)
    window = torch.randint(0, vocab, (rows * length + 1,), device=device)
    tokens = window[:-1].view(rows, length)
    targets = window[1:].view(rows, length)
    step_model = torch.compile(model) if variant.compile else model
    for feature, reason in variant.not_supported.items():
        print(f"torch_step.py: {feature}: {reason}", file=sys.stderr)
    return variant, model, step_model, optimizer, tokens, targets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS) + ["dpo"], default="w2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing python3-torch when missing")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast to bf16 (fp32 weights and optimizer; CUDA)")
    parser.add_argument("--clip", type=float, default=0.0, help="clip the gradient to this global norm (0: no clipping)")
    parser.add_argument("--rows", type=int, default=None,
                        help="sequences per batch instead of the workload's (gpu-check --quick: gpt2 at 2 x 1024)")
    variants = parser.add_argument_group("variants (training workloads; each is off by default, the CPU benchmarks' step)")
    variants.add_argument("--attention", choices=["manual", "sdpa"], default="manual",
                          help="manual: scores materialised as ours; sdpa: F.scaled_dot_product_attention (flash on CUDA; "
                               "torch >= 2.0, else reported as not supported and run manual)")
    variants.add_argument("--pad-vocab", action="store_true",
                          help=f"token table padded with zero rows to a multiple of {PAD_MULTIPLE} (50,257 -> 50,304, as "
                               "llm.c/nanoGPT); the loss stays over the real vocabulary (padding logits -inf)")
    variants.add_argument("--fused-adamw", action="store_true",
                          help="torch.optim.AdamW(fused=True) where this torch has it on this device, else foreach (reported)")
    variants.add_argument("--chunked-ce", type=int, nargs="?", const=DEFAULT_CE_CHUNK, default=0, metavar="ROWS",
                          help=f"cross-entropy ROWS rows at a time (default {DEFAULT_CE_CHUNK}) with its gradient formed in the "
                               "forward pass: no fp32 logits for the whole batch")
    variants.add_argument("--compile", action="store_true",
                          help="torch.compile the model (torch >= 2.0, else reported as not supported and run eager; the "
                               "chunked cross-entropy stays eager)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="CUDA: the peak for MFU (default: the device's dense bf16 tensor peak from a table; 989 if unknown)")
    args = parser.parse_args()
    if args.chunked_ce < 0:
        parser.error("--chunked-ce takes a positive number of rows")
    if args.rows is not None and (args.rows < 1 or args.workload == "dpo"):
        parser.error("--rows takes a positive number of sequences, for a training workload")
    if args.workload == "dpo" and (args.attention != "manual" or args.pad_vocab or args.fused_adamw or args.chunked_ce
                                   or args.compile):
        parser.error("the variant flags apply to the training workloads (w1, w2, gpt2, tiny), not dpo")
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
    variant, model, step_model, optimizer, tokens, targets = build(args, torch.device("cpu"))
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        loss = step_model(tokens, targets)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        elapsed = (time.perf_counter() - start) * 1000
        losses.append(float(loss))
        if step >= args.warmup:
            times.append(elapsed)
    print(json.dumps({"workload": args.workload, "threads": args.threads, "torch": torch.__version__, "openblas_core": openblas_core(),
                      "step_ms": times, "loss": losses[-1], "first_loss": losses[0],
                      "variant": variant.name(), "on": variant.on(), "not_supported": variant.not_supported}))


def bf16_peak(device_name, override):
    """(TFLOP/s, what it is): --peak-tflops, else the dense bf16 tensor peak of the named device from BF16_PEAKS."""
    if override is not None:
        return override, "given by --peak-tflops"
    for piece, tflops, what in BF16_PEAKS:
        if piece in device_name:
            return tflops, f"{what} dense bf16 tensor peak"
    return 989.0, f"H100/H200 SXM dense bf16 tensor peak, assumed ({device_name} is not in the table)"


def run_cuda(args):
    """A training step on the GPU, as the GPU check's GpuStepBenchmark: forward, backward, clipping, AdamW
    (lr 3e-4; the step is the same work at any rate), synchronised at the end of each step; CUDA-event
    timing; gradients set to None between steps (torch 2's default; nothing to zero). FLOPs per step: 6 per parameter
    per token (the tied table once, its padding rows not counted) plus attention, counted two ways: 6·L·C·T per token
    (llm.c's convention: causal attention does half of the T x T products; DistAlign's StepWorkload.FlopsPerStep), the
    headline MFU, and 12·L·C·T (nanoGPT's and PaLM's; StepWorkload.NanoGptFlopsPerStep), named beside it. MFU against the device's
    dense bf16 tensor peak (989 TFLOP/s on H100/H200 SXM)."""
    layers, heads, c, vocab, context, rows, length = shape(args)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(1)
    variant, model, step_model, optimizer, tokens, targets = build(args, device)
    times, losses = [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for step in range(args.warmup + args.steps):
        start.record()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            loss = step_model(tokens, targets)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        end.record()
        torch.cuda.synchronize()
        losses.append(float(loss))
        if step >= args.warmup:
            times.append(start.elapsed_time(end))
    parameters = sum(p.numel() for p in model.parameters()) - ((variant.padded_vocab or vocab) - vocab) * c
    tokens_per_step = rows * length
    flops_llmc = tokens_per_step * (6.0 * parameters + 6.0 * layers * c * length)
    flops_nanogpt = tokens_per_step * (6.0 * parameters + 12.0 * layers * c * length)
    median = sorted(times)[len(times) // 2]
    name = torch.cuda.get_device_name()
    peak, peak_source = bf16_peak(name, args.peak_tflops)
    seconds = median * 1e-3
    print(json.dumps({"workload": args.workload, "device": name, "torch": torch.__version__,
                      "variant": variant.name(), "on": variant.on(), "not_supported": variant.not_supported,
                      "bf16": args.bf16, "attention": variant.on()["attention"], "rows": rows, "length": length,
                      "parameters": parameters, "step_ms": times, "median_ms": median,
                      "tokens_per_s": tokens_per_step / seconds,
                      "flops_per_step_llmc": flops_llmc, "flops_per_step_nanogpt": flops_nanogpt,
                      "tflops_llmc": flops_llmc / seconds / 1e12, "tflops_nanogpt": flops_nanogpt / seconds / 1e12,
                      "peak_tflops": peak, "peak_source": peak_source,
                      "mfu_llmc": flops_llmc / seconds / 1e12 / peak, "mfu_nanogpt": flops_nanogpt / seconds / 1e12 / peak,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
