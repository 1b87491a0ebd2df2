"""Differential tests: each program run eagerly and co-executed prints and leaves the same.

With the ``eager`` backend the final state must be bitwise equal; every case must also show
co-executed iterations in the event log (a run where everything fell back proves nothing).
"""

import contextlib
import io
import re
import textwrap
import traceback
import unittest.mock

import pytest
import torch

import terra_nb
from terra_nb.runtime import coexec
from terra_nb.trace.location import drop_engine_frames

from differential import (
    INDEX_ERROR_IN_A_FUNCTION,
    assert_same_state,
    check_cells,
    check_program,
    run_eager,
    run_terra,
    state_of,
)

PRELUDE = """
import math, random, statistics
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0); random.seed(0); np.random.seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(12)]
"""


def run_eager_raising(source: str) -> tuple[str, dict]:
    """What ``source`` prints eagerly before it raises, and its namespace (its error as ``error``)."""
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(Exception) as info:
        exec(compile(source, "<eager>", "exec"), namespace)
    namespace["error"] = info.value
    return out.getvalue(), namespace


CASES = {
    "data_of_another_shape_or_dtype_set_on_results": """
for i, (x, y) in enumerate(data):
    w = model[0](x).detach()
    w.data = torch.arange(6.0) * i  # another shape: the future takes it
    v = model[0](x).detach()
    v.data = v.data.double()  # another dtype
    u = (v * 2 + 1).sum()
    r = model(x).detach()
    r.resize_(10, 3)  # more elements than it was made with (two new rows)
    r[8:] = 1.0
    loss = F.cross_entropy(model(x), y) + w.sum() * 0
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, w.shape, w.sum().item(), v.dtype, u.dtype, round(u.item(), 4), r.shape, r.t().contiguous().shape, r[9].sum().item())
""",
    "requires_grad_set_on_an_input_each_step": """
for i, (x, y) in enumerate(data):
    x = x * 1.0  # a result of the engine's
    x.requires_grad = True  # a setter: it returns None, and changes the tensor's requires_grad
    flag = x.requires_grad
    h = model[0](x)
    h.retain_grad()
    loss = F.cross_entropy(model[2](h.relu()), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, flag, x.is_leaf, round(x.grad.abs().sum().item(), 5), round(h.grad.abs().sum().item(), 5))
""",
    "index_errors_the_program_catches": """
emb = nn.Embedding(10, 6)
opt.add_param_group({"params": emb.parameters()})
skipped = []
for i in range(20):
    ids = torch.randint(0, 10 + (i % 7 == 6) * 5, (8,))  # now and then an id past the table
    try:
        h = model(emb(ids))
        y = torch.randint(0, 3 + (i % 5 == 4) * 3, (8,))  # now and then a class past the head
        loss = F.cross_entropy(h, y)
        picked = h[torch.tensor([0, 1, 2 + (i == 11) * 9])]
    except (IndexError, RuntimeError) as err:
        skipped.append((i, type(err).__name__))
        continue
    opt.zero_grad(); (loss + picked.mean()).backward(); opt.step()
    print(i, round(loss.item(), 5))
print(skipped)
""",
    "reading_until_an_index_error": """
xs = torch.randn(30, 6)
i, total = 0, 0.0
while True:
    try:
        x = xs[i * 2]  # the index is a feed once it varies: past the end it must still raise here
    except IndexError:
        break
    total += model(x).sum().item()
    i += 1
print(i, round(total, 4))
""",
    "int_arguments_that_decide_shapes": """
emb = nn.Embedding(10, 3)
eopt = torch.optim.SGD(emb.parameters(), lr=0.1)
grid = torch.randn(4, 6)
for i in range(16):
    b = 4 if i < 8 else random.choice([2, 3, 5])  # the same size for the first iterations, then not
    idx = torch.randint(0, 10, (b,))  # its bounds may vary freely; its size decides the shape
    picked = grid.index_select(0 if i < 8 else i % 2, torch.tensor([0, 2, 3]))
    loss = emb(idx).pow(2).sum() + picked.sum()
    eopt.zero_grad(); loss.backward(); eopt.step()
    print(i, b, tuple(idx.shape), tuple(picked.shape), round(loss.item(), 4))
""",
    "nested_tensors_of_the_program": """
for i, (x, y) in enumerate(data):
    out = model(x)
    rows = [out[: 2 + i % 3], out[5:]]  # ragged: one nested tensor of two lengths
    nt = torch.nested.nested_tensor([r.detach() for r in rows])
    padded = nt.to_padded_tensor(0.0)
    loss = F.cross_entropy(out, y) + padded.mean().detach() * 0
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, tuple(padded.shape), nt.is_nested, round(padded.sum().item(), 4))
""",
    "subclass_made_from_a_result": """
class Tagged(torch.Tensor):
    pass
for i, (x, y) in enumerate(data):
    out = model(x)
    tagged = torch.Tensor._make_subclass(Tagged, out.detach())  # as a library's subclass is made
    kept = nn.Buffer(out.detach() * 2)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, type(tagged).__name__, round(tagged.sum().item(), 4), round(kept.sum().item(), 4))
""",
    "objects_made_anew_each_step": """
import functools
from torch.utils.checkpoint import checkpoint
rng = np.random.default_rng(0)
for i, (x, y) in enumerate(data):
    x.requires_grad_(True)
    # a partial made anew each step, and a numpy index array: keyed by identity or unhashable, each
    # call was a new node, and the loop traced or fell back every iteration, never co-executed
    h = checkpoint(functools.partial(model, ), x, use_reentrant=True)
    picked = rng.permutation(8)[:5]
    loss = F.cross_entropy(h[picked], y[picked])
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, picked.tolist(), round(loss.item(), 4))
""",
    "dlpack_export": """
from torch.utils import dlpack
for i, (x, y) in enumerate(data):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
    shared = torch.from_dlpack(dlpack.to_dlpack(out.detach() * 2))  # another library's view of it
    other = dlpack.from_dlpack(torch.to_dlpack(out.detach() + 1))
    print(i, round(shared.sum().item(), 4), round(other.max().item(), 4), np.from_dlpack(out.detach()).shape)
""",
    "float_arguments_that_decide_shapes": """
conv = nn.Conv2d(3, 4, 3, padding=1)
copt = torch.optim.SGD(conv.parameters(), lr=0.05)
for i in range(12):
    s = random.choice([0.5, 1.0, 1.0, 1.5])  # a random rescale: its float decides the output shape
    x = F.interpolate(torch.randn(2, 3, 8, 8), scale_factor=s, mode="bilinear", align_corners=False)
    theta = torch.eye(2, 3).expand(2, 2, 3) + 0.05 * torch.randn(2, 2, 3)
    x = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    t = torch.arange(0.0, s * 2, 0.25)
    loss = conv(x).pow(2).mean() + t.sum() * 0
    copt.zero_grad(); loss.backward(); copt.step()
    print(i, s, tuple(x.shape), len(t), round(loss.item(), 5))
""",
    "shapes_from_tensor_values": """
for i, (x, y) in enumerate(data):
    n = (y.sum() % 5) + 2
    idx, = torch.where(x[:, 0] > 0)
    pos = torch.arange(n)
    hot = F.one_hot(y[: 2 + i % 3])  # as wide as the largest label + 1
    parts = torch.tensor_split(x, torch.tensor([1, 1 + i % 4]))
    loss = F.cross_entropy(model(x[:n]), y[:n]) + x[idx].sum() * 0 + pos.sum() * 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, idx.shape[0], pos.shape[0], tuple(hot.shape), [p.shape[0] for p in parts], round(loss.item(), 4))
""",
    "input_gradient_penalty": """
for i, (x, y) in enumerate(data):
    x = x.clone().requires_grad_(True)  # changes its input's metadata in place
    out = model(x)
    g, = torch.autograd.grad(out.sum(), x, create_graph=True)
    loss = F.cross_entropy(out, y) + 0.1 * (g.norm(2, dim=1) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, round(loss.item(), 5))
""",
    "random_factory_whose_shape_changes": """
for i in range(10):
    x = torch.randn(4, 3 + i % 4, 6)  # a shape variant of a random op: drawn once, in order
    loss = F.cross_entropy(model(x.mean(1)), data[i][1][:4])
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, round(loss.item(), 4))
""",
    "packed_sequences": """
lstm = nn.LSTM(6, 8, batch_first=True)
for i in range(10):
    lens = sorted([random.randint(2, 6) for _ in range(4)], reverse=True)
    x = torch.randn(4, 6, 6)[:, :max(lens)]
    packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True)  # its shape is sum(lens)
    out, (h, c) = lstm(packed)
    print(i, packed.data.shape[0], round(h.sum().item(), 4))
""",
    "custom_autograd_function": """
class ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        ctx.save_for_backward(x)
        return x * x
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g * ctx.alpha, None
for i, (x, y) in enumerate(data):
    h = ScaleGrad.apply(model(x), 0.5 + 0.05 * i)
    loss = F.cross_entropy(h, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, round(loss.item(), 4))
""",
    "autocast_region": """
for i, (x, y) in enumerate(data):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        with torch.autocast("cpu", enabled=False):
            check = model(x.double().float())
    loss = F.cross_entropy(out.float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, out.dtype, check.dtype, round(loss.item(), 4))
""",
    "item_in_condition": """
for i, (x, y) in enumerate(data):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if loss.item() > 1.0:
        print(i, "high")
    else:
        print(i, "low")
""",
    "break_on_fetched_value": """
for i in range(100):
    x, y = data[i % len(data)]
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if loss.item() < 0.9 or i == 40:
        print("stopped at", i)
        break
""",
    "print_tensor": """
for x, y in data[:6]:
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(loss)
    print(out[0])
""",
    "numpy_round_trip": """
for x, y in data:
    h = model(x)
    arr = h.detach().numpy()
    arr = arr - arr.mean(axis=0)
    back = torch.from_numpy(arr).float()
    loss = F.cross_entropy(h + 0.1 * back, y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(round(float(np.abs(arr).sum()), 4))
""",
    "python_random_branch": """
for x, y in data:
    out = model(x)
    if random.random() < 0.5:
        loss = F.cross_entropy(out, y)
    else:
        loss = (out ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{loss.item():.6f}")
""",
    "changing_learning_rate": """
for i, (x, y) in enumerate(data):
    for group in opt.param_groups:
        group["lr"] = 0.1 * (0.9 ** i)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{loss.item():.6f}")
""",
    "generator_batches": """
def batches(n):
    for i in range(n):
        yield data[i % len(data)]
for x, y in batches(10):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{loss.item():.6f}")
""",
    "shorter_last_batch": """
xs = torch.randn(50, 6); ys = torch.randint(0, 3, (50,))
for epoch in range(2):
    for start in range(0, 50, 16):
        x, y = xs[start:start + 16], ys[start:start + 16]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        print(epoch, start, x.shape[0], f"{loss.item():.5f}")
""",
    "math_statistics_on_floats": """
values = []
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    values.append(loss.item())
print(f"{statistics.mean(values):.6f} {math.sqrt(statistics.pvariance(values)):.6f}")
""",
    "closures_and_nested_functions": """
def make_step(scale):
    def loss_of(x, y):
        def forward(t):
            return model(t) * scale
        return F.cross_entropy(forward(x), y)
    def step(x, y):
        loss = loss_of(x, y)
        opt.zero_grad(); loss.backward(); opt.step()
        return loss
    return step
step = make_step(0.5)
for x, y in data:
    loss = step(x, y)
print(f"{loss.item():.6f}")
""",
    "module_mutates_itself": """
class Tracker(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.calls = 0
        self.last = None
    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        self.last = out.detach()
        return out
model = Tracker()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(model.calls, model.last.sum().item())
""",
    "losses_kept_across_iterations": """
losses = []
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    losses.append(loss.detach())
total = sum(losses)
print(f"{total.item():.6f}", len(losses))
""",
    "adam_tensor_step_counters": """
opt = torch.optim.Adam(model.parameters(), lr=0.01)
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{loss.item():.6f}")
""",
    "adamw_foreach_and_clip": """
opt = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=True)
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    opt.step()
print(f"{loss.item():.6f}")
""",
    "batchnorm_dropout_train_eval": """
model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for i, (x, y) in enumerate(data):
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    print(i, f"{acc.item():.4f}")
""",
    "inference_mode_and_rng": """
for i, (x, y) in enumerate(data):
    noise = torch.randn(8, 6) * 0.01
    loss = F.cross_entropy(model(x + noise), y)
    opt.zero_grad(); loss.backward(); opt.step()
    with torch.inference_mode():
        pred = model(x).softmax(-1)
    if i == 5:
        torch.manual_seed(123)
print(pred.sum().item(), torch.rand(1).item())
""",
    "in_place_and_views": """
buf = torch.zeros(8, 3)
for x, y in data:
    out = model(x)
    view = out[:, :2]
    buf.mul_(0.5).add_(out.detach())
    loss = F.cross_entropy(out, y) + view.pow(2).mean() * 0.01
    opt.zero_grad(); loss.backward(); opt.step()
buf[0, 0] = 1.0
print(buf.sum().item())
""",
    "random_from_a_generator_object": """
g = torch.Generator().manual_seed(3)
for i, (x, y) in enumerate(data):
    noise = torch.randn(x.shape, generator=g) * 0.1
    loss = F.cross_entropy(model(x + noise), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i == 6:
        g.manual_seed(11)  # no torch call: the draws before it must have been made by then
    print(i, round(loss.item(), 4))
print(torch.rand(2, generator=g))
""",
    "the_default_generators_own_methods": """
for i, (x, y) in enumerate(data):
    noise = torch.randn(8, 6) * 0.1  # (from the default generator: deferred)
    state = torch.default_generator.get_state()  # the stream after that draw, not before it
    a = torch.rand(3)
    torch.default_generator.set_state(state)
    b = torch.rand(3)
    loss = F.cross_entropy(model(x + noise), y) + (a - b).abs().sum()
    opt.zero_grad(); loss.backward(); opt.step()
    if i == 6:
        torch.default_generator.manual_seed(5)
    print(i, round(loss.item(), 4), torch.equal(a, b))
print(torch.rand(2))
""",
    "a_new_hook_function_every_iteration": """
grads = []
for i, (x, y) in enumerate(data):
    h = model[0].weight.register_hook(lambda g: grads.append(round(g.norm().item(), 4)))
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    h.remove()
    print(i, grads[-1])
""",
    "a_module_backward_hook_read_each_iteration": """
norms = []
hh = model[2].register_full_backward_hook(lambda m, gin, gout: norms.append(round(gout[0].norm().item(), 4)))
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, norms[-1], len(norms))
hh.remove()
""",
    "a_deprecated_module_backward_hook": """
import warnings
warnings.simplefilter("ignore")  # (register_backward_hook is deprecated)
outs = []
hh = model[2].register_backward_hook(lambda m, gin, gout: outs.append(round(gout[0].abs().sum().item(), 4)))
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, outs[-1], len(outs))
hh.remove()
""",
    "saved_tensor_hooks_see_what_forward_saves": """
packed = []
def pack(t):
    packed.append(tuple(t.shape))
    return t
for i, (x, y) in enumerate(data):
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = F.relu(model[0](x))
    loss = F.cross_entropy(model[2](h), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, len(packed), round(loss.item(), 4))
""",
    "checkpointed_segments_recompute_in_backward": """
from torch.utils.checkpoint import checkpoint
calls = []
def segment(x):
    calls.append(x.shape[0])
    return F.relu(model[0](x))
for reentrant in (False, True):
    for i, (x, y) in enumerate(data):
        h = checkpoint(segment, x.requires_grad_(reentrant), use_reentrant=reentrant)
        loss = F.cross_entropy(model[2](h), y)
        opt.zero_grad(); loss.backward(); opt.step()
        print(i, len(calls), round(loss.item(), 4))
""",
    "per_sample_gradients_with_torch_func": """
from torch.func import functional_call, grad, vmap
params = {k: v.detach() for k, v in model.named_parameters()}
def sample_loss(p, x, y):
    return F.cross_entropy(functional_call(model, p, (x[None],)), y[None])
for i, (x, y) in enumerate(data):
    g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.stack([v.flatten(1).norm(dim=1) for v in g.values()]).sum(0)
    loss = F.cross_entropy(model(x), y) + 0.01 * norms.mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, [round(v, 4) for v in norms.tolist()[:3]], round(loss.item(), 4))
""",
    "a_maml_inner_step_and_random_vmap": """
from torch.func import functional_call, grad, hessian, vmap
params = dict(model.named_parameters())
def task_loss(p, x, y):
    return F.cross_entropy(functional_call(model, p, (x,)), y)
for i, (x, y) in enumerate(data):
    noise = torch.randn(8, 6)  # deferred: drawn before the dropout masks inside vmap, as in eager
    x = vmap(lambda r: F.dropout(r, 0.3), randomness="different")(x + noise)
    g = grad(task_loss)(params, x[:4], y[:4])
    fast = {k: v - 0.1 * g[k] for k, v in params.items()}
    loss = task_loss(fast, x[4:], y[4:]) + torch.rand(()) * 0
    H = hessian(lambda v: (v.sin() * v).sum())(x[0])
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 4), round(H.trace().item(), 4))
""",
    "sparse_embedding_gradients_and_sparse_adam": """
emb = nn.Embedding(20, 4, sparse=True)
sparse_opt = torch.optim.SparseAdam(emb.parameters(), lr=0.01)
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x) + emb(y + i).sum(1, keepdim=True), y)
    opt.zero_grad(); sparse_opt.zero_grad()
    loss.backward()
    opt.step(); sparse_opt.step()
    print(i, round(loss.item(), 4), emb.weight.grad.is_sparse, emb.weight.grad._nnz())
""",
    "a_recursive_model_over_random_trees": """
cell = nn.Linear(12, 6)
leaf = nn.Parameter(torch.randn(6))
tree_opt = torch.optim.SGD([*cell.parameters(), leaf], lr=0.05)
def build(depth):  # no children at all, now and then: the cell gets no .grad that iteration
    return None if depth == 0 or random.random() < 0.4 else (build(depth - 1), build(depth - 1))
def encode(t):
    return leaf if t is None else torch.tanh(cell(torch.cat([encode(t[0]), encode(t[1])])))
for i in range(30):
    h = encode(build(2))
    loss = (h - 0.5).pow(2).sum()
    tree_opt.zero_grad(); loss.backward(); tree_opt.step()
    print(i, round(loss.item(), 5), cell.weight.grad is None)
""",
    "python_ints_in_arithmetic_each_iteration": """
for i, (x, y) in enumerate(data):
    offset = torch.arange(8) + i * 8          # an int that changes every iteration: a feed
    w = (x * (i + 1)).clamp(-i - 1, i + 1) ** (1 + i % 2)
    loss = F.cross_entropy(model(w / (i + 2)), y) + (offset % 3 == i % 3).sum() * 0
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, offset[-1].item(), round(loss.item(), 4))
""",
    "in_place_requires_grad_and_detach_on_results": """
for i, (x, y) in enumerate(data):
    h = model[0](x)
    k = h.detach().clone()
    same = k.requires_grad_() is k          # in place: k itself, now requiring grad
    (k * 2).sum().backward()
    h2 = F.relu(h)
    loss = F.cross_entropy(model[2](h2), y)
    opt.zero_grad(); loss.backward(); opt.step()
    h2.detach_()
    print(i, same, k.requires_grad, k.grad.sum().item(), h2.requires_grad, round(loss.item(), 4))
""",
    "in_place_shape_changes_on_results": """
held = []
for i, (x, y) in enumerate(data):
    h = model[0](x)
    h.unsqueeze_(0)                       # in place: the program keeps h, now (1, 8, 16)
    g = model[0](x).detach()
    g.t_()
    held.append(h)
    loss = F.cross_entropy(model[2](F.relu(h[0])), y) + g.sum() * 0
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, tuple(h.shape), tuple(g.shape), g.stride(), round(loss.item(), 4))
print(round(sum(t.sum() for t in held).item(), 3))
""",
    "attention_and_an_encoder_in_eval_take_torchs_fast_path": """
mha = nn.MultiheadAttention(8, 2, batch_first=True)
enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2)
mha.eval(); enc.eval()
for i in range(6):
    x = torch.randn(3, 5, 8)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3 + i % 2:] = True                # padded: the nested-tensor path leaves zeros there
    with torch.no_grad():
        a, w = mha(x, x, x)
        out = enc(x + a, src_key_padding_mask=mask)
    loss = F.cross_entropy(model(x[:, 0, :6]), y := torch.randint(0, 3, (3,)))
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, out.sum().item(), out[0, -1].abs().sum().item(), a.sum().item(), round(loss.item(), 4))
""",
    "a_linalg_error_the_program_catches": """
A = torch.randn(12, 4, 4)
for i in range(12):
    K = A[i] @ A[i].T - (0.6 if i % 4 == 3 else -0.1) * torch.eye(4)
    eps = 0.0
    while True:
        try:
            L = torch.linalg.cholesky(K + eps * torch.eye(4))
            break
        except torch.linalg.LinAlgError:  # not positive-definite: add jitter, as GP code does
            eps = 1e-3 if eps == 0.0 else eps * 10
    with torch.no_grad():
        y = model(A[i, :, :3].repeat(2, 2)[:, :6])
    print(i, eps, round(L.diagonal().sum().item(), 4), y.shape)
""",
    "a_deep_copy_of_the_loss_each_iteration": """
import copy
best, best_loss = None, float("inf")
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    kept = copy.deepcopy(loss.detach())  # Tensor.__deepcopy__(memo): a new memo dict each call
    if kept.item() < best_loss:
        best, best_loss = kept, kept.item()
    print(i, round(best_loss, 5))
print(best)
""",
    "a_torch_compiled_model": """
compiled = torch.compile(model, backend="eager")  # runs as its Python inside the cell
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(compiled(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 4))
""",
    "a_shuffling_dataloader": """
from torch.utils.data import TensorDataset, DataLoader
loader = DataLoader(TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,))), batch_size=8, shuffle=True)
for epoch in range(3):
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    print(epoch, round(loss.item(), 4))
""",
    "manual_sgd_on_data": """
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.1)
print(f"{loss.item():.6f}")
""",
    "a_tensor_subclass_of_the_programs": """
class Tagged(torch.Tensor):  # torch's default __torch_function__ makes every result a Tagged
    pass
for i, (x, y) in enumerate(data):
    xt = (x * 2).as_subclass(Tagged) if i % 3 else x * 2  # (as_subclass: no torch function)
    out = model(xt)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, isinstance(xt, Tagged), isinstance(out, Tagged), isinstance(loss, Tagged), round(loss.item(), 4))
del xt, out, loss  # (each run defines its own Tagged: torch.equal cannot compare them)
""",
    "a_thread_logging_losses_from_a_queue": """
import threading, queue
q = queue.Queue(); seen = []
def consume():  # another thread reads the results the loop hands it, while the loop goes on
    while (item := q.get()) is not None:
        i, loss, w = item
        seen.append((i, round(loss.item(), 4), round((w * 2).sum().item(), 4)))
th = threading.Thread(target=consume); th.start()
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    q.put((i, loss.detach(), model[0].weight.detach().clone()))
q.put(None); th.join()
print(seen)
""",
    "a_thread_pool_computing_metrics": """
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)
futs = []
for i, (x, y) in enumerate(data):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
    futs.append(pool.submit(lambda o, t: (o.argmax(1) == t).float().mean().item(), out.detach(), y))
print([round(f.result(), 4) for f in futs])  # the program waits for the pool, the pool for a value
pool.shutdown()
""",
}


@pytest.mark.parametrize("runner", ["auto", "thread"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_eager(name, runner):
    """``auto`` runs these CPU blocks in the program's thread; ``thread`` on the GraphRunner's."""
    check_program(PRELUDE + CASES[name], runner=runner)


def test_cpu_blocks_run_where_the_placement_says(monkeypatch):
    import threading

    from terra_nb.runtime.runner import GraphRunner

    threads: list = []
    execute = GraphRunner._execute

    def recording(self, run):
        threads.append(threading.get_ident())
        return execute(self, run)

    monkeypatch.setattr(GraphRunner, "_execute", recording)
    for runner, on_program_thread in (("auto", True), ("inline", True), ("thread", False)):
        threads.clear()
        session = check_program(PRELUDE + CASES["print_tensor"], runner=runner)
        assert threads, "no block ran"
        main = threading.get_ident()
        if on_program_thread:
            assert set(threads) == {main}, runner
        else:  # (a sync that finds the runner idle still runs the pending block itself)
            assert session.executor.runner._thread.ident in threads, runner


def test_user_exception_in_iteration_k_leaves_eager_state():
    body = """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i)
    if i == 7:
        raise KeyError("stop at seven")
"""
    from differential import assert_same_state, run_eager, state_of

    with pytest.raises(KeyError, match="stop at seven"):
        run_eager(PRELUDE + body)
    eager_ns: dict = {"__name__": "__main__"}
    with pytest.raises(KeyError):
        exec(compile(PRELUDE + body, "<eager>", "exec"), eager_ns)
    import terra_nb

    session = terra_nb.Session()
    terra_ns: dict = {"__name__": "__main__"}
    with pytest.raises(KeyError, match="stop at seven") as info:
        session.run_cell(PRELUDE + body, terra_ns)
    assert_same_state(state_of(eager_ns), state_of(terra_ns))
    assert any(it.mode == "coexec" for it in session.log.iterations)
    # the traceback ends at the user's own line
    last = info.tb
    while last.tb_next is not None:
        last = last.tb_next
    assert last.tb_frame.f_code.co_filename.startswith("<terra-cell")
    # the session stays usable
    session.run_cell("y = model(data[0][0]).sum().item()", terra_ns)


@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_error_inside_a_block_surfaces_as_eager_type(runner):
    body = """
emb = nn.Embedding(10, 4)
base = torch.tensor([1.0, 2.0, 3.0])
for i in range(8):
    scale = 1.0 if i < 6 else 10.0   # a float feed: the same nodes, co-executed
    idx = (base * scale).long()
    out = emb(idx).sum()
    out.backward()
    print(i)
"""
    import terra_nb

    session = terra_nb.Session(runner=runner)
    with pytest.raises(IndexError) as info:
        run_terra(PRELUDE + body, session=session)
    assert "index out of range" in str(info.value)
    notes = getattr(info.value, "__notes__", [])
    assert any("embedding" in note and "out = emb(idx).sum()" in note for note in notes), notes
    assert session.log.of_kind("error"), "the block error is in the event log"
    assert any(it.mode == "coexec" for it in session.log.iterations)
    # the traceback ends at the op's line, as eager's does
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert last.filename.startswith("<terra-cell") and last.line == "out = emb(idx).sum()", last
    assert last.name == "<module>"


def test_an_evaluation_loop_after_training_that_auto_ran_eagerly_gets_rows():
    """auto on a CPU measures the training loop and runs it eagerly, its mode off, counting rows by
    that loop's ticks: the evaluation loop after it, whose ticks it did not count, was one row
    with the last training turn (59 rows for 60 + 20 turns). A loop that first turns in such a
    stretch, once no frame stands in the measured loop, puts the mode back: it is found and
    measured as the first loop was. And each of auto's eager turns is a row: the first of a stretch
    was one row with the next, and a row of the anchor op alone ended it (the rows kept count)."""
    source = PRELUDE + """
for i in range(60):
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
scores = []
with torch.no_grad():
    for k in range(20):
        scores.append(model(data[k % len(data)][0]).softmax(-1).max().item())
print(round(loss.item(), 5), [round(v, 4) for v in scores[-3:]])
"""
    printed, _ = run_eager(source)
    session = terra_nb.Session(backend="auto")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, {"__name__": "__main__"})
    assert out.getvalue() == printed
    rows = session.log.iterations
    assert "eager" in [it.mode for it in rows[:60]], [it.mode for it in rows]  # auto chose eager
    assert len(rows) == 60 + 20, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]


@pytest.mark.parametrize("case", ["embedding", "cross_entropy", "gather"])
def test_an_index_out_of_range_raises_before_the_lines_after_it_run(case):
    """An id past an embedding's rows, a class past the logits', a gather index past the dim, in a
    tensor the program made (real, on the CPU): eager raises at the op, before the ``print`` and
    the ``append`` after it. Deferred, the error came at the next sync, after them: the program
    printed one more line and kept one more entry than eager's. The skeleton checks such an
    index's range, and runs the op at once where it is out of range."""
    op = {"embedding": "h = emb(torch.tensor([1, 2, 7 if i == 6 else 3])).sum()",
          "cross_entropy": "h = F.cross_entropy(model(x), torch.tensor([0, 1] * 3 + [1, 3 if i == 6 else 2]))",
          "gather": "h = model(x).gather(1, torch.tensor([[0], [1], [2], [0], [1], [2], [0], [9 if i == 6 else 1]])).sum()"}[case]
    source = PRELUDE + f"""
emb = nn.Embedding(5, 3)
log = []
for i, (x, y) in enumerate(data):
    {op}
    print("step", i)
    log.append(i)
    print(round(h.item(), 4))
"""
    printed, namespace = run_eager_raising(source)
    session = terra_nb.Session()
    out = io.StringIO()
    namespace_t: dict = {"__name__": "__main__"}
    waited = []  # the check reads a future's metadata from the future: it never waits for a value
    check = coexec._out_of_range

    def checking(*args):
        materialize = session.executor.materialize
        session.executor.materialize = lambda: (waited.append(args[0]), materialize())
        try:
            return check(*args)
        finally:
            del session.executor.materialize

    with contextlib.redirect_stdout(out), pytest.raises((IndexError, RuntimeError)) as info, \
            unittest.mock.patch.object(coexec, "_out_of_range", checking):
        session.run_cell(source, namespace_t)
    assert not waited, waited
    assert out.getvalue() == printed and namespace_t["log"] == namespace["log"] == list(range(6))
    assert type(info.value) is type(namespace["error"])
    # the traceback, without the engine's frames (as %%terra and terra-nb run show it), ends where
    # eager's does (in torch's functional code for F.embedding)
    drop_engine_frames(info.value)
    ours, eagers = (traceback.extract_tb(e.__traceback__) for e in (info.value, namespace["error"]))
    ours = ours[next(i for i, f in enumerate(ours) if f.filename.startswith("<terra-cell")):]
    eagers = eagers[next(i for i, f in enumerate(eagers) if f.filename == "<eager>"):]
    assert [(f.lineno, f.name) for f in ours] == [(f.lineno, f.name) for f in eagers], (ours, eagers)
    assert op.strip() in [f.line for f in ours]
    assert "coexec" in [it.mode for it in session.log.iterations]


@pytest.mark.parametrize("op", ["v = h[step]", "v = h[:, step]", "v = h[step, 0]", "v = h.select(0, step)",
                                "v = h.narrow(1, step, 2)", "v = h[-step]", "h[step] = w.sum()", "v = h[..., step * 2]"])
def test_an_int_index_out_of_range_raises_at_its_line(op):
    """``h[step]`` with a Python int that grows past the dimension: eager raises at the line, in
    the iteration that goes past. The int had become a feed of the op's block (one node for every
    step), and the block raised only when the cell ended: the program printed four more lines, and
    the results of the iterations in between (``sums``) were lost values."""
    source = f"""
import torch
torch.manual_seed(0)
h = torch.zeros(6, 8)
w = torch.randn(4)
sums = []
for step in range(10):
    sums.append((w * step).sum())
    {op}
    print(step)
"""
    printed, namespace = run_eager_raising(source)
    session = terra_nb.Session()
    out = io.StringIO()
    namespace_t: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out), pytest.raises(type(namespace["error"])) as info:
        session.run_cell(source, namespace_t)
    assert out.getvalue() == printed
    assert namespace_t["step"] == namespace["step"]
    assert_same_state(state_of(namespace), state_of(namespace_t))
    drop_engine_frames(info.value)
    assert traceback.extract_tb(info.value.__traceback__)[-1].line == op
    assert "coexec" in [it.mode for it in session.log.iterations]


def test_an_error_inside_a_block_ends_the_traceback_at_the_ops_line_in_its_function():
    with pytest.raises(IndexError) as info:
        run_terra(INDEX_ERROR_IN_A_FUNCTION)
    entries = traceback.extract_tb(info.value.__traceback__)
    assert entries[-1].name == "step" and entries[-1].line == "h = emb(idx)", entries[-1]
    assert [e.line for e in entries if e.filename.startswith("<terra-cell")][0] == "print(i, round(loss.item(), 4))"


def test_futures_survive_the_cell_and_behave_as_tensors():
    out, namespace, session = run_terra(PRELUDE + CASES["losses_kept_across_iterations"])
    assert all(type(t) is torch.Tensor for t in namespace["losses"])
    later = torch.stack(namespace["losses"]).mean()
    assert later.shape == ()


@pytest.mark.parametrize("foreach", [False, True])
def test_adam_step_counters_need_no_wait(foreach):
    """Adam reads ``step.item()`` per parameter: the counters run at once, so nothing waits."""
    source = PRELUDE + f"""
opt = torch.optim.Adam(model.parameters(), lr=0.01, foreach={foreach})
for x, y in data:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{{loss.item():.6f}}")
"""
    session = check_program(source)
    steady = [it for it in session.log.iterations if it.mode == "coexec"]
    assert steady and all(it.syncs == 0 for it in steady), [(it.mode, it.syncs) for it in session.log.iterations]


def test_a_real_tensor_read_waits_for_the_block_that_writes_it():
    """``w`` is real; queued blocks add to it in place: reading it must wait for them, every time."""
    check_program("""
import torch
w = torch.zeros(3)
x = torch.arange(3.0)
seen = []
for i in range(8):
    w.add_(x * i)
    w.mul_(0.5)
    seen.append(w.tolist())
print(seen)
""")


def test_recycled_futures_never_change_under_the_program(monkeypatch):
    """Futures are reused once nothing holds them; the ones the program keeps keep their values."""
    from terra_nb.runtime import coexec

    made = []
    make = coexec._make_wrapper
    monkeypatch.setattr(coexec, "_make_wrapper", lambda *a, **k: made.append(1) or make(*a, **k))
    out, namespace, session = run_terra("""
import torch
x = torch.ones(4)
kept = {}
for i in range(30):
    y = x * (i + 1.0)
    z = y + 1
    if i % 9 == 0:
        kept[i] = z
    x = x + 0
    total = z.sum().item()
print({k: v.tolist() for k, v in kept.items()}, total)
""")
    assert out == "{0: [2.0, 2.0, 2.0, 2.0], 9: [11.0, 11.0, 11.0, 11.0], 18: [20.0, 20.0, 20.0, 20.0], 27: [29.0, 29.0, 29.0, 29.0]} 124.0\n"
    coexec_iterations = [it for it in session.log.iterations if it.mode == "coexec"]
    assert len(coexec_iterations) >= 25
    # four futures per iteration (y, z, x, the sum): most of them were recycled
    assert len(made) < len(coexec_iterations)


def test_a_node_run_many_times_an_iteration_reuses_its_futures(monkeypatch):
    """One node run six times an iteration, its results kept in a list until the next list is
    built: its ring keeps one future per run and reuses them (two per output made six a step)."""
    from terra_nb.runtime import coexec

    made: list = []
    make = coexec._make_wrapper
    monkeypatch.setattr(coexec, "_make_wrapper", lambda *a, **k: made.append(1) or make(*a, **k))
    program = """
import torch
x = torch.linspace(0, 1, 5)
for i in range(STEPS):
    ys = [x * float(k) for k in range(6)]
    x = ys[3] * 0.25 + 0.01
print([round(v, 6) for v in x.tolist()], [y.sum().item() for y in ys])
"""
    out, namespace, session = run_terra(program.replace("STEPS", "10"))
    assert out == run_eager(program.replace("STEPS", "10"))[0]
    made.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(program.replace("STEPS", "60"), namespace)
    assert out.getvalue() == run_eager(program.replace("STEPS", "60"))[0]
    assert sum(it.mode == "coexec" for it in session.log.iterations) >= 50
    assert len(made) < 30, len(made)  # ~7 a step (360) with two futures per node output


def test_a_counter_that_became_a_gradient_is_read_after_backward():
    """A small tensor made from Python data is read without waiting only while no block can write it:
    once it is a parameter's ``.grad``, backward accumulates into it and reads must wait."""
    check_program("""
import torch
w = torch.ones((), requires_grad=True)
g = torch.tensor(0.0)
w.grad = g
for i in range(8):
    loss = (w * (i + 1.0)) ** 2
    loss.backward()
    print(i, g.item())
""")


def test_an_index_that_changes_every_step_is_a_feed_not_a_new_block():
    """``xs[i]`` whose ``i`` first varies in the skeleton (the trace saw one value): the int becomes
    an input of the block, not a shape variant and a new block per step."""
    import terra_nb

    loop = """
total = torch.zeros(3)
for step in range(len(idx)):
    total = total + (xs[idx[step]] @ w).relu()
print(total)
"""
    setup = "import torch\ntorch.manual_seed(0)\nxs = torch.randn(40, 8)\nw = torch.randn(8, 3)\n"
    session = terra_nb.Session(backend="eager")
    run_terra(setup + "idx = [0, 0, 0, 0]" + loop, session=session)
    before = len(session.executor.compiled)
    source = setup + "idx = list(range(40))" + loop
    printed, _ = run_eager(source)
    printed_t, _, _ = run_terra(source, session=session)
    assert printed_t == printed
    assert "coexec" in [it.mode for it in session.log.iterations if it.cell == 2]
    assert len(session.executor.compiled) - before <= 4, len(session.executor.compiled) - before


def test_a_step_count_used_as_a_value_is_a_feed_not_a_new_node_every_step():
    """A Python int that changes every step where only its value matters (a diffusion sampler's
    ``torch.full((b,), t)``, a bit mask, ``triu``'s diagonal, the bounds of ``torch.arange(step,
    step + 3)``, positions past an offset) is an input of the block: a new node and a new block
    each step grew the graph without end (and each step's time with it: 2.4 ms a step at first,
    5.4 after 3000 steps, in a loop with an arange of moving bounds)."""
    loop = """
for step in range(STEPS):
    t = torch.full((2,), step, dtype=torch.long)
    u = torch.full_like(t, step * 2).new_full((2,), step)
    m = (t & 3) | (u >> 1) ^ (t << (step % 4)) | torch.where(t > 5, t, step)
    mask = torch.triu(torch.ones(3, 3), step % 3 - 1).index_fill(0, torch.tensor([1]), step)
    pos = torch.arange(step, step + 3) + torch.arange(2 * step, 2 * step + 6, 2)
    print(step, m.tolist(), mask.sum().item(), pos.tolist())
"""
    setup = "import torch\n"
    sizes = []
    for steps in (20, 40):
        source = setup + loop.replace("STEPS", str(steps))
        printed, _ = run_eager(source)
        printed_t, _, session = run_terra(source)
        assert printed_t == printed
        assert "coexec" in [it.mode for it in session.log.iterations]
        sizes.append((len(session.graph.nodes), len(session.executor.compiled)))
    assert sizes[0] == sizes[1], sizes


def _count_spec_ints(monkeypatch):
    """Count the calls of ``coexec.spec_ints``: the work of comparing a call's ints with the nodes
    at its site."""
    import collections

    calls = collections.Counter()
    original = coexec.spec_ints

    def counting(spec):
        calls["spec_ints"] += 1
        return original(spec)

    monkeypatch.setattr(coexec, "spec_ints", counting)
    return calls


def _same_as_eager_at(source, lengths, calls):
    """Run ``source`` with each of ``lengths`` for its ``STEPS``, eagerly and co-executed, the count
    in ``calls`` cleared before each; assert the same output; yield (steps, session)."""
    for steps in lengths:
        calls.clear()
        printed, _ = run_eager(source.replace("STEPS", str(steps)))
        printed_t, _, session = run_terra(source.replace("STEPS", str(steps)))
        assert printed_t == printed
        yield steps, session


def test_a_sliding_window_is_one_node_whose_bounds_are_feeds(monkeypatch):
    """``data[i:i + 4]``: the window's bounds are feeds of one node, keyed by its output shape
    (the last windows, clamped at the end of the data, are shorter: another node). Before, each
    new window was a variant, a node and a block; and looking for a sibling to generalize into a
    feed compared every earlier window, work that grew with the step (6.8 ms a step after 1000
    steps, 16 after 4000). Counted, not timed."""
    calls = _count_spec_ints(monkeypatch)
    source = """
import torch
torch.manual_seed(0)
data = torch.randn(STEPS + 2, 8)
w = torch.randn(8, 8, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.001)
for i in range(STEPS):
    x = data[i:i + 4]  # the last two windows are shorter
    loss = (x @ w).tanh().sum() / len(x)
    opt.zero_grad(); loss.backward(); opt.step()
    if i % 50 == 0 or i > STEPS - 4:
        print(i, x.shape, round(loss.item(), 5))
print(w.sum().item())
"""
    nodes = []
    for steps, session in _same_as_eager_at(source, (100, 200), calls):
        assert [it.mode for it in session.log.iterations].count("coexec") > steps - 10
        assert calls["spec_ints"] < 4 * steps, calls  # (about steps * steps / 2 before)
        nodes.append(len(session.graph.nodes))
    assert nodes[0] == nodes[1], nodes


def test_a_prefix_that_grows_each_step_is_looked_up_by_its_shape(monkeypatch):
    """``data[:step]`` and ``torch.arange(step)`` as the step grows (a generation loop's tokens so
    far): a new shape each step, so a new node each step, but finding none to make the step a feed
    of no longer compares every earlier step's node (30 s over 1500 steps; the nodes at a site are
    looked up by their output shapes). Counted, not timed."""
    calls = _count_spec_ints(monkeypatch)
    source = """
import torch
data = torch.arange(STEPS + 1.0)
for step in range(1, STEPS):
    total = data[:step].sum() + torch.arange(step).sum() + torch.arange(step, step + 2).sum()
    if step % 25 == 0:
        print(step, total.item())
"""
    counts = []
    for _steps, session in _same_as_eager_at(source, (100, 200), calls):
        assert "coexec" in [it.mode for it in session.log.iterations]
        counts.append(calls["spec_ints"])
    assert counts[1] < 2.5 * counts[0], counts  # twice the steps, twice the work (four times before)


def test_shape_variants_share_their_generated_code():
    """Blocks that differ only in shapes (a data-dependent batch size) generate their code once."""
    session = check_program(PRELUDE + """
batches = [(torch.randn(n, 6), torch.randint(0, 3, (n,))) for n in [8, 5, 7, 3, 8, 5, 7, 3, 6, 8, 5, 7]]
for x, y in batches:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(f"{loss.item():.6f}")
""")
    blocks = list(session.executor.compiled.values())
    codes = {id(block.gm) for block in blocks}
    assert len(blocks) > len(codes), (len(blocks), len(codes))



def test_blocks_that_differ_in_ints_share_their_generated_code():
    """A count of rows that the data decides, passed on as an int (``h.view(n, -1, 4)``,
    ``pos[:t]`` for a sampler's growing length), made every turn's block a new one, and FX's
    code generation (~3 ms a block) ran again each time: faster_rcnn 12 blocks' code in 16
    turns, music_transformer 67. A block that is never compiled takes its ints as inputs."""
    session = check_program(PRELUDE + """
w = torch.randn(16, 16)
pos = torch.randn(40, 16)
for i in range(12):
    n = [5, 9, 7, 6][i % 4] + i
    h = torch.randn(n, 16) @ w
    boxes = h.view(n, -1, 4).softmax(-1)
    t = 3 + i
    seq = (boxes.sum() * pos[:t]).relu()
    print(i, boxes.shape[0], round(seq.sum().item(), 4))
""")
    blocks = list(session.executor.compiled.values())
    codes = {id(block.gm) for block in blocks}
    assert len(blocks) >= 10 and len(codes) <= 4, (len(blocks), len(codes))


# -- auto's choice: where eager iterations are faster, a CPU cell goes on eagerly -------------------

TINY_LOOP = """
import torch
torch.manual_seed(0)
w = torch.randn(4, 4)
x = torch.randn(4, 4)
modes_on = []  # how many TorchFunctionModes each iteration ran under
for step in range(400):
    modes_on.append(torch._C._len_torch_function_stack())
    x = torch.tanh(x @ w) * 0.5 + 0.1
    if step % 100 == 0:
        print(step, round(x.sum().item(), 4))
print(x)
"""


def _choices(session):
    return [e for e in session.log.events if e.kind == "choice"]


def test_auto_measures_coexecution_against_eager_and_goes_on_with_the_faster():
    """A loop of a few tiny ops co-executes several times slower than it runs eagerly on a CPU: after a
    few co-executed iterations and an eager probe, auto runs the rest eagerly, saying why; what the
    program prints and leaves is eager's."""
    printed, namespace = run_eager(TINY_LOOP)
    printed_t, namespace_t, session = run_terra(TINY_LOOP, backend="auto")
    assert printed_t == printed
    assert_same_state(state_of(namespace), state_of(namespace_t))
    modes = [it.mode for it in session.log.iterations]
    assert "coexec" in modes
    (first, *_) = _choices(session)
    assert first.reason.startswith("eager is faster here"), first.reason
    assert "co-execution is measured again in 50 iterations" in first.reason
    # iterations this short are measured until they add up to milliseconds, not three of them: a
    # hiccup of the machine in two of three eager iterations chose co-execution here
    # (the message names eager's median first, then co-execution's: the counts come in that order)
    eager_n, coexec_n = map(int, re.search(r"medians of (\d+) and (\d+) iterations", first.reason).groups())
    assert coexec_n >= 5 and eager_n > 3, first.reason
    after = modes[first.iteration - 1:first.iteration + 49]  # (iterations count from 1)
    assert after == ["eager"] * 50, modes
    # auto's eager iterations run with the mode taken off (the loop's tick counts them), so they cost
    # what eager costs; the co-executed ones ran under it
    assert set(namespace_t["modes_on"][first.iteration + 2:first.iteration + 45]) == {0}
    assert set(namespace_t["modes_on"][3:8]) == {1}
    # then co-execution is measured again, and loses again: the eager stretch doubles
    assert len(_choices(session)) >= 2 and "again in 100 iterations" in _choices(session)[1].reason
    events = session.to_pandas("events")
    assert (events["kind"] == "choice").sum() == len(_choices(session))
    assert "auto: eager is faster here" in session.summary()


def test_always_coexec_and_the_other_backends_never_choose():
    for session in (terra_nb.Session(backend="auto", always_coexec=True), terra_nb.Session(backend="eager")):
        printed_t, session_ns, session = run_terra(TINY_LOOP, session=session)
        assert printed_t == run_eager(TINY_LOOP)[0]
        assert not _choices(session)
        assert "eager" not in {it.mode for it in session.log.iterations}
        assert set(session_ns["modes_on"]) == {1}


def test_a_baseline_spent_in_a_setup_loop_runs_again_in_the_cells_loop():
    """The first loop found (here: building the data) is not the cell's loop; its eager baseline
    iterations merge into iteration 1, and the training loop gets its own baseline."""
    source = PRELUDE + """
def train():
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    print(round(loss.item(), 4))
batches = [torch.randn(8, 6) * k for k in range(20)]
for epoch in range(4):
    train()
"""
    printed, _ = run_eager(source)
    session = terra_nb.Session()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, {"__name__": "__main__"}, baseline=3)
    assert out.getvalue() == printed
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("eager") == 3, modes
    assert "coexec" in modes[modes.index("eager"):], modes


def test_baseline_iterations_are_loop_iterations_when_layers_share_a_line():
    """Nodes of one key recur within a turn here (two layers of one shape, called from one line;
    the optimizer reading the .grad of two biases of one shape). An iteration must still be one
    turn of the loop: the eager baseline's, whose boundaries are calls of the anchor's function,
    and the co-executed ones."""
    source = PRELUDE + """
import time
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
turns = []
for step in range(30):
    turns.append(time.time())
    x, y = data[step % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(step, round(loss.item(), 4))
"""
    printed, _ = run_eager(source)
    session = terra_nb.Session()
    out = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        session.run_cell(source, namespace, baseline=6)
    assert out.getvalue() == printed
    rows = [it for it in session.log.iterations if it.iteration > 1]
    modes = [it.mode for it in rows]
    assert modes.count("eager") == 6, modes
    assert modes[-1] == "coexec" and modes.count("coexec") >= 10, modes
    for it in rows[:-1]:  # the last ends with the cell, not at a turn
        started = [t for t in namespace["turns"] if it.time - it.wall_ms / 1e3 < t <= it.time]
        assert len(started) == 1, (it, len(started))


def _with_library(library: str, cell: str) -> str:
    """A cell whose ``library`` dict holds functions compiled apart from the cell, as a library's
    are: their loops do not tick."""
    return (PRELUDE + "LIBRARY = " + repr(library) + "\nlibrary = {}\n"
            + 'exec(compile(LIBRARY, "library.py", "exec"), library)\n' + cell)


def test_an_epoch_loop_around_a_library_batch_loop_keeps_batch_iterations():
    """The batch loop is in code the cell did not compile (a library: it does not tick); the
    epoch loop ticks once every few anchor periods. Iterations stay batches."""
    source = _with_library('''
def train_one_epoch(model, opt, data, F):
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()
''', '''
for epoch in range(4):
    marker = torch.full((1,), float(epoch))  # an op of the epoch's own, before its batches
    print(epoch, round(library["train_one_epoch"](model, opt, data[:6], F), 4), marker.item())
''')
    printed, _ = run_eager(source)
    session = terra_nb.Session()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, {"__name__": "__main__"})
    assert out.getvalue() == printed
    modes = [it.mode for it in session.log.iterations]
    assert len(modes) >= 18 and modes.count("coexec") >= 12, modes


def test_eager_iterations_due_when_a_setup_loop_ends_give_way_to_the_next_loop():
    """The data is built by a comprehension (no tick) that anchors first; auto probes eager there,
    and the comprehension ends before the probe does. The training loop after it must not run to
    its end as one eager iteration: it is found, co-executed and measured."""
    source = PRELUDE + """
for i in range(400):
    x, y = data[i % len(data)]
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
print(round(loss.item(), 4))
"""
    printed, eager_ns = run_eager(source)
    session = terra_nb.Session(backend="auto")
    out = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        session.run_cell(source, namespace)
    assert out.getvalue() == printed
    assert_same_state(state_of(namespace), state_of(eager_ns))
    rows = session.log.iterations
    # (the turns before co-execution resumes, 10 ms of them or more, merge into iteration 1)
    assert len(rows) >= 150, [(it.mode, round(it.wall_ms, 1), it.ops_coexec) for it in rows]
    assert "coexec" in [it.mode for it in rows[1:]]
    assert _choices(session)


def test_step_counters_stay_skeleton_local_after_eager_iterations():
    """Adam's step counters are skeleton-local: their ``.item()`` needs no wait. Eager baseline
    iterations clear the marks (eager code is not watched); co-execution after them restores the
    marks of counters nothing new refers to, so no sync appears per counter and iteration."""
    source = PRELUDE + """
opt = torch.optim.Adam(model.parameters(), lr=0.01)
for i in range(30):
    x, y = data[i % len(data)]
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if i % 5 == 0:
        print(i, round(loss.item(), 5))
"""
    printed, eager_ns = run_eager(source)
    session = terra_nb.Session()
    namespace = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, namespace, baseline=4)
    assert out.getvalue() == printed
    assert_same_state(state_of(namespace), state_of(eager_ns))
    modes = [it.mode for it in session.log.iterations]
    after = [it.syncs for it in session.log.iterations[modes.index("eager") + 4:] if it.mode == "coexec"]
    assert len(after) >= 15 and max(after) <= 1, after  # the every-5th .item() only


def test_a_loop_that_updates_weights_by_hand_is_probed_as_soon_as_any(monkeypatch):
    """auto waits for a training loop's backward or optimizer step before it measures eager
    iterations (they would hide them), but a loop with a backward every turn and no optimizer (the
    weights updated by hand) waits for nothing, even after a setup loop of the cell."""
    monkeypatch.setattr(coexec, "CHOICE_MIN_MS", 0.0)  # (the probe's due after its iteration count alone)
    source = """
import torch
torch.manual_seed(0)
data = []
for k in range(8):
    data.append((torch.randn(64, 32), torch.randn(64, 1)))
w = torch.zeros(32, 1, requires_grad=True)
for i in range(60):
    x, y = data[i % 8]
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= 0.01 * w.grad
        w.grad.zero_()
print(round(loss.item(), 5))
"""
    printed, eager_ns = run_eager(source)
    out, namespace, session = run_terra(source, backend="auto")
    assert out == printed
    assert_same_state(state_of(eager_ns), state_of(namespace), exact=False)
    modes = [it.mode for it in session.log.iterations]
    assert "eager" in modes[:30], modes  # the probe, 8 clean turns after the anchor, not 50


def test_an_inference_loop_after_a_setup_loop_is_probed_as_soon_as_any(monkeypatch):
    """No backward, no optimizer: an evaluation loop. The setup loop before it ticked many times,
    so it is not a loop around the evaluation's turns (an episode loop ticks once before its
    steps): auto measures eager iterations as soon as anywhere."""
    monkeypatch.setattr(coexec, "CHOICE_MIN_MS", 0.0)  # (the probe's due after its iteration count alone)
    source = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
data = []
for k in range(8):
    data.append(torch.randn(64, 32))
correct = 0
with torch.no_grad():
    for i in range(60):
        correct += int((model(data[i % 8]).argmax(1) == i % 4).sum())
print(correct)
"""
    printed, _ = run_eager(source)
    out, _, session = run_terra(source, backend="auto")
    assert out == printed
    modes = [it.mode for it in session.log.iterations]
    assert "eager" in modes[:30], modes  # the probe, 8 clean turns after the anchor, not 50


def test_auto_probes_a_loop_that_does_not_tick_only_after_many_iterations():
    """A loop in code the cell did not compile (a library: no ticks) may be a setup loop (model.to(),
    an optimizer's first step over its parameters). auto co-executes it for CHOICE_UNTICKED periods
    before it probes eager there; then it measures as anywhere else."""
    from terra_nb.runtime.coexec import CHOICE_UNTICKED

    source = _with_library('''
def fit(model, opt, data, F, steps):
    for i in range(steps):
        x, y = data[i % len(data)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()
''', '''
opt = torch.optim.Adam(model.parameters(), lr=0.01)
print(round(library["fit"](model, opt, data, F, 90), 5))
''')
    printed, eager_ns = run_eager(source)
    session = terra_nb.Session(backend="auto")
    namespace = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, namespace)
    assert out.getvalue() == printed
    assert_same_state(state_of(namespace), state_of(eager_ns))
    choices = _choices(session)
    assert choices and choices[0].iteration >= CHOICE_UNTICKED, [(c.iteration, c.reason) for c in choices]


# a training step on a loader's batch (x, y), the loss printed after each epoch
_LOADER_STEP = """        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    print(epoch, round(loss.item(), 5))
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloaders_batches_are_the_iterations(workers):
    """A DataLoader collates each batch inside the ``for`` statement's iterator: those ops never anchor
    (iterations are batches, not samples). Batches from worker processes are tensors rebuilt around
    received memory: run as they come, not traced (they fell back every batch)."""
    source = f"""
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
dataset = TensorDataset(torch.randn(96, 6), torch.randint(0, 3, (96,)))
model = torch.nn.Linear(6, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(3):
    for x, y in DataLoader(dataset, batch_size=16, shuffle=True, num_workers={workers}):
""" + _LOADER_STEP
    session = check_program(source)
    iterations = session.log.iterations
    assert 17 <= len(iterations) <= 19, [it.mode for it in iterations]  # 18 batches (the first merges setup)
    last_epoch = iterations[-6:]
    # (an epoch's first batch may fall back where its shuffle's randperm is new, and the batch
    # after it is traced when that turn into the loop is a path the trace had not taken)
    assert sum(it.mode == "coexec" for it in last_epoch) >= 4, [it.mode for it in iterations]


def test_the_order_in_which_workers_batches_arrive_does_not_make_an_epoch_fall_back():
    """A worker-fed DataLoader's iterator takes another path when a batch arrives before the one
    before it (it keeps it for later): its ops (the sampler's randperm once the indices run out, the
    received batches' rebuilding) ran at call sites the trace had not seen, and an epoch whose
    batches came in another order than the traced one's fell back (CI: 3 of an epoch's 6 batches
    co-executed). Here one worker is slow in even epochs and the other in odd ones."""
    source = """
import time
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

class Timed(Dataset):
    slow_worker = 0
    def __init__(self):
        self.x, self.y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    def __len__(self):
        return 96
    def __getitem__(self, i):
        if get_worker_info().id == self.slow_worker:
            time.sleep(0.004)
        return self.x[i], self.y[i]

torch.manual_seed(0)
data = Timed()
model = torch.nn.Linear(6, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(4):
    data.slow_worker = epoch % 2
    for x, y in DataLoader(data, batch_size=16, shuffle=True, num_workers=2):
""" + _LOADER_STEP
    session = check_program(source)
    iterations = session.log.iterations
    assert len(iterations) == 24, [it.mode for it in iterations]
    # the first epoch's end (its print's .item()) is new to the trace; nothing after the turn it made is
    assert [it.mode for it in iterations[7:]] == ["coexec"] * 17, [it.mode for it in iterations]


def test_a_train_and_val_phase_loop_keeping_the_best_weights_is_a_row_per_batch():
    """The transfer-learning tutorial's loop: each epoch a train and a val phase over their loaders,
    and ``copy.deepcopy(model.state_dict())`` before the epochs and at each new best. state_dict's
    ops before the loop and at a new best are one node (a location leaves out where the cell
    called from): it was taken for a loop around the batches' and anchored, so a row ran from one
    new best to the next, and the epochs after the last new best were one row that fell back
    throughout (4 rows for 72 batches)."""
    source = """
import copy
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
torch.manual_seed(0)
sets = {p: TensorDataset(torch.randn(n, 16), torch.randint(0, 4, (n,))) for p, n in (("train", 128), ("val", 64))}
loaders = {p: DataLoader(d, batch_size=16, shuffle=(p == "train")) for p, d in sets.items()}
sizes = {p: len(d) for p, d in sets.items()}
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
best_wts = copy.deepcopy(model.state_dict())
best_acc = 0.0
for epoch in range(6):
    for phase in ["train", "val"]:
        if phase == "train":
            model.train()
        else:
            model.eval()
        running_loss = 0.0
        running_corrects = 0
        for inputs, labels in loaders[phase]:
            optimizer.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                outputs = model(inputs)
                _, preds = torch.max(outputs, 1)
                loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            running_corrects += torch.sum(preds == labels.data)
        if phase == "train":
            scheduler.step()
        epoch_loss = running_loss / sizes[phase]
        epoch_acc = running_corrects.double() / sizes[phase]
        print(f"{epoch} {phase} Loss: {epoch_loss:.4f} Acc: {epoch_acc:.4f}")
        if phase == "val" and epoch_acc > best_acc:
            best_acc = epoch_acc
            best_wts = copy.deepcopy(model.state_dict())
model.load_state_dict(best_wts)
print(best_acc)
"""
    session = check_program(source)
    modes = [it.mode for it in session.log.iterations]
    assert len(modes) == 72, modes  # 6 epochs of 8 train and 4 val batches
    assert modes.count("coexec") >= 56, modes  # (each new path falls back once: an epoch's end, a new best or none)


_ACCUMULATING_EPOCHS = {
    # a shuffled order of the batches each epoch, and an evaluation loop as long as the training's
    "lists": ("""
train = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(12)]
val = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(24)]
""", """
    order = torch.randperm(len(train)).tolist()
    for i, k in enumerate(order):
        x, y = train[k]
""", """
        val_loss = 0.0
        for x, y in val:
            val_loss += F.cross_entropy(model(x), y).item()
        val_loss /= len(val)
"""),
    # shuffling loaders whose samples are flipped at random (ops in the loop's header), a short
    # evaluation in a generator expression
    "loaders": ("""
from torch.utils.data import DataLoader, Dataset

class Flipped(Dataset):
    def __init__(self, n):
        self.x, self.y = torch.randn(n, 6), torch.randint(0, 3, (n,))
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        x = self.x[i]
        return (x.flip(0) if torch.rand(1).item() < 0.5 else x), self.y[i]

train = DataLoader(Flipped(96), batch_size=8, shuffle=True)
val = DataLoader(Flipped(48), batch_size=16)
""", """
    for i, (x, y) in enumerate(train):
""", """
        val_loss = sum(F.cross_entropy(model(x), y).item() for x, y in val) / len(val)
"""),
}


@pytest.mark.parametrize("data", sorted(_ACCUMULATING_EPOCHS))
def test_epochs_of_accumulated_gradients_and_an_evaluation_are_a_row_per_batch(data):
    """Gradients accumulated over four batches, then an evaluation, each epoch. The epoch's first op
    (its shuffle) recurs around the batches' anchor with fewer optimizer steps since than batches,
    and was taken for a loop around them doing work of its own: a row per epoch (5 rows for 60
    batches, each fallback tracing a whole epoch). Steps every few turns of the anchor's own loop
    are its own work (``_marks_within_turns``), a backward each turn makes its turns the steps, and
    an evaluation loop ten training steps long no longer takes the anchor inside the epoch."""
    setup, loop_head, evaluation = _ACCUMULATING_EPOCHS[data]
    source = """
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
accum = 4
""" + setup + """
for epoch in range(5):
    model.train()""" + loop_head + """        loss = F.cross_entropy(model(x), y) / accum
        loss.backward()
        if (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad()
    model.eval()
    with torch.no_grad():""" + evaluation + """    print(epoch, round(val_loss, 5))
"""
    session = check_program(source)
    modes = [it.mode for it in session.log.iterations]
    assert len(modes) >= 59, modes  # 60 batches (the first row holds the setup)
    assert modes.count("coexec") >= 50, modes


def test_checkpoints_written_during_co_execution_are_eagers_byte_for_byte():
    """torch.save of the model and optimizer each epoch (the engine's marks on tensors stay out of
    the pickles: a buffer reused for a smaller checkpoint was left with a corrupt zip), and
    copy.deepcopy of the best state."""
    source = PRELUDE.replace("torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
                             "torch.optim.Adam(model.parameters(), lr=0.01)") + """
import copy, io, pickle
saved, best, best_state = [], float("inf"), None
buf = io.BytesIO()
for epoch in range(4):
    for x, y in data[:4]:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    if loss.item() < best:
        best, best_state = loss.item(), copy.deepcopy(model.state_dict())
    buf.seek(0)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    saved.append(buf.getvalue())
    print(epoch, pickle.loads(pickle.dumps(loss.detach())).item())
buf.seek(0)
back = torch.load(buf)
model.load_state_dict(best_state)
print(round(best, 5), back["model"]["0.weight"].sum().item(), back["opt"]["state"][0]["step"].item())
"""
    printed, eager_ns = run_eager(source)
    out, namespace, session = run_terra(source)
    assert out == printed
    assert namespace["saved"] == eager_ns["saved"]
    assert_same_state(state_of(eager_ns), state_of(namespace))
    assert any(it.mode == "coexec" for it in session.log.iterations)


def test_an_anchor_in_setup_code_gives_way_when_the_cells_loop_turns_without_it():
    """Building the second optimizer calls the library code the first one did (``p.is_leaf`` in
    ``add_param_group``): that op recurs around the setup anchor and took over. It never recurs in
    the training loop; the loop's turns, more than it made in any of the anchor's periods, while the
    anchor is overdue, give the anchor up. Iterations are the loop's turns, not one row."""
    source = PRELUDE + """
from torch.nn.utils.parametrizations import spectral_norm
lin = spectral_norm(nn.Linear(6, 3))
opt2 = torch.optim.SGD(lin.parameters(), lr=0.1)
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(lin(x), y)
    opt2.zero_grad()
    loss.backward()
    opt2.step()
    print(i, round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert len(modes) >= 8 and modes.count("coexec") >= 6, modes


def test_training_then_a_long_evaluation_in_one_cell_keeps_the_training_rows():
    """The training loop ends and an evaluation loop runs long enough to take the anchor over: the
    training iterations stay rows of their own (they were merged into iteration 1)."""
    source = PRELUDE + """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
correct = 0
with torch.no_grad():
    for k in range(120):
        x, y = data[k % len(data)]
        correct += (model(x).argmax(1) == y).sum()
print(int(correct), round(loss.item(), 5))
"""
    session = check_program(source)
    rows = session.log.iterations
    step = rows[3].ops_coexec  # a training step: forward, backward, the optimizer's ops
    assert step >= 15, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert sum(it.mode == "coexec" and it.ops_coexec == step for it in rows[1:11]) >= 8
    assert len(rows) >= 12 + 50  # then the evaluation's


@pytest.mark.parametrize("where", ["cell", "function"])
def test_an_evaluation_loop_after_training_gets_a_row_per_turn_at_once(where):
    """Training (in the cell, or in a function the cell calls), then ten turns of an evaluation
    loop: no frame stands in the training loop's lines any more when the evaluation loop ticks, so
    the anchor gives way at once, and the last training turn ends at that tick. The evaluation's
    turns merged into the last training row before (the anchor gave way only after ten of its
    periods: 12 rows for 22 turns), then its first turn alone (21 rows)."""
    training = """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
"""
    if where == "function":
        training = "def train():\n" + textwrap.indent(training, "    ") + "    return loss\nloss = train()\n"
    source = PRELUDE + training + """
scores = []
with torch.no_grad():
    for k in range(10):
        x, _ = data[k]
        scores.append(model(x).softmax(-1).max().item())
print([round(v, 4) for v in scores], round(loss.item(), 5))
"""
    rows = check_program(source).log.iterations
    assert len(rows) == 12 + 10, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert len({it.ops_traced + it.ops_coexec for it in rows[1:12]}) == 1, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    # (the last row holds the code after the loop too, the new ``loss.item()`` there)
    assert [it.mode for it in rows[-8:-1]] == ["coexec"] * 7, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]


@pytest.mark.parametrize("where", ["cell", "function"])
def test_an_evaluation_loop_in_each_epoch_joins_the_epochs_last_row_every_epoch(where):
    """Epochs of eight training turns, then five evaluation turns (in the epoch's loop, or in a
    function each epoch calls): a row per training turn, the evaluation in the epoch's last one,
    in every epoch. The first epoch's evaluation was two rows of its own (33 rows for 32 turns)."""
    epoch = """
model.train()
for x, y in data[:8]:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
model.eval()
correct = 0
with torch.no_grad():
    for x, y in data[8:]:
        correct += (model(x).argmax(1) == y).sum().item()
print(ep, round(loss.item(), 5), correct)
"""
    if where == "function":
        source = PRELUDE + "def run_epoch(ep):\n" + textwrap.indent(epoch, "    ") + "for ep in range(4):\n    run_epoch(ep)\n"
    else:
        source = PRELUDE + "for ep in range(4):\n" + textwrap.indent(epoch, "    ")
    rows = check_program(source).log.iterations
    assert len(rows) == 4 * 8, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    ops = [it.ops_traced + it.ops_coexec for it in rows]
    assert ops[15] == ops[23] == ops[31] > ops[14] == ops[22] == ops[30], ops
    assert ops[7] == ops[15], ops


# an episode's ten steps of a policy (``policy``, ``state``, ``logps`` and ``rewards`` set before)
POLICY_STEPS = """
    for t in range(10):
        dist = torch.distributions.Categorical(logits=policy(state))
        a = dist.sample()
        logps.append(dist.log_prob(a))
        rewards.append(1.0 if a.item() == 0 else 0.0)
        state = state + 0.1 * torch.randn(4)
"""


@pytest.mark.parametrize("returns", ["ops", "loop"])
def test_an_episode_of_steps_with_one_backward_is_one_iteration(returns):
    """Reinforcement learning: each episode steps a policy in a loop, then runs one backward and
    the optimizer. The steps outnumber the episode's own ops, but the episode is the iteration:
    one row per episode, as the training loop it is. Its returns summed by ops, or by a loop after
    the steps' (whose first turn, in the episode's loop, is no sign that the steps' loop, whose
    turns anchor at first, ended for good: the first episode's steps were 10 rows)."""
    by = {"ops": "    returns = torch.tensor(rewards).flip(0).cumsum(0).flip(0)\n",
          "loop": "    acc, returns = 0.0, []\n    for r in reversed(rewards):\n        acc += r\n"
                  "        returns.insert(0, acc)\n    returns = torch.tensor(returns)\n"}[returns]
    source = PRELUDE + """
policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
popt = torch.optim.Adam(policy.parameters(), lr=1e-2)
for episode in range(12):
    state = torch.randn(4)
    logps, rewards = [], []""" + POLICY_STEPS + by + """    loss = -(torch.stack(logps) * returns).sum()
    popt.zero_grad()
    loss.backward()
    popt.step()
    print(episode, round(loss.item(), 4))
"""
    session = check_program(source)
    rows = session.log.iterations
    assert len(rows) == 12, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert [it.mode for it in rows[-4:]] == ["coexec"] * 4, [it.mode for it in rows]


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_micro_batches_that_accumulate_gradients_make_one_iteration_per_optimizer_step(backend):
    """Gradient accumulation: a loop of micro-batches, each with its backward, inside the loop of
    optimizer steps, which has no op before them. An optimizer step after the anchor ran twice or
    more since the last one takes it (torch.optim's post-step hook marks each): a row per step."""
    source = PRELUDE + """
for step in range(12):
    for micro in range(4):
        x, y = data[(step * 4 + micro) % 12]
        loss = F.cross_entropy(model(x), y) / 4
        loss.backward()
    opt.step()
    opt.zero_grad()
    print(step, round(loss.item(), 4))
"""
    printed, eager_ns = run_eager(source)
    out, namespace, session = run_terra(source, backend=backend)
    assert out == printed
    assert_same_state(state_of(eager_ns), state_of(namespace), exact=backend == "eager")
    rows = session.log.iterations
    assert 11 <= len(rows) <= 12, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert "coexec" in [it.mode for it in rows]


def test_a_critic_that_steps_several_times_per_generator_step_makes_one_row_per_generator_step():
    """WGAN's n_critic: each generator step follows a loop of critic steps (each with its backward
    and its optimizer's step). Each optimizer's steps are marked apart: the generator's, after the
    anchor ran three times, takes it, and the rows are the outer loop's turns."""
    source = PRELUDE + """
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
D = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
gopt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
dopt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
for it in range(8):
    for k in range(3):
        real = data[(it * 3 + k) % 12][0]
        fake = G(torch.randn(8, 4)).detach()
        dloss = D(fake).mean() - D(real).mean()
        dopt.zero_grad(); dloss.backward(); dopt.step()
    gloss = -D(G(torch.randn(8, 4))).mean()
    gopt.zero_grad(); gloss.backward(); gopt.step()
    print(it, round(dloss.item(), 4), round(gloss.item(), 4))
"""
    session = check_program(source)
    rows = session.log.iterations
    assert len(rows) == 8, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]


# the body of a loop over batches that accumulates gradients over four of them
ACCUMULATE = """
    x, y = data[i % 12]
    loss = F.cross_entropy(model(x), y) / 4
    loss.backward()
    if (i + 1) % 4 == 0:
        opt.step()
        opt.zero_grad()
"""


@pytest.mark.parametrize("every", ["generator", "accumulation", "accumulation_in_epochs"])
def test_a_step_taken_every_few_turns_of_the_loop_keeps_a_row_per_turn(every):
    """The generator steps on every third turn (``if it % 3 == 0``), or gradients accumulate over
    four turns before the optimizer steps: the loop's turns are still the iterations. Its second
    step, after the anchor ran three times, took the anchor as if a loop enclosed the turns, and
    three turns made one row (a loop that ticks once between the steps is what encloses them)."""
    body = {"generator": """
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
D = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
gopt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
dopt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
for it in range(21):
    real = data[it % 12][0]
    dloss = D(G(torch.randn(8, 4)).detach()).mean() - D(real).mean()
    dopt.zero_grad(); dloss.backward(); dopt.step()
    if it % 3 == 0:
        gloss = -D(G(torch.randn(8, 4))).mean()
        gopt.zero_grad(); gloss.backward(); gopt.step()
        print(it, round(dloss.item(), 4), round(gloss.item(), 4))
""", "accumulation": "\nfor i in range(24):" + ACCUMULATE + "        print(i, round(loss.item(), 4))\n",
            "accumulation_in_epochs": "\nfor epoch in range(3):\n    for i in range(8):" + textwrap.indent(ACCUMULATE, "    ")
            + "    print(epoch, round(loss.item(), 4))\n"}[every]
    session = check_program(PRELUDE + body)
    rows = session.log.iterations
    assert len(rows) >= 20, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert [it.mode for it in rows[-6:]] == ["coexec"] * 6, [it.mode for it in rows]


def test_episodes_whose_update_comes_every_fourth_are_a_row_per_update():
    """A policy stepped in each episode's loop, updated once every four episodes: the update's
    marks come after more steps than the episode loop turned, so that loop encloses them, and a
    row is an update's four episodes (not an environment step: a step taken every few turns of
    the anchor's own loop keeps its turns, as the test above)."""
    source = PRELUDE + """
policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
popt = torch.optim.Adam(policy.parameters(), lr=1e-2)
logps, rets = [], []
for episode in range(24):
    state, rewards = torch.randn(4), []""" + POLICY_STEPS + """    rets += [sum(rewards[i:]) for i in range(10)]
    if episode % 4 == 3:
        loss = -(torch.stack(logps) * torch.tensor(rets)).mean()
        popt.zero_grad(); loss.backward(); popt.step()
        logps, rets = [], []
        print(episode, round(loss.item(), 4))
"""
    session = check_program(source)
    rows = session.log.iterations
    assert len(rows) <= 8, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert "coexec" in [it.mode for it in rows]


def test_a_model_switched_to_double_halfway_keeps_a_row_per_turn():
    """``model.double()`` halfway through the loop: every op after it is a new node, the anchor
    (the float32 batch) never runs again, and the 12 turns after merged into one or two rows
    until the anchor's idleness re-anchored. The anchor's op at its site, of another dtype, as the
    first op of a turn of the anchor's loop, anchors (the float64 batch), keeping the rows."""
    source = PRELUDE + """
dtype = torch.float32
for it in range(24):
    if it == 12:
        model.double(); dtype = torch.float64
    x = torch.randn(6, 6, dtype=dtype)
    loss = model(x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(it, loss.dtype, round(loss.item(), 5))
"""
    session = check_program(source)
    rows = session.log.iterations
    assert len(rows) >= 21, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert [it.mode for it in rows[-6:]] == ["coexec"] * 6, [it.mode for it in rows]


# generation through two attention layers of one class: the sequence grows by a token each turn
TWIN_GENERATION = """
class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.qkv = nn.LayerNorm(8), nn.Linear(8, 24)
    def forward(self, x):
        q, k, v = [t.view(1, -1, 2, 4).transpose(1, 2) for t in self.qkv(self.norm(x)).split(8, dim=2)]
        return x + F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(x.shape)
emb, body, head = nn.Embedding(10, 8), nn.Sequential(Twin(), Twin()), nn.Linear(8, 10)
seq = torch.zeros(1, 1, dtype=torch.long)
with torch.no_grad():
    for _ in range(30):
        h = body(emb(seq[:, -16:]))
        nxt = torch.multinomial(F.softmax(head(h[:, -1]), dim=-1), 1)
        seq = torch.cat([seq, nxt], dim=1)
"""


def test_a_sequence_that_grows_each_turn_through_twin_layers_is_a_row_per_turn():
    """Generation: the sequence grows by a token each turn, so every op has a new shape each turn
    and none recurs from one turn to the next; two layers of one class share their sites, so an op
    recurs inside a turn, anchored, and never ran again. Every few turns another such op took
    over, and the turns merged into one row until the window (the last 16 tokens) stopped
    growing; auto saw no iteration to measure meanwhile (a model like this one, generating 300
    tokens with a window of 512, co-executed every turn, at 9x eager's time)."""
    source = PRELUDE + TWIN_GENERATION + """
print(seq.tolist())
"""
    session = check_program(source)
    rows = session.log.iterations
    assert len(rows) >= 26, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert [it.mode for it in rows[-6:-1]] == ["coexec"] * 5, [it.mode for it in rows]


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_two_calls_of_one_function_from_the_loop_are_one_row_per_turn(backend):
    """``x = step(x)`` twice a turn, and nothing else: both calls are one node (a location leaves
    out where in the cell a function was called from, so that cells share nodes), the anchor, and
    each call was a row of its own (60 rows for 30 turns; its periods are equal, so the rule for a
    node that recurs inside a turn did not apply). The calls from the line the loop's tick comes
    before start the rows. So in auto's eager turns, run with the mode on (its probe's are many
    where a turn is this short): each call ended a row there (130 rows for 90 turns)."""
    turns = {"eager": 30, "auto": 90}[backend]
    source = PRELUDE + f"""
lin = nn.Linear(6, 6)
state = torch.randn(3, 6)
def step(s):
    return torch.tanh(lin(s)) * 0.9
with torch.no_grad():
    for t in range({turns}):
        state = step(state)
        state = step(state)
print(state.sum().item())
"""
    rows = check_program(source, backend=backend).log.iterations
    assert turns - 1 <= len(rows) <= turns + 1, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    if backend == "eager":
        assert [it.mode for it in rows[-6:-1]] == ["coexec"] * 5
    else:
        assert "eager" in [it.mode for it in rows], [it.mode for it in rows]


def test_the_training_rows_stay_when_generation_after_it_finds_its_turns():
    """Training, then generation (as above): the generation's first anchor gave the training's rows
    their own, then its anchor moved as it found its turns, and each move merged everything the cell
    had recorded, the training's rows with it, into one row (gpt2's benchmark program: 30 rows
    became 2)."""
    source = PRELUDE + """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
""" + TWIN_GENERATION + """
print(seq.tolist(), round(loss.item(), 5))
"""
    rows = check_program(source).log.iterations
    shown = [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    step = rows[5].ops_coexec  # a training step
    assert step >= 15 and sum(it.mode == "coexec" and it.ops_coexec == step for it in rows[2:11]) >= 8, shown
    assert len(rows) >= 12 + 20, shown


@pytest.mark.parametrize("always", [True, False])
def test_batches_of_a_new_length_each_turn_are_one_row_each(always):
    """Sequences of a random length, the turn's first op a shape variant: when the anchor's shape
    did not come back, a variant of its op where it would run starts the turn. Anchored to one
    shape, the anchor went idle, another took over, and the first came back as if it enclosed
    the loop: the 30 turns merged into two rows."""
    source = PRELUDE + """
lin = nn.Linear(6, 6)
opt.add_param_group({"params": lin.parameters()})
for i in range(30):
    n = random.randint(3, 8)
    x = F.pad(torch.randn(2, n, 6), [0, 0, 0, 8 - n])
    loss = lin(x).pow(2).mean() + torch.linspace(0, 1, steps=n + 2).sum() * 0.01
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, n, round(loss.item(), 5))
"""
    printed, namespace = run_eager(source)
    session = terra_nb.Session(always_coexec=always)
    printed_t, namespace_t, _ = run_terra(source, session=session)
    assert printed_t == printed
    assert_same_state(state_of(namespace), state_of(namespace_t))
    rows = session.log.iterations
    assert len(rows) == 30, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]


def test_auto_counts_a_row_per_turn_of_new_lengths_in_its_eager_iterations():
    """auto measures eager iterations, then runs eagerly (a loop of tiny ops): there the rows end
    where a call of the anchor's op starts the turn, a variant that has been the anchor or a shape
    never seen. Only the anchor's own shape counted before: turns merged, eager's time per row
    was that of several turns, and the stretch ran as many turns more."""
    source = PRELUDE + """
for i in range(80):
    n = random.randint(3, 8)
    x = F.pad(torch.randn(2, n, 6), [0, 0, 0, 8 - n])
    loss = model(x).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if i % 10 == 0:
        print(i, n, round(loss.item(), 5))
"""
    printed, namespace = run_eager(source)
    printed_t, namespace_t, session = run_terra(source, session=terra_nb.Session(backend="auto"))
    assert printed_t == printed
    assert_same_state(state_of(namespace), state_of(namespace_t))
    modes = [it.mode for it in session.log.iterations]
    assert "eager" in modes, modes
    assert len(modes) >= 72, modes  # (the first traced turns may merge: see ARCHITECTURE.md)


def test_an_epoch_of_many_batches_that_each_train_keeps_batch_iterations():
    """An epoch loop with an op of its own around more batches than any window of recent
    positions would hold: each batch runs a backward, so the batches stay the iterations."""
    source = """
import torch
torch.manual_seed(0)
w = torch.ones(3, requires_grad=True)
data = torch.randn(800, 3)
for epoch in range(3):
    marker = torch.full((1,), float(epoch))
    for start in range(0, 800, 8):
        loss = (data[start:start + 8] * w).sum()
        loss.backward()
print(w.grad)
"""
    session = check_program(source)
    assert len(session.log.iterations) == 300


@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_a_new_default_dtype_mid_loop_gives_factories_its_dtype(runner):
    """``torch.set_default_dtype`` changes what factories (and Python floats with integer tensors)
    make: the nodes traced before must not answer for the calls after (their futures said
    float32), and the blocks before run under the default they were checked with."""
    source = """
import torch
torch.manual_seed(0)
w = torch.ones(3, dtype=torch.float64, requires_grad=True)
for i in range(40):
    if i == 10:
        torch.set_default_dtype(torch.float64)
    z = torch.randn(3) + torch.arange(3) * 0.5
    loss = (z * w).sum() * 1.5
    loss.backward()
    print(i, z.dtype, loss.dtype, round(loss.item(), 4))
torch.set_default_dtype(torch.float32)
"""
    try:
        session = check_program(source, runner=runner)
    finally:
        torch.set_default_dtype(torch.float32)
    modes = [it.mode for it in session.log.iterations]
    assert "coexec" in modes[modes.index("fallback"):], modes


@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_torchscript_functions_and_modules_train_as_in_eager(runner):
    """A scripted function's or module's ops run in C++, past the mode: given a future, autograd
    recorded them against the wrapper and the model before it got no gradient."""
    import linecache

    source = PRELUDE + """
@torch.jit.script
def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    return x * torch.sigmoid(beta * x)
class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)
    def forward(self, h):
        return self.lin(h).tanh() * 2
head = torch.jit.script(Head())
hopt = torch.optim.SGD(head.parameters(), lr=0.1)
for i, (x, y) in enumerate(data):
    h = swish(model[0](x), 1.0 + i * 0.1)
    loss = F.cross_entropy(model[2](h), y) + F.cross_entropy(head(h), y)
    opt.zero_grad(); hopt.zero_grad(); loss.backward(); opt.step(); hopt.step()
    print(i, round(loss.item(), 4), round(model[0].weight.grad.abs().sum().item(), 4))
print(head.lin.weight.sum().item())
del head  # (a ScriptModule: state_of reads the optimizer's state of its parameters)
"""
    linecache.cache["<eager>"] = (len(source), None, source.splitlines(True), "<eager>")  # TorchScript reads the source
    try:
        check_program(source, runner=runner)
    finally:
        del linecache.cache["<eager>"]


def test_the_graph_export_shows_a_nested_tensor_the_program_made():
    session = check_program(PRELUDE + CASES["nested_tensors_of_the_program"])
    graph = session.to_json()  # (a nested tensor's metadata has no shape)
    assert any(node["op"].startswith("nested ") for node in graph["nodes"])
    assert len(session.to_pandas("ops")) and session.to_dot() is not None


def test_a_first_cell_in_a_fresh_process_runs_before_dynamo_was_ever_imported():
    """The engine's patches go in after Dynamo registered its stand-ins for the originals (it
    checks their signatures: the first cell of a fresh process raised a TypeError)."""
    import subprocess
    import sys

    program = """
import sys, torch, terra_nb
assert "torch._dynamo" not in sys.modules
model = torch.nn.Linear(3, 1)
cell = "for i in range(6):\\n    loss = model(torch.ones(2, 3)).sum()\\n    loss.backward()\\n    print(i, round(loss.item(), 4))\\n"
terra_nb.Session(always_coexec=True).run_cell(cell, {"torch": torch, "model": model})
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith("5 ")


def test_a_call_that_bypasses_torchs_python_api_is_an_error_not_a_lost_gradient():
    """Below autograd, a future that requires grad cannot give autograd the graph that made its
    value: an error that says so, where the gradient would silently not have reached the model.
    (Torch function disabled stands for a C++ extension's own binding.)"""
    source = """
import torch
w = torch.ones(3, requires_grad=True)
for i in range(6):
    h = w * (i + 1)
    with torch._C.DisableTorchFunction():
        out = (h * 2).sum()
    out.backward()
"""
    printed, namespace = run_eager(source)
    assert namespace["w"].grad.tolist() == [42.0] * 3
    with pytest.raises(RuntimeError, match="bypasses torch's Python API"):
        run_terra(source)


EPISODES_IN_FUNCTIONS = PRELUDE + """
policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
popt = torch.optim.Adam(policy.parameters(), lr=1e-2)
rng = np.random.RandomState(0)

def act(state, logps):
    dist = torch.distributions.Categorical(logits=policy(torch.from_numpy(state).float()))
    a = dist.sample()
    logps.append(dist.log_prob(a))
    return a.item()

def finish(logps, rewards):
    returns = torch.tensor(rewards).flip(0).cumsum(0).flip(0)
    loss = -(torch.stack(logps) * returns).sum()
    popt.zero_grad()
    loss.backward()
    popt.step()
    return loss.item()

for episode in range(10):
    state, logps, rewards, done = rng.uniform(-1, 1, 4), [], [], False  # numpy: no op of its own
    while not done:
        a = act(state, logps)
        state = state + rng.uniform(-0.2, 0.2, 4) + (0.1 if a else -0.1)
        rewards.append(1.0)
        done = abs(state[0]) > 1.5 or len(rewards) >= 30
    print(episode, len(rewards), round(finish(logps, rewards), 4))
"""


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_episodes_whose_steps_come_first_are_the_iterations(backend):
    """The episode loop runs no op before its steps (the environment is numpy) and its backward
    comes after them: the anchor starts in the steps, and the backward takes it when the steps ran
    twice or more since the last one. With ``auto``, eager iterations wait for that backward (they
    would hide it): the rows are episodes either way, whichever way auto chooses."""
    printed, eager_ns = run_eager(EPISODES_IN_FUNCTIONS)
    out, namespace, session = run_terra(EPISODES_IN_FUNCTIONS, backend=backend)
    assert out == printed
    assert_same_state(state_of(eager_ns), state_of(namespace), exact=backend == "eager")
    rows = session.log.iterations
    assert len(rows) == 10, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]
    assert "coexec" in [it.mode for it in rows]


def test_an_op_whose_shape_follows_values_unforeseen_runs_for_real_once_seen(monkeypatch):
    """No list can name every op whose output shape depends on its inputs' values. Here the lists
    are emptied, so ``torch.arange(n)`` with a tensor ``n`` is deferred with the first trace's
    shape. The GraphRunner compares each output's shape with its future's: the first mismatch is
    logged and the node runs for real from then on; the values were right all along."""
    monkeypatch.setattr(coexec, "values_decide_shape", lambda info, args, tensors, kwargs=None: False)
    source = PRELUDE + """
for i, (x, y) in enumerate(data):
    n = (y.sum() % 5) + 2
    pos = torch.arange(n)
    loss = F.cross_entropy(model(x), y) + pos.sum() * 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(i, pos.shape[0], pos.sum().item(), round(loss.item(), 4))
"""
    printed, eager_ns = run_eager(source)
    out, namespace, session = run_terra(source)
    assert_same_state(state_of(eager_ns), state_of(namespace))
    events = [e for e in session.log.events if e.kind == "fallback" and "depends on its inputs' values" in e.reason]
    assert len(events) == 1 and events[0].reason.startswith("arange"), [e.reason for e in session.log.events]
    # the shape read before the mismatch was seen may be wrong; the values never were
    lines, eager_lines = out.splitlines(), printed.splitlines()
    wrong = [k for k, (a, b) in enumerate(zip(lines, eager_lines)) if a != b]
    assert 1 <= len(wrong) <= 2 and all(lines[k].split()[2:] == eager_lines[k].split()[2:] for k in wrong), (out, printed)
    assert lines[-3:] == eager_lines[-3:]


def test_a_new_hook_function_every_iteration_is_one_node():
    """``x.register_hook(lambda g: ...)`` passes a new function each iteration: keyed by its code,
    it is one node, not a fallback per iteration."""
    session = check_program(PRELUDE + CASES["a_new_hook_function_every_iteration"])
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("fallback") <= 2 and modes[-8:] == ["coexec"] * 8, modes


@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_hooks_registered_outside_the_cells_run_in_program_order(runner):
    """A notebook registers gradient hooks in plain cells, past the mode: one before the first
    co-executed cell, one between two. Backward runs them where the program reads what they
    append, as eager does (on the GraphRunner's thread they ran late, or not at all)."""
    loop = """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, [(len(v), v[-1]) for v in (first, second) if v])
"""
    cells = [(False, PRELUDE + "first, second = [], []\n"),
             (False, "h1 = model[0].weight.register_hook(lambda g: first.append(round(g.norm().item(), 4)))"),
             (True, loop),
             (False, "h2 = model[2].bias.register_post_accumulate_grad_hook(lambda p: second.append(round(p.grad.sum().item(), 4)))"),
             (True, loop)]
    session = check_cells(cells, runner=runner)
    assert sum(it.mode == "coexec" for it in session.log.iterations) >= 16


def test_a_new_dict_argument_every_iteration_is_one_node():
    """``copy.deepcopy(t)`` passes ``Tensor.__deepcopy__`` a new memo dict each call: keyed by its
    type, it is one node (it fell back every iteration)."""
    session = check_program(PRELUDE + CASES["a_deep_copy_of_the_loss_each_iteration"])
    modes = [it.mode for it in session.log.iterations]
    # (the third row traces the branch not taken before; the last holds the print after the loop)
    assert modes[3:-1] == ["coexec"] * 8, modes


def test_a_new_generator_every_epoch_is_one_node():
    """A shuffling DataLoader's sampler makes a new torch.Generator each epoch for its randperm:
    keyed by its type, that call is one node (it fell back every epoch)."""
    session = check_program(PRELUDE + CASES["a_shuffling_dataloader"])
    randperm = [e for e in session.log.events if e.kind == "fallback" and e.reason.startswith("randperm")]
    assert len(randperm) <= 1, [(e.iteration, e.reason) for e in randperm]


def test_a_narrow_win_of_co_execution_is_measured_again_soon():
    """auto keeps co-execution after a probe; by less than CHOICE_CLEAR (a noisy machine gives
    such medians either way) it measures again after CHOICE_RETRY iterations, not CHOICE_KEEP."""
    executor = terra_nb.Session().executor
    for eager_ms, after in ((10.5, coexec.CHOICE_RETRY), (15.0, coexec.CHOICE_KEEP)):
        executor._coexec_ms, executor._eager_ms = [10.0] * 5, [eager_ms] * 3
        assert executor._eager_wins() is False
        assert executor._probe_after == after
    reasons = [e.reason for e in executor.log.events if e.kind == "choice"]
    assert reasons[0].endswith(f"measured again in {coexec.CHOICE_RETRY} iterations")
    assert reasons[1].endswith(f"measured again in {coexec.CHOICE_KEEP} iterations")


def _modes_same_as_eager(source: str) -> list[str]:
    """Check ``source`` against eager (check_program); the modes of its iterations."""
    return [it.mode for it in check_program(source).log.iterations]


def test_a_buffer_written_in_a_time_loop_requires_grad_as_in_eager():
    """``out[:, t] = h`` makes ``out`` require grad (``h`` does): a write that returns None changes
    its target's metadata, so it runs for real and the future takes the new ``requires_grad``.
    Deferred, ``out.requires_grad`` read False, and the next write matched the node of a target
    that does not require grad: every iteration fell back. (Only the program's thread runs CPU
    blocks here: on the GraphRunner's, the cell's gradient, a sum over the time steps, may differ
    in the last bits, README "Limits".)"""
    modes = _modes_same_as_eager(PRELUDE + """
cell = nn.GRUCell(6, 8)
opt.add_param_group({"params": cell.parameters()})
for i, (x, y) in enumerate(data):
    out = torch.zeros(8, 5, 8)
    h = torch.zeros(8, 8)
    for t in range(5):
        h = cell(x * (t + 1), h)
        out[:, t] = h  # out requires grad from here on, as eager's does
        if t == 0:
            flags = (out.requires_grad, out.is_leaf, out.mul(1).requires_grad)
    loss = F.cross_entropy(model(out.mean(1)[:, :6]), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, flags, out.requires_grad, round(loss.item(), 5))
""")
    assert modes.count("coexec") >= 8, modes


def test_a_random_factory_of_a_new_size_each_step_does_not_fall_back():
    """``torch.randn(n, 6)`` with ``n`` new each step (a batch of variable size drawn from a
    generator): the variant's shape comes from a run on the meta device, which draws nothing, so
    the stream stays eager's. Before, a random op's variant was traced: a fallback each new size."""
    source = PRELUDE + """
for i in range(30):
    n = 2 + (i * 5) % 7
    noise = torch.randn(n, 6)
    loss = model(noise).pow(2).mean() + torch.zeros(n).sum() + torch.rand(n).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("fallback") <= 2, modes


def test_a_gru_on_packed_sequences_of_new_lengths_does_not_fall_back_each_step():
    """``pack_padded_sequence`` of lengths drawn each step, into a GRU: the GRU reads its packed
    input's ``batch_sizes`` on the host, which a meta tensor has no values for, so its variant for a
    new total length could not be derived (a fallback in most steps: 12 of 20). The meta run is
    retried with the call's own integer tensors."""
    source = PRELUDE + """
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
emb, rnn, head = nn.Embedding(20, 8), nn.GRU(8, 16, batch_first=True), nn.Linear(16, 2)
opt.add_param_group({"params": [*emb.parameters(), *rnn.parameters(), *head.parameters()]})
for i in range(24):
    lens = [random.randint(2, 7) for _ in range(4)]
    x = pad_sequence([torch.randint(1, 20, (n,)) for n in lens], batch_first=True)
    packed = pack_padded_sequence(emb(x), torch.tensor(lens), batch_first=True, enforce_sorted=False)
    out, h = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True)
    loss = F.cross_entropy(head(h[-1]), torch.randint(0, 2, (4,))) + out.mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, tuple(out.shape), round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("fallback") <= 4, modes


def test_losses_without_meta_kernels_over_new_lengths_do_not_fall_back_each_step():
    """CTC over sequences and targets of lengths drawn each step, and a Gaussian NLL over a batch of
    a size drawn each step: ``ctc_loss`` has no meta kernel and ``gaussian_nll_loss`` reads its
    variance's values (``.item()``) on the way, so a new length's variant could not be derived on
    meta tensors, and nearly every step fell back (13 of 16 for the CTC). Both reduce to a scalar:
    their variants follow that rule."""
    source = PRELUDE + """
rnn, head = nn.GRU(5, 7), nn.Linear(7, 6)
ctc = nn.CTCLoss(blank=0, zero_infinity=True)
opt.add_param_group({"params": [*rnn.parameters(), *head.parameters()]})
for i in range(20):
    T = random.randint(8, 12)
    out, _ = rnn(torch.randn(T, 3, 5))
    logp = head(out).log_softmax(-1)
    lengths = torch.tensor([random.randint(1, 4) for _ in range(3)])
    targets = torch.randint(1, 6, (int(lengths.sum()),))
    loss = ctc(logp, targets, torch.full((3,), T), lengths)
    n = random.randint(4, 9)
    mean = model(torch.randn(n, 6))
    loss = loss + F.gaussian_nll_loss(mean, torch.randn(n, 3), torch.ones(n, 3) * 0.5)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, T, n, round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("coexec") >= 12, modes


def test_shape_variants_of_common_ops_follow_the_ops_rules_without_meta_runs(monkeypatch):
    """Sequences of a new length each step through LayerNorm, Linear, GELU, softmax, a residual
    add, grid_sample, two losses, cat and stack (of a list as long as the sequence): each op's variant takes its output shape from the op's own rule (checked
    on the traced sibling), not from a run on meta tensors (0.1-3 ms of Python each, per op and
    new shape: a generation loop co-executed at 30 ms a token, 13 now). A length that does not fit
    a layer, or a dim past the rank of a variant of fewer dims, still raises at its call, inside
    the program's ``try``, as eager raises."""
    calls = []
    original = coexec._run_on_meta

    def counting(func, *args, **kwargs):
        out = original(func, *args, **kwargs)  # (a call whose shapes do not fit raises here: not counted)
        calls.append(getattr(func, "__name__", str(func)))
        return out

    monkeypatch.setattr(coexec, "_run_on_meta", counting)
    source = PRELUDE + """
norm, lin = nn.LayerNorm(6), nn.Linear(6, 6)
opt.add_param_group({"params": [*norm.parameters(), *lin.parameters()]})
for i in range(24):
    n = 2 + (i * 5) % 7
    x = torch.randn(2, n, 6 if i != 20 else 5)
    try:
        h = x + F.gelu(lin(norm(x)))
        p = (h if i != 22 else h[0]).softmax(2)
    except (RuntimeError, IndexError) as e:
        print(i, "does not fit:", type(e).__name__)
        continue
    img = F.grid_sample(h[:, None], torch.rand(2, n, 3, 2) * 2 - 1, align_corners=False)
    loss = p.pow(2).mean() + img.mean() + F.mse_loss(h, x)
    loss = loss + F.cross_entropy(h.flatten(0, 1), torch.randint(0, 6, (2 * n,)))
    loss = loss + torch.cat([h, x], dim=-1).mean() + torch.stack([h[:, j] for j in range(n)], 1).std()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, n, tuple(img.shape), round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("coexec") >= 15, modes
    ruled = {"layer_norm", "linear", "gelu", "add", "__add__", "softmax", "pow", "grid_sample", "mse_loss",
             "cross_entropy", "cat", "stack"}
    assert not ruled & set(calls), calls


def test_sizes_read_from_tensors_are_sizes_as_tuples_are():
    """``torch.zeros(h.shape)``, ``h.new_ones(h.size())``, ``x.reshape(y.shape)`` with a batch size
    new each step: a ``torch.Size`` is scanned as the tuple of ints it is, so its variants are
    derived. Kept whole as a constant, each new size was traced (a fallback per size), and a
    block holding such a call was built from a template that disagreed with its spec (a crash)."""
    source = PRELUDE + """
lin = nn.Linear(6, 6)
opt.add_param_group({"params": lin.parameters()})
for i in range(30):
    b = 3 + (i * 7) % 6
    x = torch.randn(b, 6)
    h = lin(x)
    z = torch.zeros(h.shape)
    m = h.new_ones(h.size())
    e = torch.randn(x.size()) * 0.1
    r = (h + e).reshape(x.shape).view(h.size(0), -1)
    loss = ((r - z) * m).pow(2).mean() + torch.empty(x.shape).fill_(0.5).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("fallback") <= 2, modes


def test_numpy_scalars_are_feeds_as_pythons_are():
    """A weight read from a float32 array, an index from a permutation (numpy scalars, not Python's)
    new each step: feeds, as Python's floats and ints are. Keyed by value, every step fell back."""
    source = PRELUDE + """
weights = np.linspace(0.5, 1.5, 40, dtype=np.float32)
perm = np.random.permutation(40)
xs = torch.randn(40, 6)
for i in range(40):
    x, y = data[i % 12]
    w, j = weights[i], perm[i]  # np.float32, np.int64
    loss = F.cross_entropy(model(x + xs[j]), y) * w + np.float32(0.01) * (y.float().mean() + np.int64(i))
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 5))
"""
    modes = _modes_same_as_eager(source)
    assert modes.count("coexec") >= 30, modes


def test_python_ints_in_arithmetic_are_feeds():
    """``x * i``, ``arange(n) + i * n``: a new int each iteration is a feed of one node, not a new
    node per iteration (the graph grew by one node per op and iteration)."""
    session = check_program(PRELUDE + CASES["python_ints_in_arithmetic_each_iteration"])
    sites = {}
    for node in session.executor.graph.nodes:
        if node.info is not None and node.info.name in ("add", "mul", "clamp", "pow", "div", "remainder", "eq"):
            sites.setdefault((node.info.name, node.site), []).append(node)
    assert sites and all(len(nodes) <= 2 for nodes in sites.values()), \
        {name: len(nodes) for (name, _), nodes in sites.items()}


def test_fallbacks_while_co_executing_count_against_it():
    """A program that falls back again and again (reinforce: every episode's end) pays for each;
    auto's figure for co-execution counts them in, where the clean iterations alone made it look
    cheap (reinforce ran co-executed at 2.8x eager's time)."""
    executor = terra_nb.Session().executor
    executor.baseline = 0
    for ms in [1.0] * 4 + [20.0] + [1.0] * 6:
        executor._choose("fallback" if ms > 10 else "coexec", ms)
    assert executor._coexec_ms == [1.0] * 10 and executor._relapse_ms == [20.0]
    executor._eager_ms = [2.0] * 5
    assert executor._eager_wins() is True  # (10 x 1.0 + 20.0) / 11 = 2.7 ms co-executed
    choice = [e.reason for e in executor.log.events if e.kind == "choice"][-1]
    assert "1 fallback counted in" in choice and "co-executed 2.73 ms" in choice, choice
    executor._coexec_ms, executor._eager_ms = [1.0] * 10, [2.0] * 5  # without it, co-execution wins
    assert executor._eager_wins() is False


def test_a_parameter_the_next_cell_leaves_out_gets_no_grad():
    """One optimizer holds a head that the first and the third cells use and the last does not:
    its ``.grad`` reads, a tensor in every traced iteration, are None in the last cell, and the
    step skips the head as eager does (its deferred step received None)."""
    loop = """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(HEAD(model(x)), y)
    opt.zero_grad(); loss.backward(); opt.step()
    seen.append(round(loss.item(), 5))
print(len(seen), seen[-1], head.weight.grad is None)
"""
    cells = [(False, PRELUDE + "seen = []\nhead = nn.Linear(3, 3)\nopt.add_param_group({'params': head.parameters()})"),
             (True, loop.replace("HEAD", "head")),
             (True, loop.replace("HEAD", "")),
             (True, loop.replace("HEAD", "head")),
             (True, loop.replace("HEAD", ""))]
    session = check_cells(cells)
    assert sum(it.mode == "coexec" for it in session.log.iterations) >= 30


def test_gradient_clipping_takes_its_foreach_path_as_eager_does():
    """clip_grad_norm_ and clip_grad_value_ (foreach=None) go down their foreach path for tensors of
    type torch.Tensor: the .grad reads they get are futures, and they took the per-tensor path, a
    norm, a copy and a multiply per parameter where eager runs one of each (with CUDA, other kernels)."""
    session = check_program(PRELUDE + """
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    torch.nn.utils.clip_grad_value_(model.parameters(), 0.05)
    opt.step()
    print(i, round(total.item(), 4), round(loss.item(), 4))
""")
    names = [node.info.name for node in session.executor.graph.nodes if node.info is not None]
    assert {"_foreach_norm", "_foreach_clamp_min_", "_foreach_clamp_max_"} <= set(names), sorted(set(names))
    assert names.count("linalg_vector_norm") == 1  # the total's, over the stacked norms


def test_lists_of_a_new_length_do_not_fall_back():
    """An episode of a new length: iterating its returns (``unbind``) gives another number of
    tensors, and ``torch.cat`` of the steps takes another number. Both are the op the trace saw,
    with a list of another length: derived on meta tensors, not traced again. (Each episode's end
    fell back.)"""
    session = check_program(PRELUDE + """
policy = nn.Linear(4, 2)
popt = torch.optim.Adam(policy.parameters(), lr=1e-2)
lengths = [3, 5, 4, 6, 3, 7, 5, 8, 4, 6, 9, 5, 7, 3, 6, 8]
for episode, n in enumerate(lengths):
    log_probs = []
    for t in range(n):
        p = F.softmax(policy(torch.randn(4)), dim=0)
        log_probs.append(torch.log(p[t % 2]).unsqueeze(0))
    returns = torch.tensor([0.9 ** k for k in range(n)])
    returns = (returns - returns.mean()) / (returns.std() + 1e-6)
    loss = torch.cat([-lp * r for lp, r in zip(log_probs, returns)]).sum()
    hidden = torch.stack([lp.squeeze(0) for lp in log_probs]).mean()
    popt.zero_grad(); loss.backward(); popt.step()
    print(episode, n, round(loss.item(), 4), round(hidden.item(), 4))
""")
    fallbacks = [e for e in session.log.events if e.kind == "fallback"]
    assert len(fallbacks) <= 3, [(e.iteration, e.reason) for e in fallbacks]


@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_a_weak_reference_to_a_result_never_names_another_value(runner):
    """A node reuses a future that only its ring still holds. One the program keeps a weak
    reference to (a WeakValueDictionary of results) is let go instead: reused, the dictionary's
    entry named a later iteration's value (entries 2-9 of 12 did), and lived on."""
    source = PRELUDE + """
import weakref
cache = weakref.WeakValueDictionary()
sums = {}
for i, (x, y) in enumerate(data):
    out = model(x)
    cache[i] = out
    sums[i] = round(out.sum().item(), 4)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
wrong = [k for k, v in list(cache.items()) if round(v.sum().item(), 4) != sums[k]]
"""
    namespace: dict = {"__name__": "__main__"}
    session = terra_nb.Session(runner=runner, always_coexec=True)
    with contextlib.redirect_stdout(io.StringIO()):
        session.run_cell(source, namespace)
    assert namespace["wrong"] == []
    assert sorted(namespace["cache"].keys()) in ([11], [10, 11])  # eager: [11]; one more at most
    assert sum(it.mode == "coexec" for it in session.log.iterations) >= 6


def test_a_dropped_or_reset_session_leaves_no_runner_thread():
    """Each GraphRunner's thread held its runner: every Session() a program made and dropped, and
    every ``%terra reset``, left a thread running for the life of the process."""
    import gc
    import threading

    def runners():
        return sum(t.name == "terra-graph-runner" and t.is_alive() for t in threading.enumerate())

    gc.collect()
    before = runners()
    for _ in range(3):
        session = terra_nb.Session()
        run_terra("import torch\nx = torch.ones(3)\nfor i in range(6):\n    x = x * 2\nprint(x.sum().item())\n",
                  session=session)
        del session
    gc.collect()
    assert runners() == before
    session = terra_nb.Session()
    for _ in range(3):
        session.reset()
    assert runners() == before + 1
    printed, _, _ = run_terra("import torch\nprint((torch.ones(2) * 3).tolist())\n", session=session)
    assert printed == "[3.0, 3.0]\n"


@pytest.mark.parametrize("head", ["break", "continue"])
@pytest.mark.parametrize("backend", ["auto", "coexec"])
def test_a_turn_that_leaves_at_its_head_is_no_row_of_its_own(head, backend):
    """``if step >= steps: break`` as a loop's first statement (a step-limited loop over batches):
    the turn that breaks does nothing. Co-executed, it runs no op and is part of the last step's
    row; auto's eager turns, counted by the loop's ticks with the mode off, made it a row of its
    own (81 rows for 80 steps). A turn skipped by a ``continue`` there is part of the row before it
    the same way."""
    skip = "if step >= 80:\n        break" if head == "break" else "if i % 3 == 2:\n        continue"
    source = PRELUDE + f"""
step = 0
for i in range({81 if head == "break" else 120}):
    {skip}
    x, y = data[step % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    step += 1
print(step, round(loss.item(), 5))
"""
    printed, _ = run_eager(source)
    session = (terra_nb.Session(backend="auto") if backend == "auto"
               else terra_nb.Session(backend="eager", always_coexec=True))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, {"__name__": "__main__"})
    assert out.getvalue() == printed
    rows = session.log.iterations
    modes = [it.mode for it in rows]
    assert ("eager" in modes) == (backend == "auto"), modes  # auto chose eager on this CPU
    assert len(rows) == 80, [(it.mode, it.ops_traced, it.ops_coexec) for it in rows]


def _adam_cells(turns: int, optimizer: str = "Adam", print_loss: bool = True) -> tuple[str, str]:
    """A prelude whose optimizer is ``optimizer`` (step counters), and a training cell of ``turns``
    turns (the loss printed after the loop, at its line 6)."""
    source = PRELUDE.replace("torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
                             f"torch.optim.{optimizer}(model.parameters(), lr=0.01)")
    train = f"""
for i in range({turns}):
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
"""
    return source, train + ("print(round(loss.item(), 6))\n" if print_loss else "")


@pytest.mark.parametrize("between", ["", "opt.param_groups[0]['lr'] = 0.02", "[s['step'].add_(0) for s in opt.state.values()]"])
def test_a_second_cell_reads_adams_step_counters_without_waiting(between):
    """Adam keeps a one-element step tensor per parameter and reads it with ``.item()`` in every
    step: the skeleton runs the counters' ops at once and reads them with no wait (they are
    skeleton-local). The marks were cleared at each cell's end, and the next cell that trained
    with the same optimizer waited for the blocks at every read: a sync per parameter per
    iteration (60 in the second cell's 15 iterations, none in the first's). They are restored where
    nothing new refers to the counters, as after auto's eager iterations within a cell (plain
    code between the cells that only sets a learning rate, or updates them in place, changes no
    reference)."""
    source, train = _adam_cells(15)
    session = check_cells([(False, source), (True, train), (False, between), (True, train)])
    syncs = [(e.cell, e.iteration, e.reason, e.location) for e in session.log.of_kind("sync")]
    assert all(location.endswith(":6") for _, _, _, location in syncs), syncs  # the print's .item() alone


def test_a_cell_after_one_that_auto_ended_eagerly_reads_the_step_counters_without_waiting():
    """auto on a CPU ends a cell in an eager stretch, the marks cleared and remembered for when
    co-execution resumes; the cell's end cleared them again with nothing to remember, and the next
    cell's co-executed iterations made a sync per parameter each (56 in its 14)."""
    source, train = _adam_cells(100, optimizer='AdamW')
    session = check_cells([(False, source), (True, train), (True, train)], backend="auto")
    rows = {cell: [it.mode for it in session.log.iterations if it.cell == cell] for cell in (1, 2)}
    assert rows[1][-1] == "eager" and "coexec" in rows[2], rows  # (auto chose eager on this CPU)
    syncs = [(e.cell, e.iteration, e.location) for e in session.log.of_kind("sync")]
    assert all(location.endswith(":6") for _, _, location in syncs), syncs  # the print's .item() alone


def test_a_step_counter_viewed_between_cells_is_read_after_the_writes_through_its_view():
    """The counters' marks come back only where nothing new refers to them: a view made in a plain
    cell and written through in the next (deferred, by a block) must be waited for when the
    counter is read, or ``.item()`` reads the value from before the write."""
    source, train = _adam_cells(6, print_loss=False)
    view = "steps = [s['step'] for s in opt.state.values()]\nviews = [t.view(1) for t in steps]\ndel steps"
    bump = """
for i in range(6):
    views[0].mul_(torch.full((1,), 2.0))
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, next(iter(opt.state.values()))['step'].item(), round(loss.item(), 6))
"""
    check_cells([(False, source), (True, train), (False, view), (True, bump)])


def test_a_second_cell_training_with_the_same_adam_has_a_row_per_turn():
    """The first optimizer step of a cell was compared with the last step of the cell before: the
    anchor, first found recurring inside Adam's step (its step counters' op, once per parameter),
    had run four times since, and the step's last op anchored the rows. Every later cell's rows
    began there: 16 rows for 15 turns, the last of them the post-loop code alone."""
    source, train = _adam_cells(15)
    session = check_cells([(False, source), (True, train), (True, train), (True, train)])
    rows = [[(it.mode, it.ops_traced + it.ops_coexec) for it in session.log.iterations if it.cell == cell]
            for cell in (1, 2, 3)]
    assert [len(r) for r in rows] == [15, 15, 15], rows
    assert len({ops for r in rows[1:] for _, ops in r[:-1]}) == 1, rows  # each row one whole turn


def test_a_sync_in_a_later_cell_names_that_cells_line():
    """Cells share the nodes of the ops they both run (a node's place leaves out where the cell
    called from): the second cell's ``.item()`` and ``cross_entropy`` are the first's nodes. Its
    sync events named the first cell's lines, where the node was first recorded."""
    first = """
for i in range(6):
    x, y = data[i]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    print(round(loss.item(), 6))
"""
    second = """
for i in range(6):
    x, y = data[i + 6]; loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    print(round(loss.item(), 6))
"""
    session = check_cells([(False, PRELUDE), (True, first), (True, second)])
    places = {(e.cell, e.location.rsplit(":", 1)[1]) for e in session.log.of_kind("sync")}
    assert places == {(1, "6"), (2, "4")}, places
    files = {e.cell: e.location.rsplit(":", 1)[0] for e in session.log.of_kind("sync")}
    assert files[1] != files[2], files


def test_an_error_a_block_raises_in_a_later_cell_names_that_cells_line():
    """A later cell runs the first cell's nodes (the same ops, at other lines): an error a block
    raised there (an index the deferred ops computed, past an embedding's rows) ended its
    traceback at the first cell's line, in the first cell's source."""
    first = """
for i in range(8):
    x, y = data[i]
    idx = (x[:, 0].abs() * scale).long()
    h = emb(idx).sum()
    print(i, round(h.item(), 5))
"""
    second = """
for i in range(8):
    x, y = data[i]
    idx = (x[:, 0].abs() * scale).long(); h = emb(idx).sum()
    print(i, round(h.item(), 5))
"""
    session = terra_nb.Session(backend="eager", always_coexec=True)
    namespace = {"__name__": "__main__"}
    exec(PRELUDE + "emb = nn.Embedding(5, 3)\nscale = 1.0\n", namespace)
    with contextlib.redirect_stdout(io.StringIO()):
        session.run_cell(first, namespace, filename="<first>")
        namespace["scale"] = 3.0
        with pytest.raises(IndexError) as info:
            session.run_cell(second, namespace, filename="<second>")
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == ("<second>", 4), traceback.format_exception(info.value)


def test_a_step_inside_try_defers_the_ops_whose_indices_it_checked():
    """``try:`` around a training step, skipping the batches that raise (a bad label, an id past
    the vocabulary): the ops that raise on an index's values ran at once inside it, each a sync
    of the blocks before it (two an iteration here), so that the except clause sees their error
    where eager raises it. Where the index is real (on the CPU), its range is checked instead: in
    range, the op is deferred; out of range, it runs at once and raises there, as before."""
    source = PRELUDE + """
emb = nn.Embedding(20, 6)
ids = [torch.randint(0, 25 if k == 7 else 20, (8,)) for k in range(12)]
skipped = 0
for i in range(30):
    x, y = data[i % len(data)]
    try:
        loss = F.cross_entropy(model(x + emb(ids[i % len(ids)])), y)
        opt.zero_grad(); loss.backward(); opt.step()
    except IndexError:
        skipped += 1
        continue
print(skipped, round(loss.item(), 6))
"""
    session = check_program(source)
    syncs = [(e.iteration, e.reason, e.location) for e in session.log.of_kind("sync")]
    assert all(reason.startswith("item") for _, reason, _ in syncs), syncs  # the last print's alone


def test_a_label_written_in_place_before_a_loss_inside_try_raises_there():
    """The range check reads the labels' values now; a block still to run may write them first
    (``y.add_(shift)`` deferred): inside the program's try the loss then runs at once, after that
    write, and its IndexError reaches the except clause as in eager."""
    source = PRELUDE + """
labels = [torch.tensor(y.tolist()) for _, y in data]
shifts = [torch.tensor(3 if k == 17 else 0) for k in range(24)]
bad = 0
for i in range(24):
    x, _ = data[i % len(data)]
    y = labels[i % len(labels)]
    y.add_(shifts[i])
    try:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    except IndexError:
        bad += 1
        y.sub_(shifts[i])
print(bad, round(loss.item(), 6))
"""
    check_program(source)


def test_optimizer_state_made_while_coexecuting_is_plain_tensors_where_python_runs_it():
    """An optimizer's first co-executed step makes its state (SGD's momentum buffers, Adam's
    moments) as futures, kept for the optimizer's life. Once computed, a future works as its
    value, but each op on it goes through the future's own dispatch (about 10 µs): auto's eager
    turns, and plain cells after, ran the optimizer slower than eager (sdpoint 6% slower per
    iteration, for 54 such ops a step). Where Python runs the program itself, the state holds the
    real tensors."""
    source = PRELUDE.replace("torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
                             "torch.optim.Adam(model.parameters(), lr=0.01)")  # (its moments: futures from the first step)
    train = """
kinds = []  # per turn: the TorchFunctionModes it ran under, the types in the optimizer's state
for i in range(100):
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    kinds.append((torch._C._len_torch_function_stack(), sorted({type(v).__name__ for s in opt.state.values() for v in s.values()})))
print(round(loss.item(), 6))
"""
    after = "kinds_after = sorted({type(v).__name__ for s in opt.state.values() for v in s.values()})"
    printed, namespace = run_eager(source + train + after)
    session = terra_nb.Session(backend="auto")
    namespace_t: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<prelude>", "exec"), namespace_t)
        session.run_cell(train, namespace_t)
        exec(compile(after, "<after>", "exec"), namespace_t)
    assert out.getvalue() == printed
    assert_same_state(state_of(namespace), state_of(namespace_t))
    modes = [it.mode for it in session.log.iterations]
    assert "coexec" in modes and modes[-1] == "eager", modes  # (auto chose eager on this CPU)
    assert "FutureTensor" in {k for on, kinds in namespace_t["kinds"] if on for k in kinds}  # (co-executed turns)
    eager_turns = [kinds for on, kinds in namespace_t["kinds"] if not on]
    assert len(eager_turns) > 20 and all(kinds == ["Tensor"] for kinds in eager_turns), namespace_t["kinds"]
    assert namespace_t["kinds_after"] == ["Tensor"]


def test_set_waits_for_the_blocks_that_read_the_tensor_it_repoints():
    """``Tensor.set_`` does not pass torch's function modes (torch's binding of it has no
    ``__torch_function__`` check): on a real tensor it ran at once, ahead of the pending block
    that still read the tensor's old memory, and that block read the new memory instead."""
    check_program("""
import numpy as np
import torch
torch.manual_seed(0); np.random.seed(0)
w = torch.randn(64, 64)
buf = torch.zeros(64, 64)
for i in range(8):
    z = (buf @ w).relu() * 2
    buf.set_(torch.from_numpy(np.random.rand(64, 64).astype("float32")))
    print(i, round(z.sum().item(), 3), round(buf.sum().item(), 3))
""")


def test_set_on_a_future_gives_it_the_new_shape():
    """``fut.set_(y)`` with ``y`` of another shape: the op reached the future only below autograd
    (its ``__torch_dispatch__``), which ran it on the value and left the wrapper's shape as it
    was (``buf.shape`` printed 4 where eager prints 8)."""
    check_program("""
import torch
torch.manual_seed(0)
w = torch.randn(32, 32)
buf = torch.zeros(32)
for i in range(8):
    x = torch.randn(32) @ w
    y = torch.cat([x, x]) * (i + 1)
    r = buf.set_(y)
    print(i, r is buf, buf.shape, buf.size(0), len(buf), round(buf.sum().item(), 4))
    buf = buf[:32].clone()
""")


def test_an_in_place_op_on_a_kept_future_outside_a_cell_returns_it_with_its_new_shape():
    """A future the program keeps past its cell (in a list in a dict) works as its value in plain code; an
    in-place op on it returned the value instead of the tensor itself (``r is t`` False where
    eager says True), and one that changes its shape (``unsqueeze_``, ``t_``) left the shape the
    program reads as it was."""
    train = """
torch.manual_seed(0)
w = torch.randn(64, 64)
history = {"kept": []}  # (a cell's end makes its own lists real, not those inside others)
x = torch.randn(64)
for i in range(6):
    x = torch.tanh(x @ w)
    history["kept"].append(x * 2)
"""
    after = """
kept = history["kept"]
t = kept[-1]
r = t.unsqueeze_(0)
print(r is t, t.shape, t.dim(), tuple(t.sum(1).shape))
u = kept[-2].t_()
print(u is kept[-2], u.shape)
v = kept[-3].add_(1)
print(v is kept[-3], round(float(v.sum()), 4))
s = kept[-4]
s.set_(torch.arange(10.0))
print(s.shape, len(s), round(float(s.sum()), 4))
"""
    session = check_cells([(False, "import torch"), (True, train), (False, after)])
    assert "coexec" in [it.mode for it in session.log.iterations]


def test_optimizer_state_the_program_holds_keeps_its_identity_through_auto_eager_turns():
    """The state's futures give way to their values only where nothing else holds them: a moment
    buffer the program took in a co-executed turn is still the optimizer's own in the eager ones
    (``held is state["exp_avg"]``, eager's answer), and reads its updates."""
    session = check_program(PRELUDE.replace("torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
                                            "torch.optim.Adam(model.parameters(), lr=0.01)") + """
held = None
for i in range(200):
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i == 4:
        held = [s["exp_avg"] for s in opt.state.values()]
    if i % 20 == 0 or i > 190:
        print(i, round(loss.item(), 5), [h is s["exp_avg"] for h, s in zip(held or [], opt.state.values())],
              [round(h.sum().item(), 6) for h in held or []])
""", backend="auto")
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("eager") > 20, modes  # (auto chose eager on this CPU)


# Tensors that share memory with numpy: a deferred op read, or wrote, that memory later than eager
# did, while Python read or wrote it through numpy in between. Each prints what it reads through
# numpy, so a value one step behind shows.
SHARED_WITH_NUMPY = {
    "in_place_ops_on_a_from_numpy_tensor": """
arr = np.zeros(3, dtype=np.float32)
for i in range(8):
    t = torch.from_numpy(arr)
    t.add_(w)
    t.mul_(0.5)
    print(i, arr, t.tolist())
""",
    "in_place_op_on_a_from_numpy_tensor_made_before_the_loop": """
arr = np.zeros(3, dtype=np.float32)
t = torch.from_numpy(arr)
for i in range(8):
    t.add_(w * i)
    print(i, arr)
""",
    "a_numpy_view_of_a_tensor_the_loop_writes": """
t = torch.zeros(3)
a = t.numpy()
for i in range(8):
    t.add_(w)
    print(i, a)
""",
    "a_numpy_view_of_a_weight_the_optimizer_writes": """
lin = nn.Linear(3, 2)
opt = torch.optim.SGD(lin.parameters(), lr=0.01)
wv = lin.weight.detach().numpy()
for i in range(8):
    loss = lin(w * i).square().sum()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, wv.round(4))
""",
    "index_add_into_a_tensor_numpy_views": """
counts = torch.zeros(3)
view = counts.numpy()
for i in range(8):
    counts.index_add_(0, torch.tensor([i % 3]), torch.ones(1))
    print(i, view.tolist())
""",
    "a_buffer_refilled_through_numpy_under_as_tensor": """
buf = np.zeros((4, 3), dtype=np.float32)
x = torch.as_tensor(buf)
acc = torch.zeros(4, 2)
for i in range(8):
    buf[:] = i
    acc = acc + x @ w2
    print(i, round(acc.sum().item(), 4), x is torch.as_tensor(x))
""",
    "an_array_written_through_numpy_between_ops": """
t = torch.zeros(3)
a = t.numpy()
acc = torch.zeros(3)
for i in range(8):
    a += 1
    acc = acc * 2 + t
print(acc)
""",
    "a_result_whose_value_numpy_views": """
for i in range(8):
    y = w * i
    a = y.numpy()
    y.add_(1)
    print(i, a)
    a += 1
    z = (y * 2).sum()
    print(z.item())
""",
    "a_view_of_a_from_numpy_tensor_read_after_numpy_writes": """
arr = np.zeros(4, dtype=np.float32)
t = torch.from_numpy(arr)
for i in range(8):
    v = t[1:3]
    arr[:] = i
    print(i, v.tolist(), (v * 2).sum().item())
""",
}


@pytest.mark.parametrize("name", sorted(SHARED_WITH_NUMPY))
def test_tensors_that_share_memory_with_numpy_read_and_write_it_when_eager_does(name):
    """A deferred write into a ``from_numpy`` tensor went into a snapshot of it and was lost; a
    deferred write into a tensor that numpy views came after the program's next ``print`` of the
    array; ``torch.as_tensor(array)`` made a copy where eager shares the array's memory."""
    check_program("""
import numpy as np
import torch
import torch.nn as nn
torch.manual_seed(0)
w = torch.randn(3)
w2 = torch.randn(3, 2)
""" + SHARED_WITH_NUMPY[name])


def test_a_from_numpy_tensor_of_an_earlier_plain_cell_is_read_when_eager_reads_it():
    """The tensor was made outside any co-executed cell, so nothing marked it as numpy's memory:
    the blocks read the array after the program had changed it again (71 where eager has 57)."""
    check_cells([
        (False, "import numpy as np, torch\narr = np.zeros(1, dtype=np.float32)\nt = torch.from_numpy(arr)\nacc = torch.zeros(1)\n"),
        (True, "for i in range(6):\n    arr[0] = i\n    acc = acc * 2 + t\n"),
        (False, "print(acc)\n"),
    ])


def test_an_optimizer_made_anew_every_iteration():
    """Each iteration makes its own optimizer. The engine keeps each optimizer's steps in an array
    and the loop turns at each step by the array's id: a new optimizer's array took a dead one's
    id, met that one's turns, and the engine raised an IndexError of its own (in most runs)."""
    check_program("""
import torch
w = torch.ones(3, requires_grad=True)
for i in range(30):
    f = (w * i).detach()
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    o = torch.optim.SGD([p], lr=0.1)
    (p * f[:2]).sum().backward()
    o.step()
    print(i, p.tolist())
""")


def test_a_cells_annotations_are_evaluated_as_in_a_plain_cell():
    """The engine compiled the program's code with its own module's ``from __future__ import
    annotations``: ``f.__annotations__`` held strings where eager holds the classes, and a
    dataclass's fields' types were strings."""
    check_program("""
import dataclasses
import torch

@dataclasses.dataclass
class Stats:
    total: float = 0.0

def step(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x * scale

stats = Stats()
x = torch.ones(3)
for i in range(6):
    x = step(x, 1.5)
    stats.total += x.sum().item()
print(step.__annotations__, [f.type for f in dataclasses.fields(Stats)], __annotations__ if "__annotations__" in dir() else None)
""")


DROPOUT_RATES = {
    "functional_alternating": """
import torch, torch.nn.functional as F
torch.manual_seed(0)
for i in range(8):
    out = F.dropout(torch.ones(4), 0.5 * (i % 2))
    print(i, out.tolist())
""",
    "alpha_dropout_from_zero": """
import torch, torch.nn.functional as F
torch.manual_seed(0)
for i in range(8):
    out = F.alpha_dropout(torch.ones(4), 0.0 if i < 3 else 0.5, training=True)
    print(i, out.tolist())
""",
    "module_warm_up": """
import torch, torch.nn as nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(10):
    model[1].p = 0.0 if i < 5 else 0.3
    loss = model(torch.ones(2, 4)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(i, round(loss.item(), 5))
""",
    "eval_pass_at_step_zero": """
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.p = nn.Linear(8, 8), 0.2
    def forward(self, x):
        h = F.dropout(self.fc(x), self.p if self.training else 0.0)
        h += x  # (in place: on the dropout's input itself where it returned it)
        return h
model = Block()
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(4, 8)
for step in range(8):
    model.train(step > 0)
    loss = model(x).pow(2).mean()
    if step > 0:
        opt.zero_grad(); loss.backward(); opt.step()
    print(step, round(loss.item(), 5))
""",
    "rate_falls_to_zero": """
import torch, torch.nn.functional as F
torch.manual_seed(0)
w = torch.randn(6, 6)
for i in range(8):
    x = w @ w
    h = F.dropout(x, 0.5 if i < 4 else 0.0)
    h.mul_(2)  # eager doubles x too where dropout returned it
    print(i, round(x.sum().item(), 3), round(h.sum().item(), 3))
""",
}


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("name", sorted(DROPOUT_RATES))
def test_a_dropout_whose_rate_is_zero_only_sometimes_drops_as_in_eager(name, native, monkeypatch):
    """``F.dropout(x, p)`` returns ``x`` itself where ``p`` is 0 and a new tensor otherwise, and
    ``p`` is a float, a feed of the node. Traced at ``p == 0`` (a warm-up, an eval pass at step
    0), the node returned its input, and every later call with ``p > 0`` returned the input too:
    nothing was ever dropped (the output stayed all ones). A node traced at ``p > 0`` gives a
    result the block computes, which is the input itself where ``p`` is 0, as in eager."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    check_program(DROPOUT_RATES[name])


CONTIGUOUS_SOMETIMES = {
    "alternating": """
import torch
base = torch.ones(2, 2)
for i in range(8):
    x = base.t() if i % 2 else base
    x.contiguous().add_(1)
    print(i, base.sum().item())
""",
    "transposed_first": """
import torch
base = torch.ones(2, 2)
for i in range(8):
    x = base if i % 2 else base.t()
    x.contiguous().add_(1)
    print(i, base.sum().item())
""",
    "transpose_of_a_varying_dim": """
import torch
base = torch.ones(3, 3)
for i in range(10):
    k = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1][i]
    y = base.transpose(0, k).contiguous()
    y.add_(1)
    print(i, base.sum().item())
""",
    "of_futures": """
import torch
torch.manual_seed(0)
w = torch.randn(3, 3)
for i in range(8):
    h = w * 2
    x = h.t() if i % 3 == 1 else h
    y = x.contiguous()
    y.mul_(3)
    print(i, round(h.sum().item(), 4), round(y.sum().item(), 4))
""",
    "to_channels_last": """
import torch
base = torch.ones(1, 2, 2, 2)
for i in range(8):
    x = base if i % 2 else base.contiguous(memory_format=torch.channels_last)
    x.to(memory_format=torch.channels_last).add_(1)
    print(i, base.sum().item(), x.sum().item())
""",
}


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("name", sorted(CONTIGUOUS_SOMETIMES))
def test_contiguous_of_a_tensor_contiguous_only_sometimes_copies_as_in_eager(name, native, monkeypatch):
    """``x.contiguous()`` returns ``x`` itself where ``x`` is contiguous and a copy where it is
    not; strides are not in a node's key. Traced on a contiguous ``x``, the node returned its
    input, and a transposed ``x`` of the same shape got itself back: the in-place op on the
    "copy" wrote into ``base``. (``reshape`` always returns another tensor object, so its result
    was always the block's, a view or a copy as eager's.)"""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    check_program(CONTIGUOUS_SOMETIMES[name])



VIEW_INSIDE_TRY = {
    "of_a_future": """
import torch
x = torch.ones(2, 3)
for i in range(8):
    y = (x.t() if i % 2 else x.t().contiguous()) * 2
    try:
        y.view(-1)
        print(i, "view")
    except RuntimeError:
        print(i, "error")
""",
    "reshape_where_it_cannot_view": """
import torch
torch.manual_seed(0)
base = torch.randn(3, 3)
for i in range(30):
    x = base.t() if i % 2 else base
    try:
        flat = x.view(-1)
    except RuntimeError:
        flat = x.reshape(-1)
    s = flat.sum()
print(s.item())
""",
    "of_new_shapes": """
import torch
for i in range(14):
    x = torch.ones(2, 3 + i % 3)
    y = (x.t() if i % 2 else x.t().contiguous()) * 2
    try:
        y.view(-1)
        print(i, "view")
    except RuntimeError:
        print(i, "error")
""",
    "of_a_real_tensor_first_refused_when_co_executed": """
import torch
torch.manual_seed(0)
xs = [torch.randn(3, 4) for _ in range(10)]
xs[6] = torch.randn(4, 3).t()
for i in range(10):
    try:
        z, how = xs[i].view(-1) * 2, "view"
    except RuntimeError:
        z, how = xs[i].reshape(-1) * 2, "reshape"
    print(i, how, round(z.sum().item(), 4))
""",
}


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("name", sorted(VIEW_INSIDE_TRY))
def test_a_view_that_its_strides_refuse_inside_try_raises_there(name, native, monkeypatch):
    """``y.view(-1)`` raises where ``y``'s strides do not allow it (a transpose), and strides are
    not in a node's key. Inside the program's ``try``, a later call was deferred on the node of a
    contiguous one, and its error came at a later sync, outside the try (a crash). Now a real
    input's strides are checked at each call, and a future's once a view at that line has raised.
    The view that raised while traced was no edge of the graph either: ``x.view(-1)`` after
    ``x = base.t()`` was a path never seen, and fell back every other iteration, forever."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    session = check_program(VIEW_INSIDE_TRY[name])
    fallbacks = [e for e in session.log.of_kind("fallback") if e.iteration > 4 and e.reason.startswith("view")]
    assert not fallbacks, fallbacks


@pytest.mark.parametrize("native", ["1", "0"])
def test_views_of_futures_inside_try_are_deferred_until_one_raises_there(native, monkeypatch):
    """A future's strides are not known before its block runs, so a view of one inside the
    program's try cannot be checked without waiting; a ``try`` around a whole training loop is
    common, and a sync at each such view would undo co-execution. Such views are deferred until a
    view at their line has raised (while traced, or checked on a real input), and wait from then on."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    session = check_program("""
import torch
torch.manual_seed(0)
w = torch.randn(3, 3)
for i in range(30):
    h = w * 2
    try:
        flat = h.view(-1)
    except RuntimeError:
        flat = h.reshape(-1)
    s = flat.sum()
print(s.item())
""")
    syncs = [e for e in session.log.of_kind("sync") if e.reason.startswith("view")]
    assert not syncs and not any(key[2].startswith("view") for key in session.log.sync_counts), syncs


# Python of the program's that an op runs: its forward read a global the program changed before
# the block ran, and its side effects (a counter, a list) came after the lines that read them.
PROGRAMS_CODE_IN_AN_OP = {
    "a_custom_autograd_function_reading_a_global": """
cfg = {"s": 1.0}
class Scale(torch.autograd.Function):
    calls = 0
    @staticmethod
    def forward(ctx, x):
        Scale.calls += 1
        return x * cfg["s"]
    @staticmethod
    def backward(ctx, g):
        return g * cfg["s"]
w = torch.ones(3, requires_grad=True)
for it in range(6):
    cfg["s"] = float(it)
    y = Scale.apply(w)
    cfg["s"] = 100.0
    print(it, Scale.calls)
    y.sum().backward()
    print(it, y.sum().item(), w.grad.tolist())
""",
    "a_custom_op_reading_a_global": """
cfg = {"s": 1.0}
seen = []
@torch.library.custom_op("terra_nb_tests::scale_by_cfg", mutates_args=())
def scale(x: torch.Tensor) -> torch.Tensor:
    seen.append(cfg["s"])
    return x * cfg["s"]
@scale.register_fake
def _(x):
    return torch.empty_like(x)
x = torch.ones(3)
for it in range(6):
    cfg["s"] = float(it)
    y = scale(x * 2)
    cfg["s"] = 100.0
    print(it, len(seen))
    print(it, y.sum().item())
""",
}


@pytest.mark.parametrize("name", sorted(PROGRAMS_CODE_IN_AN_OP))
def test_an_op_that_runs_the_programs_python_runs_when_eager_runs_it(name):
    """A custom autograd Function's forward, a ``torch.library.custom_op``'s body: deferred, they ran
    when the block ran, after the program had changed what they read (300.0 where eager has 9.0)
    and after the lines that read what they did."""
    check_program("import torch\n" + PROGRAMS_CODE_IN_AN_OP[name])


def test_a_dispatch_mode_of_the_programs_sees_the_ops_it_surrounds():
    """``FlopCounterMode`` (a TorchDispatchMode) counts the ops run inside its ``with``: deferred,
    they ran in a block after it had closed, and it counted 0 (or a block's ops from outside it)."""
    check_program("""
import torch
from torch.utils.flop_counter import FlopCounterMode
torch.manual_seed(0)
w = torch.randn(8, 8, requires_grad=True)
for it in range(8):
    x = torch.randn(4, 8)
    h = (x @ w).relu()
    with FlopCounterMode(display=False) as fc:
        y = h @ w
    loss = y.sum()
    loss.backward()
    print(it, fc.get_total_flops(), round(loss.item(), 4))
""")


# Global numeric settings the program changes around an op: deferred, the op ran under the settings
# as they were when its block ran (after the program had set them back), not bitwise eager's.
SETTINGS_AROUND_AN_OP = {
    "flush_denormal": """
for it in range(8):
    x = torch.rand(4) + 0.5
    torch.set_flush_denormal(True)
    tiny = x * 1e-39
    torch.set_flush_denormal(False)
    print(it, (tiny != 0).sum().item())
""",
    "mkldnn_flags": """
conv = torch.nn.Conv2d(3, 8, 3)
for it in range(8):
    x = torch.randn(2, 3, 9, 9)
    with torch.backends.mkldnn.flags(enabled=False):
        y = conv(x)
    print(it, repr(y.sum().item()))
""",
    "sdpa_kernel": """
from torch.nn.attention import sdpa_kernel, SDPBackend
for it in range(8):
    q, k, v = torch.randn(3, 2, 4, 37, 64).unbind(0)
    with sdpa_kernel(SDPBackend.MATH):
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    print(it, repr(o.sum().item()))
""",
    "num_threads": """
x = torch.randn(1_000_003)
threads = torch.get_num_threads()
for it in range(6):
    torch.set_num_threads(1)
    s = (x * (1 + it * 1e-3)).sum()
    torch.set_num_threads(threads)
    print(it, repr(s.item()))
""",
}


@pytest.mark.parametrize("name", sorted(SETTINGS_AROUND_AN_OP))
def test_an_op_runs_under_the_settings_the_program_set_around_it(name):
    check_program("import torch\ntorch.manual_seed(0)\n" + SETTINGS_AROUND_AN_OP[name])


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_a_backward_error_the_program_catches_is_caught_where_eager_raises_it(runner, native, monkeypatch):
    """``try: loss.backward() except RuntimeError:`` where a tensor backward needs was modified in
    place on some paths. The backward was deferred: its error surfaced at a later sync, outside
    the try, and the program crashed where eager skipped the step. Here the path that raises (sin
    saves ``a``, then ``a.mul_``) was never traced whole (each of its edges was, on other paths),
    so no trace saw it raise before the skeleton met it."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    check_program(PRELUDE + """
w = torch.randn(6, requires_grad=True)
caught = []
for i in range(16):
    x, y = data[i % len(data)]
    loss = F.cross_entropy(model(x), y)
    a = w * 2
    b = (torch.sin(a) if i % 2 else torch.relu(a)) * 3  # sin saves a, relu its output
    if i % 3 == 2:
        a.mul_(2)
    opt.zero_grad()
    try:
        (loss + b.sum()).backward()
    except RuntimeError as e:
        caught.append((i, str(e)[:40]))
        continue
    opt.step()
    print(i, round(loss.item(), 5), w.grad.sum().item())
print(caught)
""", runner=runner)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("runner", ["auto", "thread"])
def test_a_gradient_read_twice_is_one_object_while_eager_keeps_it(runner, native, monkeypatch):
    """``w.grad is w.grad``, and a gradient kept from an earlier iteration compared with the one read
    now: each ``.grad`` read was a new future, so the first said False from the first co-executed
    iteration and the second always did. Eager's ``.grad`` is one object until a setter replaces
    it (``zero_grad()``'s ``p.grad = None``, ``p.grad = z``, ``del p.grad``) or a backward makes a new
    one (nothing to sum into, or ``create_graph=True``); backward otherwise sums into it in place."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    check_program(PRELUDE + """
w = torch.ones(3, requires_grad=True)
kept_w = kept_b = None
for i, (x, y) in enumerate(data):
    loss = F.cross_entropy(model(x), y) + (w * i).sum()
    opt.zero_grad(set_to_none=(i % 4 == 0))  # (a new .grad after set_to_none, the same one else)
    if i % 6 == 5:
        del model[0].bias.grad
    loss.backward(create_graph=(i == 9))
    g = model[0].weight.grad
    same = [w.grad is w.grad, g is model[0].weight.grad, kept_w is w.grad, kept_b is model[2].bias.grad,
            model[0].bias.grad is model[0].bias.grad]
    if i % 3 == 0:
        kept_w, kept_b = w.grad, model[2].bias.grad
    if i % 5 == 2:
        z = torch.zeros(3)
        w.grad = z
        same.append(w.grad is z)
    opt.step()
    print(i, same, round(g.sum().item(), 5), kept_b.sum().item(), w.grad.sum().item())
    if i == 9:
        opt.zero_grad(set_to_none=True)
        w.grad = None  # (create_graph's gradients refer to their parameters: a cycle otherwise)
""", runner=runner)


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_views_base_is_the_tensor_the_program_holds(native, monkeypatch):
    """``out[1:]._base is out``: a ``_base`` read was deferred like an op, and answered with a new
    future (False from the first co-executed iteration). It runs for real now, and its answer is
    the object the program holds for that base: a future (of a view of a view too), or the real
    tensor."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    check_program(PRELUDE + """
w = torch.ones(6, requires_grad=True)
for i, (x, y) in enumerate(data):
    out = model(x) * i
    v = out[1:]
    vv = v[:, 1:].t()
    print(i, v._base is out, vv._base is out, x[2:]._base is x, out._base, (w[1:] * 2)._base is None,
          v._base.shape, round(v._base.sum().item(), 4))
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
""")


def test_what_an_op_gives_from_a_sparse_tensor_has_its_count_of_values():
    """``sp.values()`` of a sparse tensor whose count of values changes every iteration: deferred,
    its result had the count the trace saw (``v.shape`` 4 where its values were 6)."""
    check_program("""
import torch
torch.manual_seed(0)
for it in range(8):
    d = torch.randn(3, 3).relu()
    sp = d.to_sparse()
    csr = d.to_sparse_csr()
    v = sp.values()
    print(it, v.shape, sp._nnz(), sp.indices().shape, round(v.sum().item(), 4), csr.col_indices().shape, csr.values().tolist())
""")


def test_a_tensor_and_its_view_deep_copied_together_share_their_copy_of_memory():
    """``copy.deepcopy((base, base[0]))`` copies the memory once (its memo, handed to each tensor's
    ``__deepcopy__``, maps the storage to its copy): co-executed, each call got a copy of the memo,
    and the copied view no longer saw writes into the copied base."""
    check_program("""
import copy
import torch
for it in range(6):
    base = torch.zeros(2, 2) + it
    a, b = copy.deepcopy((base, base[0]))
    a[0, 0] = 100.0
    print(it, b[0].item(), a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
""")


def test_a_blocks_error_that_surfaces_as_the_program_raises_is_the_only_error_shown():
    """An index computed by deferred ops goes out of range in iteration 5 (the block raises when it
    runs); the program's own error comes in iteration 6, before any sync. The block's error is
    the one raised, as eager's, and its traceback showed the program's error too ("During
    handling of the above exception"), which eager never reached."""
    source = """import torch
emb = torch.nn.Embedding(10, 4)
def step(i):
    return emb(torch.tensor([1, 2, 3]) * (1 if i < 5 else 10)).sum()
for i in range(8):
    loss = step(i)
    x = 1 / (i - 6)
"""
    with pytest.raises(IndexError) as info:
        run_terra(source)
    shown = "".join(traceback.format_exception(info.value))
    assert "ZeroDivisionError" not in shown and "During handling" not in shown, shown


def test_an_op_the_programs_try_catches_raising_every_iteration_runs_at_once_without_a_fallback():
    """``try: y = x.view(3, 2) except RuntimeError: y = x.view(2, 2)`` where the first always
    raises: the call never succeeded while traced, so no node had its key, and every co-executed
    iteration fell back there and traced the rest (modes ``ttff...``). The call is a node that
    runs for real (its error raised inside the try, as eager's)."""
    session = check_program("""
import torch
torch.manual_seed(0)
w = torch.randn(4, requires_grad=True)
for it in range(12):
    x = torch.randn(4)
    try:
        y = (w * x).view(3, 2)
    except RuntimeError:
        y = (w * x).view(2, 2)
    y.sum().backward()
    print(it, round(w.grad.sum().item(), 5))
""")
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("fallback") <= 1, modes


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("holder", ["opt", "model"])
def test_zero_grad_that_keeps_the_gradients_does_not_wait(holder, native, monkeypatch):
    """``zero_grad(set_to_none=False)`` reads each gradient's ``grad_fn`` to choose detach_ or
    requires_grad_(False): a wait for each gradient's value on top of the ``.grad`` read's (8 syncs
    an iteration for 4 parameters). A gradient that does not require grad has no grad_fn: its
    metadata says so without a wait. The ``.grad`` read itself, None the first time it was traced
    (before the first backward), was a fetch that waited for the blocks before it (4 syncs): the
    real ``.grad`` answers it where no block queued may set it (``_grad_known``)."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    session = check_program(f"""
import torch, torch.nn as nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for i in range(10):
    x = torch.randn(8, 6); y = torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    {holder}.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
print(loss.item(), [p.grad.requires_grad for p in model.parameters()])
""")
    steady = [it.syncs for it in session.log.iterations if it.mode == "coexec"]
    assert steady and max(steady) == 0, steady


# An op inside the program's try fed a number that makes it raise at one iteration (``v``: the good
# value, and the bad one at i == 6): after the number first varied it was fed to a deferred op, and
# the error surfaced at the next sync, outside the try (the program died; its later tensors lost).
NUMBER_INSIDE_TRY = {
    "floor_division_by_an_int": ("counts.add(1) // v", "2", "0"),
    "remainder_by_an_int": ("torch.remainder(counts.add(1), v)", "2", "0"),
    "negative_int_power": ("counts.add(1) ** v", "2", "-1"),
    "fill_past_the_dtype": ("torch.full((2,), v, dtype=torch.uint8)", "100", "300"),
    "randint_of_an_empty_range": ("torch.randint(0, v, (3,))", "5", "0"),
    "normal_of_a_negative_deviation": ("x.mul(1).normal_(0.0, v)", "1.0", "-1.0"),
    "uniform_of_a_reversed_range": ("x.mul(1).uniform_(0.0, v)", "1.0", "-1.0"),
    "quantile_past_one": ("x.mul(2).quantile(v)", "0.5", "1.5"),
    "cdist_of_a_negative_norm": ("torch.cdist(a.mul(1), b, p=v)", "2.0", "-1.0"),
    "label_smoothing_past_one": ("F.cross_entropy(logits.mul(1), target, label_smoothing=v)", "0.1", "1.5"),
    # (a tensor divisor: an integer division by a zero it holds raises too)
    "floor_division_by_a_tensor_with_a_zero": ("counts // (torch.ones(2) * v).long()", "1.0", "0.0"),
}


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("name", sorted(NUMBER_INSIDE_TRY))
def test_a_number_that_makes_an_op_raise_inside_try_raises_there(name, native, monkeypatch):
    """The numbers a node in the program's try ran with defer it; a new one runs it at once
    (CHECK_SCALARS), so that what it raises is raised at the call, as eager raises it."""
    monkeypatch.setenv("TERRA_NB_NATIVE", native)
    expression, good, bad = NUMBER_INSIDE_TRY[name]
    source = f"""
import torch
import torch.nn.functional as F
torch.manual_seed(0)
counts = torch.tensor([5, 7])
x = torch.arange(10.)
a, b = torch.randn(3, 2), torch.randn(4, 2)
logits, target = torch.randn(3, 5), torch.tensor([0, 1, 2])
for i in range(10):
    v = {good} if i != 6 else {bad}
    try:
        y = {expression}
    except RuntimeError as e:
        print(i, "caught", e)
        continue
    print(i, y.tolist())
"""
    printed, _ = run_eager(source)
    assert "6 caught" in printed, printed
    check_program(source, require_coexec=False)


@pytest.mark.parametrize("shown", ["always", "once"])
def test_an_op_that_warns_at_every_call_where_every_warning_shows_warns_at_its_line(shown):
    """Under ``simplefilter("always")`` eager shows an op's warning at every call. Deferred, the
    op's later warnings came from its block when it ran, at the line of the sync that ran it and
    outside the ``with`` around the op (``catch_warnings(record=True)`` recorded nothing, then the
    warning a turn late). Entering ``catch_warnings`` at each turn shows them again at each turn,
    whatever the filter. Such an op now runs at once."""
    source = f"""
import warnings
import torch
import torch.nn.functional as F
x = torch.ones(2, 3)
seen = []
for i in range(10):
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("{shown}")
        y = x.new_tensor(x) * 2
        p = F.softmax(y)
    seen.append(sorted((w.category.__name__, w.lineno) for w in ws))
    print(i, seen[-1], round(p.sum().item(), 4))
"""
    session = check_program(source)
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("coexec") >= 6, modes
    syncs = {e.location.rsplit(":", 1)[1] for e in session.log.of_kind("sync") if e.iteration > 3}
    assert syncs == {"11", "13"}, syncs  # (softmax's, and the print's .item(); new_tensor of x waits for nothing)


def test_an_op_whose_warning_shows_once_per_line_stays_deferred():
    """Under the default filters a warning shows once per line (eager's, while traced); the op that
    warned stays deferred (a softmax without its dim, common in older code, would wait at each turn)."""
    session = check_program(PRELUDE + """
for i, (x, y) in enumerate(data * 2):
    p = F.softmax(model(x))
    loss = F.nll_loss(p.log(), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(round(loss.item(), 5))
""")
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("coexec") >= 18, modes
    assert not [e for e in session.log.of_kind("sync") if e.iteration > 3], session.log.of_kind("sync")
