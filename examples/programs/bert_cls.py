"""BERT-CLS: a small BERT encoder trained for sequence classification, with
validation and patience-based early stopping.

Synthetic sentiment-like task: variable-length token sequences drawn from a
vocabulary containing a "positive" and a "negative" word list; the label is
whichever list contributes more tokens.

Python features exercised:
  * accuracy computed with `.item()` every step
  * validation every `--eval-every` steps and patience-based early stopping:
    the loop `break`s when a Python condition on fetched values holds (the
    run length depends only on the seed, so output is deterministic)
  * padding and attention masks built from Python lists
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(vocab=100, hidden=64, layers=2, heads=2, ffn=128, seq=(8, 24), batch=16, lr=1e-3),
    "large": dict(vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, seq=(64, 256), batch=32, lr=5e-5),
}
PAD, CLS = 0, 1
DROPOUT = 0.1


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask
        att = self.drop(att.softmax(-1))
        x = self.ln1(x + self.drop(self.proj((att @ v).transpose(1, 2).reshape(B, T, C))))
        return self.ln2(x + self.drop(self.ffn(x)))


class BertForSequenceClassification(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, ffn, num_labels=2, max_len=512):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(DROPOUT)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.drop(self.ln(self.tok(input_ids) + self.pos(pos)[None]))
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(self.drop(pooled))


def make_batch(cfg, rng, device):
    n_words = (cfg["vocab"] - 2) // 4
    positive = range(2, 2 + n_words)
    negative = range(2 + n_words, 2 + 2 * n_words)
    seqs, labels = [], []
    for _ in range(cfg["batch"]):
        length = rng.randint(*cfg["seq"])
        seq = [rng.randrange(2, cfg["vocab"]) for _ in range(length)]
        n_pos = sum(t in positive for t in seq)
        n_neg = sum(t in negative for t in seq)
        seqs.append([CLS] + seq)
        labels.append(1 if n_pos > n_neg else 0)
    max_len = max(len(s) for s in seqs)
    ids = [s + [PAD] * (max_len - len(s)) for s in seqs]
    mask = [[1] * len(s) + [0] * (max_len - len(s)) for s in seqs]
    return (torch.tensor(ids, device=device), torch.tensor(mask, device=device),
            torch.tensor(labels, device=device))


@torch.no_grad()
def evaluate(model, val_batches):
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for ids, mask, labels in val_batches:
        logits = model(ids, mask)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        n += labels.numel()
    model.train()
    return total_loss / n, correct / n


def train(model, optimizer, cfg, iters, device, rng, val_batches, eval_every, patience):
    model.train()
    best_loss, bad_evals = float("inf"), 0
    for it in range(iters):
        ids, mask, labels = make_batch(cfg, rng, device)
        logits = model(ids, mask)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (logits.argmax(-1) == labels).float().mean().item()
        print(f"iter {it} loss {loss.item():.4f} acc {acc:.4f}")

        if (it + 1) % eval_every == 0:
            val_loss, val_acc = evaluate(model, val_batches)
            if val_loss < best_loss:
                best_loss, bad_evals = val_loss, 0
            else:
                bad_evals += 1
            print(f"eval iter {it} val_loss {val_loss:.4f} val_acc {val_acc:.4f} "
                  f"best {best_loss:.4f} bad_evals {bad_evals}")
            if bad_evals >= patience:
                print(f"early stopping at iter {it}")
                break
    return best_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    rng = random.Random(args.seed)
    val_batches = [make_batch(cfg, rng, device) for _ in range(2)]
    model = BertForSequenceClassification(cfg["vocab"], cfg["hidden"], cfg["layers"],
                                          cfg["heads"], cfg["ffn"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    if args.compile:
        model = torch.compile(model)
    best = train(model, optimizer, cfg, args.iters, device, rng, val_batches,
                 args.eval_every, args.patience)
    val_loss, val_acc = evaluate(model, val_batches)
    print(f"final val_loss {val_loss:.4f} val_acc {val_acc:.4f} best {best:.4f}")


if __name__ == "__main__":
    main()
