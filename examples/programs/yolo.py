"""YOLO: a small YOLOv2/v3-style one-stage detector (darknet-ish backbone, one
detection grid with anchors).

Images are synthetic: coloured rectangles (one colour per class) on a noisy
background, with a random number of objects per image.

Python features exercised:
  * target assignment in Python loops over the ground-truth boxes of every
    image (grid cell and best anchor chosen with Python arithmetic, targets
    written with per-element tensor indexing)
  * `.tolist()` on ground-truth tensors and on predictions (per-image
    detection counts, top-scoring confidences)
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(img=64, batch=8, ch=16, classes=3,
                  anchors=((12, 12), (24, 16), (16, 32))),
    "large": dict(img=416, batch=32, ch=64, classes=20,
                  anchors=((40, 50), (100, 120), (200, 260))),
}
STRIDE = 8


def make_batch(cfg, rng):
    img, n_cls = cfg["img"], cfg["classes"]
    colours = np.linspace(-1.0, 1.0, 3 * n_cls).reshape(n_cls, 3)[:, ::-1]
    images = rng.normal(0, 0.1, size=(cfg["batch"], 3, img, img)).astype(np.float32)
    boxes, labels = [], []
    for b in range(cfg["batch"]):
        n = rng.randint(1, 4)
        wh = rng.uniform(0.15, 0.5, size=(n, 2)) * img
        xy = rng.uniform(0, 1, size=(n, 2)) * (img - wh)
        bx = np.hstack([xy, xy + wh]).astype(np.float32)
        lb = rng.randint(0, n_cls, size=n)
        for (x1, y1, x2, y2), c in zip(bx.astype(int), lb):
            images[b, :, y1:y2, x1:x2] += colours[c][:, None, None]
        boxes.append(torch.from_numpy(bx))
        labels.append(torch.from_numpy(lb.astype(np.int64)))
    return torch.from_numpy(images), boxes, labels


def conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class YOLO(nn.Module):
    def __init__(self, ch, num_anchors, classes):
        super().__init__()
        self.na, self.nc = num_anchors, classes
        self.backbone = nn.Sequential(
            conv_bn(3, ch, 1), conv_bn(ch, ch * 2, 2), conv_bn(ch * 2, ch * 4, 2),
            conv_bn(ch * 4, ch * 8, 2), conv_bn(ch * 8, ch * 8, 1))
        self.head = nn.Conv2d(ch * 8, num_anchors * (5 + classes), 1)

    def forward(self, x):
        out = self.head(self.backbone(x))
        B, _, S, _ = out.shape
        return out.view(B, self.na, 5 + self.nc, S, S).permute(0, 1, 3, 4, 2).contiguous()


def wh_iou(w1, h1, w2, h2):
    inter = min(w1, w2) * min(h1, h2)
    return inter / (w1 * h1 + w2 * h2 - inter)


def build_targets(gt_boxes, gt_labels, anchors, B, S):
    na = len(anchors)
    obj_mask = torch.zeros(B, na, S, S, dtype=torch.bool)
    noobj_mask = torch.ones(B, na, S, S, dtype=torch.bool)
    txywh = torch.zeros(B, na, S, S, 4)
    tcls = torch.zeros(B, na, S, S, dtype=torch.long)
    for b in range(B):
        for (x1, y1, x2, y2), c in zip(gt_boxes[b].tolist(), gt_labels[b].tolist()):
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            gi, gj = min(int(cx / STRIDE), S - 1), min(int(cy / STRIDE), S - 1)
            ious = [wh_iou(w, h, aw, ah) for aw, ah in anchors]
            best = max(range(na), key=lambda a: ious[a])
            for a, iou in enumerate(ious):
                if iou > 0.5:
                    noobj_mask[b, a, gj, gi] = False
            obj_mask[b, best, gj, gi] = True
            noobj_mask[b, best, gj, gi] = False
            aw, ah = anchors[best]
            txywh[b, best, gj, gi] = torch.tensor(
                [cx / STRIDE - gi, cy / STRIDE - gj, math.log(w / aw), math.log(h / ah)])
            tcls[b, best, gj, gi] = c
    return obj_mask, noobj_mask, txywh, tcls


def yolo_loss(pred, targets):
    obj_mask, noobj_mask, txywh, tcls = targets
    xy, wh, conf, cls = pred[..., 0:2].sigmoid(), pred[..., 2:4], pred[..., 4], pred[..., 5:]
    loss_xy = F.mse_loss(xy[obj_mask], txywh[..., 0:2][obj_mask], reduction="sum")
    loss_wh = F.mse_loss(wh[obj_mask], txywh[..., 2:4][obj_mask], reduction="sum")
    loss_obj = F.binary_cross_entropy_with_logits(conf[obj_mask], torch.ones_like(conf[obj_mask]),
                                                  reduction="sum")
    loss_noobj = F.binary_cross_entropy_with_logits(conf[noobj_mask], torch.zeros_like(conf[noobj_mask]),
                                                    reduction="sum")
    loss_cls = F.cross_entropy(cls[obj_mask], tcls[obj_mask], reduction="sum")
    n = pred.size(0)
    return (5 * loss_xy + 5 * loss_wh + loss_obj + 0.5 * loss_noobj + loss_cls) / n, loss_cls / n


def train(model, optimizer, cfg, iters, device, rng):
    model.train()
    for it in range(iters):
        images, gt_boxes, gt_labels = make_batch(cfg, rng)
        pred = model(images.to(device))
        B, _, S = pred.shape[:3]
        targets = [t.to(device) for t in build_targets(gt_boxes, gt_labels, cfg["anchors"], B, S)]
        loss, loss_cls = yolo_loss(pred, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        conf = pred[..., 4].detach().sigmoid()
        n_det = (conf > 0.5).sum(dim=(1, 2, 3)).tolist()
        top = conf[0].flatten().topk(3).values.tolist()
        n_gt = sum(len(b.tolist()) for b in gt_boxes)
        print(f"iter {it} loss {loss.item():.4f} cls {loss_cls.item():.4f} gt {n_gt} "
              f"dets {n_det} top {' '.join(f'{v:.4f}' for v in top)}")


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
    model = YOLO(cfg["ch"], len(cfg["anchors"]), cfg["classes"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, cfg, args.iters, device, np.random.RandomState(args.seed))


if __name__ == "__main__":
    main()
