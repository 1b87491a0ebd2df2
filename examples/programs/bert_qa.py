"""BERT-QA: a small BERT encoder fine-tuned for extractive question answering.

Synthetic SQuAD-like task: each example is `[CLS] question [SEP] context [SEP]`
where the question is a short random token string that also occurs somewhere
in the (variable-length) context; the answer is that span of the context.

Python features exercised:
  * examples, padding, token-type ids and attention masks built as Python
    lists (`[1] * len(ids) + [0] * pad`) and converted with `torch.tensor`
  * variable sequence length from batch to batch
  * span decoding with `start_logits.argmax(-1).tolist()` and an exact-match
    score computed in Python
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(vocab=100, hidden=64, layers=2, heads=2, ffn=128, ctx=(16, 32), batch=16, lr=1e-3),
    "large": dict(vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, ctx=(128, 380), batch=32, lr=1e-4),
}
PAD, CLS, SEP = 0, 1, 2
DROPOUT = 0.1


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x, mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask
        probs = self.drop(scores.softmax(dim=-1))
        return self.out((probs @ v).transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x, mask):
        x = self.ln1(x + self.drop(self.attn(x, mask)))
        return self.ln2(x + self.drop(self.ffn(x)))


class BertForQA(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, ffn, max_len=512):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden, padding_idx=PAD)
        self.pos = nn.Embedding(max_len, hidden)
        self.typ = nn.Embedding(2, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(DROPOUT)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.qa_outputs = nn.Linear(hidden, 2)

    def forward(self, input_ids, token_type_ids, attention_mask):
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.drop(self.ln(self.tok(input_ids) + self.pos(pos)[None] + self.typ(token_type_ids)))
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        start_logits, end_logits = self.qa_outputs(x).unbind(dim=-1)
        return start_logits, end_logits


def make_example(cfg, rng):
    q_len = rng.randint(1, 3)
    ctx = [rng.randrange(3, cfg["vocab"]) for _ in range(rng.randint(*cfg["ctx"]))]
    question = [rng.randrange(3, cfg["vocab"]) for _ in range(q_len)]
    pos = rng.randint(0, len(ctx) - q_len)
    ctx[pos:pos + q_len] = question
    ids = [CLS] + question + [SEP] + ctx + [SEP]
    types = [0] * (q_len + 2) + [1] * (len(ctx) + 1)
    offset = q_len + 2
    return ids, types, offset + pos, offset + pos + q_len - 1


def collate(examples, device):
    max_len = max(len(ids) for ids, _, _, _ in examples)
    input_ids, token_types, masks, starts, ends = [], [], [], [], []
    for ids, types, start, end in examples:
        pad = max_len - len(ids)
        input_ids.append(ids + [PAD] * pad)
        token_types.append(types + [0] * pad)
        masks.append([1] * len(ids) + [0] * pad)
        starts.append(start)
        ends.append(end)
    def to(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    return to(input_ids), to(token_types), to(masks), starts, ends


def train(model, optimizer, cfg, iters, device, rng):
    model.train()
    for it in range(iters):
        examples = [make_example(cfg, rng) for _ in range(cfg["batch"])]
        input_ids, token_types, masks, starts, ends = collate(examples, device)
        start_logits, end_logits = model(input_ids, token_types, masks)
        loss = (F.cross_entropy(start_logits, torch.tensor(starts, device=device)) +
                F.cross_entropy(end_logits, torch.tensor(ends, device=device))) / 2
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

        pred_starts = start_logits.argmax(-1).tolist()
        pred_ends = end_logits.argmax(-1).tolist()
        exact = sum(int(ps == s and pe == e)
                    for ps, pe, s, e in zip(pred_starts, pred_ends, starts, ends))
        answer = input_ids[0, pred_starts[0]:pred_ends[0] + 1].tolist()
        print(f"iter {it} seq_len {input_ids.size(1)} loss {loss.item():.4f} "
              f"em {exact / len(starts):.4f} span0 ({pred_starts[0]},{pred_ends[0]}) answer0 {answer}")


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
    model = BertForQA(cfg["vocab"], cfg["hidden"], cfg["layers"], cfg["heads"], cfg["ffn"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, cfg, args.iters, device, random.Random(args.seed))


if __name__ == "__main__":
    main()
