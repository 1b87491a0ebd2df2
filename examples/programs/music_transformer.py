"""Music Transformer: a decoder-only transformer with relative global attention
(Huang et al. 2018, memory-efficient "skewing"), trained on synthetic
melodies and then used to generate a continuation.

A melody is a walk on a random major scale; the event vocabulary is
note-on pitch tokens followed by time-shift tokens.

Python features exercised:
  * data augmentation gated by `random.uniform` (random pitch transposition)
  * generation loop that fetches softmax probabilities to numpy and samples
    the next event with `numpy.random.choice(..., p=probs)`
  * a `random.uniform` branch in generation choosing greedy argmax vs
    sampling for each step
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(pitches=24, shifts=8, d=64, heads=2, layers=2, seq=48, batch=16, gen=32),
    "large": dict(pitches=128, shifts=100, d=512, heads=8, layers=6, seq=1024, batch=8, gen=512),
}
MAJOR = (0, 2, 4, 5, 7, 9, 11)
DROPOUT = 0.1


class RelativeGlobalAttention(nn.Module):
    def __init__(self, d, heads, max_seq):
        super().__init__()
        self.h, self.dh, self.max_seq = heads, d // heads, max_seq
        self.Wq, self.Wk, self.Wv = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc = nn.Linear(d, d)
        self.Er = nn.Parameter(torch.randn(max_seq, self.dh) * 0.02)
        self.drop = nn.Dropout(DROPOUT)

    @staticmethod
    def skew(qe):
        padded = F.pad(qe, (1, 0))
        B, H, T, T1 = padded.shape
        return padded.reshape(B, H, T1, T)[:, :, 1:, :]

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (w(x).view(B, T, self.h, self.dh).transpose(1, 2) for w in (self.Wq, self.Wk, self.Wv))
        Er = self.Er[self.max_seq - T:]
        srel = self.skew(q @ Er.transpose(0, 1))
        att = (q @ k.transpose(-2, -1) + srel) / math.sqrt(self.dh)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = self.drop(att.masked_fill(~causal, float("-inf")).softmax(-1))
        return self.fc((att @ v).transpose(1, 2).reshape(B, T, C))


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, max_seq):
        super().__init__()
        self.attn = RelativeGlobalAttention(d, heads, max_seq)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        x = self.ln1(x + self.drop(self.attn(x)))
        return self.ln2(x + self.drop(self.ffn(x)))


class MusicTransformer(nn.Module):
    def __init__(self, vocab, d, heads, layers, max_seq):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(DecoderLayer(d, heads, max_seq) for _ in range(layers))
        self.out = nn.Linear(d, vocab)

    def forward(self, x):
        h = self.embed(x) * math.sqrt(self.d)
        for layer in self.layers:
            h = layer(h)
        return self.out(h)


def make_melodies(cfg, n, rng):
    melodies = []
    for _ in range(n):
        root, degree, events = rng.randrange(12), rng.randrange(7), []
        for _ in range(cfg["seq"] + 1):
            degree = min(max(degree + rng.choice([-2, -1, 1, 2]), 0), 13)
            pitch = root + 12 * (degree // 7) + MAJOR[degree % 7]
            events += [pitch % cfg["pitches"], cfg["pitches"] + rng.randrange(cfg["shifts"])]
        melodies.append(events)
    return melodies


def get_batch(melodies, cfg, device):
    rows = []
    for _ in range(cfg["batch"]):
        events = random.choice(melodies)
        start = random.randint(0, len(events) - cfg["seq"] - 1) // 2 * 2
        crop = events[start:start + cfg["seq"] + 1]
        if random.uniform(0, 1) < 0.5:  # pitch transposition augmentation
            shift = random.randint(-3, 3)
            crop = [(e + shift) % cfg["pitches"] if e < cfg["pitches"] else e for e in crop]
        rows.append(crop)
    batch = torch.tensor(rows, dtype=torch.long, device=device)
    return batch[:, :-1], batch[:, 1:]


def train(model, optimizer, melodies, cfg, iters, device):
    model.train()
    for it in range(iters):
        x, y = get_batch(melodies, cfg, device)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (logits.argmax(-1) == y).float().mean().item()
        print(f"iter {it} loss {loss.item():.4f} acc {acc:.4f}")


@torch.no_grad()
def generate(model, primer, length, max_seq, device, temperature=1.0, argmax_rate=0.3):
    model.eval()
    seq = list(primer)
    for _ in range(length):
        x = torch.tensor([seq[-max_seq:]], dtype=torch.long, device=device)
        logits = model(x)[0, -1] / temperature
        probs = F.softmax(logits, dim=-1).cpu().numpy().astype(np.float64)
        probs /= probs.sum()
        if random.uniform(0, 1) < argmax_rate:
            event = int(np.argmax(probs))
        else:
            event = int(np.random.choice(len(probs), p=probs))
        seq.append(event)
    return seq


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    vocab = cfg["pitches"] + cfg["shifts"]
    melodies = make_melodies(cfg, 64, random.Random(args.seed))
    model = MusicTransformer(vocab, cfg["d"], cfg["heads"], cfg["layers"], cfg["seq"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, melodies, cfg, args.iters, device)

    primer = melodies[0][:8]
    events = generate(model, primer, cfg["gen"], cfg["seq"], device)
    print(f"generated {len(events) - len(primer)} events: {events[len(primer):]}")


if __name__ == "__main__":
    main()
