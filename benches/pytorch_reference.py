"""The LM train-step bench of benches/lm.rs, in PyTorch eager on the CPU.

Run by hand (not in CI): `pip install torch==2.9.0` then
`python3 benches/pytorch_reference.py`. Same architecture as lmlab's Llama (RMSNorm,
interleaved rotary pairs, grouped-query attention, SwiGLU, tied embeddings), same sizes,
batch and sequence lengths, AdamW, 2 threads. Prints the median ms per step.
"""

import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)

SIZES = [
    # name, vocab, dim, layers, heads, kv heads, hidden, batch, seq
    ("sft-arith-0.75M", 64, 128, 4, 4, 2, 352, 32, 100),
    ("4.4M", 64, 256, 6, 8, 4, 704, 16, 128),
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
        freqs = 1.0 / (10000.0 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.arange(t).float()[:, None] * freqs[None, :]
        cos, sin = ang.cos(), ang.sin()
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.norm(x) @ self.embed.weight.T


for name, vocab, d, layers, h, kv, hidden, batch, seq in SIZES:
    model = Llama(vocab, d, layers, h, kv, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ids = (torch.arange(batch * seq) * 7919 % vocab).view(batch, seq)
    times = []
    for i in range(25):
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])
        loss = -lp.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, median {1000 * statistics.median(times):.1f} ms/step "
          f"(batch {batch} x {seq}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
