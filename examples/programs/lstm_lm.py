"""LSTM-LM: a word-level LSTM language model trained with truncated BPTT, in
the style of the PyTorch `word_language_model` example.

The corpus is synthetic: a token stream sampled from a sparse random Markov
chain (seeded numpy RNG), split into train / validation streams.

Python features exercised:
  * truncated backpropagation through time over a batchified stream, with a
    shorter last chunk (`seq_len = min(bptt, len(source) - 1 - i)`)
  * recursive hidden-state repackaging: `repackage_hidden` recurses over the
    (h, c) tuple calling `.detach()` on every tensor
  * manual SGD: `torch.nn.utils.clip_grad_norm_` then
    `p.data.add_(p.grad, alpha=-lr)` for every parameter
  * epoch-end validation and Python-side learning-rate annealing
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn

SIZES = {
    "small": dict(vocab=100, emb=32, hidden=64, layers=2, bptt=16, batch=8, train_rows=87, val_rows=24),
    "large": dict(vocab=33278, emb=650, hidden=650, layers=2, bptt=35, batch=20, train_rows=3000, val_rows=400),
}
DROPOUT = 0.1


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers):
        super().__init__()
        self.drop = nn.Dropout(DROPOUT)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=DROPOUT)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def make_corpus(vocab, n_tokens, rng):
    successors = rng.randint(0, vocab, size=(vocab, 3))
    tokens, t = np.empty(n_tokens, dtype=np.int64), 0
    for i in range(n_tokens):
        t = successors[t, rng.randint(0, 3)] if rng.rand() < 0.9 else rng.randint(0, vocab)
        tokens[i] = t
    return torch.from_numpy(tokens)


def batchify(data, bsz, device):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous().to(device)


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def evaluate(model, data_source, bptt, bsz, ntokens):
    model.eval()
    criterion, total_loss = nn.CrossEntropyLoss(), 0.0
    hidden = model.init_hidden(bsz)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i, bptt)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * criterion(output.view(-1, ntokens), targets).item()
    return total_loss / (len(data_source) - 1)


def train(model, train_data, val_data, cfg, iters, lr, clip):
    criterion, ntokens, bptt = nn.CrossEntropyLoss(), cfg["vocab"], cfg["bptt"]
    step, epoch, best_val = 0, 0, None
    while step < iters:
        epoch += 1
        model.train()
        hidden = model.init_hidden(cfg["batch"])
        for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
            if step >= iters:
                break
            data, targets = get_batch(train_data, i, bptt)
            # Starting each batch, detach the hidden state from how it was previously produced.
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = criterion(output.view(-1, ntokens), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            cur = loss.item()
            print(f"iter {step} epoch {epoch} batch {batch} seq_len {len(data)} lr {lr:.4f} "
                  f"loss {cur:.4f} ppl {math.exp(cur):.4f}")
            step += 1
        else:  # finished a whole epoch: validate and anneal
            val_loss = evaluate(model, val_data, bptt, cfg["batch"], ntokens)
            print(f"end of epoch {epoch} val_loss {val_loss:.4f} val_ppl {math.exp(val_loss):.4f}")
            if best_val is None or val_loss < best_val:
                best_val = val_loss
            else:
                lr /= 4.0
    return best_val


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lr", type=float, default=20.0)
    parser.add_argument("--clip", type=float, default=0.25)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    rng = np.random.RandomState(args.seed)
    rows = cfg["train_rows"] + cfg["val_rows"]
    corpus = make_corpus(cfg["vocab"], rows * cfg["batch"], rng)
    split = cfg["train_rows"] * cfg["batch"]
    train_data = batchify(corpus[:split], cfg["batch"], device)
    val_data = batchify(corpus[split:], cfg["batch"], device)
    model = RNNModel(cfg["vocab"], cfg["emb"], cfg["hidden"], cfg["layers"]).to(device)
    if args.compile:
        model = torch.compile(model)
    best = train(model, train_data, val_data, cfg, args.iters, args.lr, args.clip)
    if best is not None:
        print(f"best val_loss {best:.4f}")


if __name__ == "__main__":
    main()
