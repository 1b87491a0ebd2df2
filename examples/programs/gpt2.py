"""GPT-2: a small decoder-only transformer (nanoGPT style) trained as a
language model, followed by autoregressive sampling.

The corpus is synthetic: "sentences" that are arithmetic progressions of
token ids (random start and step) terminated by an EOS token, concatenated
into one stream; training batches are random windows of that stream.

Python features exercised:
  * ordinary training steps (AdamW, grad clipping, `.item()` logging)
  * autoregressive generation in a Python loop: crop the context, sample with
    temperature / top-k via `torch.multinomial`, and `break` as soon as the
    sampled token equals EOS (`next_id.item() == EOS`), so the number of
    decoding steps is data dependent and the sequence grows every step
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(vocab=64, block=32, layers=2, heads=2, embd=64, batch=16, lr=3e-3, max_new=24),
    "large": dict(vocab=50257, block=1024, layers=12, heads=12, embd=768, batch=8, lr=6e-4, max_new=256),
}
EOS = 0
DROPOUT = 0.1


class CausalSelfAttention(nn.Module):
    def __init__(self, embd, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(embd, 3 * embd)
        self.c_proj = nn.Linear(embd, embd)
        self.resid_drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=DROPOUT if self.training else 0.0)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    def __init__(self, embd, heads):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(embd), nn.LayerNorm(embd)
        self.attn = CausalSelfAttention(embd, heads)
        self.mlp = nn.Sequential(nn.Linear(embd, 4 * embd), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * embd, embd), nn.Dropout(DROPOUT))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, embd):
        super().__init__()
        self.block = block
        self.wte, self.wpe = nn.Embedding(vocab, embd), nn.Embedding(block, embd)
        self.drop = nn.Dropout(DROPOUT)
        self.h = nn.ModuleList(Block(embd, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(embd)
        self.lm_head = nn.Linear(embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_corpus(vocab, n_sentences, rng):
    stream = []
    for _ in range(n_sentences):
        start, step, length = rng.randint(1, vocab), rng.randint(1, 4), rng.randint(4, 13)
        stream += [1 + (start - 1 + i * step) % (vocab - 1) for i in range(length)] + [EOS]
    return np.array(stream, dtype=np.int64)


def get_batch(corpus, block, batch, rng, device):
    ix = rng.randint(0, len(corpus) - block - 1, size=batch)
    x = torch.from_numpy(np.stack([corpus[i:i + block] for i in ix]))
    y = torch.from_numpy(np.stack([corpus[i + 1:i + 1 + block] for i in ix]))
    return x.to(device), y.to(device)


def train(model, optimizer, corpus, cfg, iters, rng, device):
    model.train()
    for it in range(iters):
        x, y = get_batch(corpus, cfg["block"], cfg["batch"], rng, device)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(f"iter {it} loss {loss.item():.4f}")


@torch.no_grad()
def generate(model, prompt, block, max_new_tokens, temperature=0.8, top_k=10):
    model.eval()
    idx = prompt
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block:])[:, -1, :] / temperature
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
        next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        if next_id.item() == EOS:
            break
        idx = torch.cat((idx, next_id), dim=1)
    return idx[0].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    rng = np.random.RandomState(args.seed)
    corpus = make_corpus(cfg["vocab"], max(2000, 4 * cfg["block"]), rng)
    model = GPT(cfg["vocab"], cfg["block"], cfg["layers"], cfg["heads"], cfg["embd"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, corpus, cfg, args.iters, rng, device)

    for s in range(args.samples):
        start = random.randint(1, cfg["vocab"] - 1)
        prompt = torch.tensor([[EOS, start]], dtype=torch.long, device=device)
        tokens = generate(model, prompt, cfg["block"], cfg["max_new"])
        print(f"sample {s} len {len(tokens)} tokens {tokens}")


if __name__ == "__main__":
    main()
