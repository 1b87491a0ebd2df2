"""DropBlock: a CNN regularised with DropBlock (Ghiasi et al. 2018), whose
drop probability is linearly ramped up during training.

The DropBlock module and the LinearScheduler follow the widely used
`dropblock` package; data is synthetic (class templates + noise).

Python features exercised:
  * `drop_prob` comes from a `numpy.linspace` schedule and changes every step;
    the scheduler writes it as a Python float into the DropBlock module
  * Python branches in `forward` on module state (`self.training`,
    `self.drop_prob == 0.0`, even/odd block size)
  * a random Bernoulli seed mask whose normalisation uses the data-dependent
    number of kept units
"""
import argparse
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(img=16, width=8, classes=10, batch=16, block_size=3),
    "large": dict(img=64, width=64, classes=100, batch=128, block_size=5),
}


class DropBlock2D(nn.Module):
    def __init__(self, drop_prob, block_size):
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / (self.block_size ** 2)
        mask = (torch.rand(x.shape[0], *x.shape[2:], device=x.device) < gamma).float()
        block_mask = self._compute_block_mask(mask)
        out = x * block_mask[:, None, :, :]
        return out * block_mask.numel() / block_mask.sum()

    def _compute_block_mask(self, mask):
        block_mask = F.max_pool2d(mask[:, None, :, :], kernel_size=self.block_size,
                                  stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            block_mask = block_mask[:, :, :-1, :-1]
        return 1 - block_mask.squeeze(1)


class LinearScheduler(nn.Module):
    def __init__(self, dropblock, start_value, stop_value, nr_steps):
        super().__init__()
        self.dropblock = dropblock
        self.i = 0
        self.drop_values = np.linspace(start=start_value, stop=stop_value, num=int(nr_steps))

    def forward(self, x):
        return self.dropblock(x)

    def step(self):
        if self.i < len(self.drop_values):
            self.dropblock.drop_prob = float(self.drop_values[self.i])
        self.i += 1


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DropBlockNet(nn.Module):
    def __init__(self, width, classes, block_size, drop_prob, nr_steps):
        super().__init__()
        self.dropblock = LinearScheduler(DropBlock2D(0.0, block_size), 0.0, drop_prob, nr_steps)
        self.layer1 = nn.Sequential(conv_bn(3, width), conv_bn(width, width))
        self.layer2 = nn.Sequential(conv_bn(width, 2 * width, 2), conv_bn(2 * width, 2 * width))
        self.layer3 = nn.Sequential(conv_bn(2 * width, 4 * width, 2), conv_bn(4 * width, 4 * width))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.layer1(x)
        x = self.dropblock(self.layer2(x))
        x = self.dropblock(self.layer3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_data(cfg, n_batches, rng):
    templates = rng.randn(cfg["classes"], 3, cfg["img"], cfg["img"]).astype(np.float32)
    batches = []
    for _ in range(n_batches):
        y = rng.randint(0, cfg["classes"], size=cfg["batch"])
        x = templates[y] + 1.5 * rng.randn(*templates[y].shape).astype(np.float32)
        batches.append((torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))))
    return batches


def train(model, scheduler, optimizer, data, iters, device):
    model.train()
    for it in range(iters):
        images, labels = data[it % len(data)]
        images, labels = images.to(device), labels.to(device)
        scheduler.step()  # writes drop_values[it] (a Python float) into the DropBlock module
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (logits.argmax(1) == labels).float().mean().item()
        print(f"iter {it} drop_prob {scheduler.dropblock.drop_prob:.4f} "
              f"loss {loss.item():.4f} acc {acc:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="small", choices=["small", "large"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--drop-prob", type=float, default=0.1)
    args = parser.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    cfg = SIZES[args.size]
    device = torch.device(args.device)
    data = make_data(cfg, 8, np.random.RandomState(args.seed))
    model = DropBlockNet(cfg["width"], cfg["classes"], cfg["block_size"],
                         args.drop_prob, args.iters).to(device)
    scheduler = model.dropblock
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if args.compile:
        model = torch.compile(model)
    train(model, scheduler, optimizer, data, args.iters, device)


if __name__ == "__main__":
    main()
