"""SDPoint: a ResNet trained with stochastic downsampling (Kuen et al., CVPR 2018).

Every training iteration a random "downsampling point" (a residual block
index, or none) and a random downsampling ratio are drawn; the feature map
is resized by that ratio just before the chosen block.  The network ends in
global average pooling, so any spatial size works.  Data is synthetic
(class templates + noise from a seeded numpy RNG).

Python features exercised:
  * `random.randint` picks the block index and the downsampling ratio every
    iteration, so the tensor shapes seen by the later blocks vary from step
    to step
  * Python control flow inside `forward` that depends on those Python ints
  * a plain evaluation pass without stochastic downsampling at the end
"""
import argparse
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(img=24, width=8, blocks=(1, 1, 1), classes=10, batch=16),
    "large": dict(img=224, width=64, blocks=(3, 4, 6, 3), classes=100, batch=64),
}
SD_RATIOS = (0.5, 0.75)


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


class SDPointResNet(nn.Module):
    def __init__(self, width, blocks, classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.blocks, cin = nn.ModuleList(), width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                self.blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.fc = nn.Linear(cin, classes)

    def forward(self, x, sd_index=None, sd_ratio=1.0):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i == sd_index:
                x = F.interpolate(x, scale_factor=sd_ratio, mode="bilinear",
                                  align_corners=False, recompute_scale_factor=True)
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def make_data(cfg, n_batches, rng):
    templates = rng.randn(cfg["classes"], 3, cfg["img"], cfg["img"]).astype(np.float32)
    batches = []
    for _ in range(n_batches):
        y = rng.randint(0, cfg["classes"], size=cfg["batch"])
        x = templates[y] + 1.5 * rng.randn(*templates[y].shape).astype(np.float32)
        batches.append((torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))))
    return batches


def train(model, optimizer, data, iters, device, n_blocks):
    model.train()
    for it in range(iters):
        images, labels = data[it % len(data)]
        images, labels = images.to(device), labels.to(device)
        # index == n_blocks means "no downsampling this iteration"
        sd_index = random.randint(0, n_blocks)
        sd_ratio = SD_RATIOS[random.randint(0, len(SD_RATIOS) - 1)]
        logits = model(images, sd_index, sd_ratio)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        acc = (logits.argmax(1) == labels).float().mean().item()
        point = "none" if sd_index == n_blocks else f"block{sd_index}@{sd_ratio}"
        print(f"iter {it} sdpoint {point} loss {loss.item():.4f} acc {acc:.4f}")


@torch.no_grad()
def evaluate(model, data, device):
    model.eval()
    correct, total = 0, 0
    for images, labels in data:
        logits = model(images.to(device))
        correct += (logits.argmax(1) == labels.to(device)).sum().item()
        total += labels.numel()
    return correct / total


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
    rng = np.random.RandomState(args.seed)
    train_data, val_data = make_data(cfg, 8, rng), make_data(cfg, 2, rng)
    model = SDPointResNet(cfg["width"], cfg["blocks"], cfg["classes"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, train_data, args.iters, device, sum(cfg["blocks"]))
    print(f"val acc {evaluate(model, val_data, device):.4f}")


if __name__ == "__main__":
    main()
