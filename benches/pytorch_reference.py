"""The LM train step of `lmlab bench train` (lmlab_sdk::lm::bench), in PyTorch eager.

Same architecture as lmlab's Llama (RMSNorm, interleaved rotary pairs, grouped-query attention,
SwiGLU, tied embeddings), same sizes, batch, tokens and loss (mean next-token NLL), AdamW with
gradient-norm clipping at 1.0. Prints one JSON line per model, as `lmlab bench train` does:

    python3 benches/pytorch_reference.py [--model NAME|all] [--device cpu|cuda]
        [--dtype f32|bf16] [--steps N] [--warmup N] [--threads N]
    python3 benches/pytorch_reference.py --peak     # measured bf16 matmul TFLOP/s (GPU)

`cargo xtask bench-compare` runs it on the CPU; the GPU bundle's `gpu-check.sh` on CUDA.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


# As lmlab_sdk::lm::bench::bench_models.
SIZES = [
    # name, vocab, dim, layers, heads, kv heads, hidden, batch, seq
    ("sft-arith-0.75M", 64, 128, 4, 4, 2, 352, 32, 100),
    ("4.4M", 64, 256, 6, 8, 4, 704, 16, 128),
    ("125M", 49152, 768, 12, 12, 12, 2048, 8, 512),
]


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope(x, cos, sin):
    # x: [B, H, T, D]; rotate interleaved pairs (x0, x1) -> (x0 c - x1 s, x0 s + x1 c).
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


class Block(torch.nn.Module):
    def __init__(self, d, h, kv, hidden):
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.wq = torch.nn.Linear(d, d, bias=False)
        self.wk = torch.nn.Linear(d, kv * self.hd, bias=False)
        self.wv = torch.nn.Linear(d, kv * self.hd, bias=False)
        self.wo = torch.nn.Linear(d, d, bias=False)
        self.w1 = torch.nn.Linear(d, hidden, bias=False)
        self.w2 = torch.nn.Linear(hidden, d, bias=False)
        self.w3 = torch.nn.Linear(d, hidden, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.n1(x)
        q = self.wq(h).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.wk(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.wv(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(o.transpose(1, 2).reshape(b, t, d))
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(torch.nn.Module):
    def __init__(self, vocab, d, layers, h, kv, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d, h, kv, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.hd = d // h

    def forward(self, ids):
        t = ids.shape[1]
        dev = ids.device
        freqs = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2, device=dev).float() / self.hd))
        ang = torch.arange(t, device=dev).float()[:, None] * freqs[None, :]
        dtype = self.embed.weight.dtype
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x) @ self.embed.weight.T




def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(spec, device, dtype, steps, warmup, batch=None):
    name, vocab, d, layers, h, kv, hidden, b, seq = spec
    b = batch or b
    torch.manual_seed(0)
    model = Llama(vocab, d, layers, h, kv, hidden).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ids = (torch.arange(b * seq) * 7919 % vocab).view(b, seq).to(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])
        loss = -lp.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    secs = statistics.median(times)
    tokens = b * (seq - 1)
    return {
        "bench": "train",
        "impl": "pytorch-eager",
        "model": name,
        "device": device.type,
        "dtype": "bf16" if dtype == torch.bfloat16 else "f32",
        "params": params,
        "tokens": tokens,
        "batch": b,
        "seq": seq,
        "ms_per_step": 1000 * secs,
        "tokens_per_s": tokens / secs,
        "tflops": 6 * params * tokens / secs / 1e12,
        "steps": steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def peak_bf16(device, n=8192, reps=20):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    secs = (time.perf_counter() - t0) / reps
    return {"bench": "peak", "dtype": "bf16", "n": n, "tflops": 2 * n**3 / secs / 1e12,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.peak:
        print(json.dumps(peak_bf16(device)), flush=True)
        return
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    specs = [s for s in SIZES if args.model in ("all", s[0])]
    if args.model == "all":
        specs = specs[:2] if device.type == "cpu" else specs
    if not specs:
        raise SystemExit(f"unknown model {args.model}: use all or one of {[s[0] for s in SIZES]}")
    for spec in specs:
        print(json.dumps(time_model(spec, device, dtype, args.steps, args.warmup, args.batch)),
              flush=True)


if __name__ == "__main__":
    main()
