"""ResNet: a small ResNet-style CNN with BatchNorm trained on synthetic images.

Each class has a fixed random template; samples are template + noise, drawn
from a seeded numpy RNG.

Python features exercised:
  * a tqdm progress bar over the batches (falls back to plain iteration when
    tqdm is not installed); the bar goes to stderr, metrics to stdout
  * Python-side metric accumulation: running loss / accuracy kept in Python
    floats and ints via `.item()`
  * a warmup + cosine learning-rate schedule computed as a Python float and
    written into `optimizer.param_groups` every step
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from tqdm import tqdm
except ImportError:  # plain iteration without a progress bar
    tqdm = None

SIZES = {
    "small": dict(img=16, width=8, blocks=(1, 1, 1), classes=10, batch=16),
    "large": dict(img=64, width=64, blocks=(2, 2, 2, 2), classes=100, batch=128),
}


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, width, blocks, classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def make_loader(cfg, iters, rng):
    """Yields `iters` (images, labels) batches of template + noise images."""
    templates = rng.randn(cfg["classes"], 3, cfg["img"], cfg["img"]).astype(np.float32)
    for _ in range(iters):
        y = rng.randint(0, cfg["classes"], size=cfg["batch"])
        x = templates[y] + 1.5 * rng.randn(*templates[y].shape).astype(np.float32)
        yield torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def lr_at(step, total, base_lr, warmup):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def train(model, optimizer, loader, iters, device, base_lr):
    model.train()
    running_loss, correct, seen = 0.0, 0, 0
    log = tqdm.write if tqdm is not None else print
    bar = tqdm(loader, total=iters, desc="train") if tqdm is not None else loader
    warmup = max(1, iters // 10)
    for step, (images, labels) in enumerate(bar):
        lr = lr_at(step, iters, base_lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()

        bs = labels.size(0)
        running_loss += loss.item() * bs
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += bs
        if tqdm is not None:
            bar.set_postfix(loss=f"{running_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        log(f"iter {step} lr {lr:.6f} loss {loss.item():.4f} "
            f"avg_loss {running_loss / seen:.4f} acc {correct / seen:.4f}")
    return running_loss / max(1, seen), correct / max(1, seen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    model = ResNet(cfg["width"], cfg["blocks"], cfg["classes"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=5e-4, nesterov=True)
    if args.compile:
        model = torch.compile(model)
    loader = make_loader(cfg, args.iters, np.random.RandomState(args.seed))
    avg_loss, acc = train(model, optimizer, loader, args.iters, device, args.lr)
    print(f"final avg_loss {avg_loss:.4f} acc {acc:.4f}")


if __name__ == "__main__":
    main()
