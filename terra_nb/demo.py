"""The program ``terra-nb demo`` co-executes: a small classifier trained with Python in its loop.

It exercises what co-execution keeps and graph capture would break on: ``.item()`` logging,
a learning rate computed in Python every step, a Python ``random`` branch (label smoothing on
some steps), numpy on a fetched value, and an early-stopping check.
"""

DEMO_SOURCE = '''
import math, random
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0); random.seed(0); np.random.seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
xs = torch.randn(ITERS, 64, 32)
ys = torch.randint(0, 10, (ITERS, 64))
best = math.inf
for step in range(ITERS):
    for group in opt.param_groups:                       # a learning-rate schedule in Python
        group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * step / ITERS))
    logits = model(xs[step])
    smoothing = 0.1 if random.random() < 0.3 else 0.0    # a Python random branch
    loss = F.cross_entropy(logits, ys[step], label_smoothing=smoothing)
    opt.zero_grad()
    loss.backward()
    opt.step()
    value = loss.item()                                  # a fetch: Python needs the number
    best = min(best, value)
    if step % 10 == 0:
        print(f"step {step:3d}  loss {value:.4f}  best {best:.4f}  lr {np.round(opt.param_groups[0]['lr'], 4)}")
    if value < 1e-4:                                     # early stopping on a fetched value
        break
'''


def demo_source(iters: int) -> str:
    return DEMO_SOURCE.replace("ITERS", str(int(iters)))
