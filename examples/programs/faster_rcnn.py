"""Faster R-CNN: a small two-stage detector (conv backbone, RPN, RoI box head).

Images are synthetic: coloured rectangles (one colour per class) on a noisy
background, with a random number of objects per image.

Python features exercised:
  * anchor labelling, proposal decoding and non-maximum suppression written in
    numpy (classic py-faster-rcnn style code) on arrays fetched with
    `.detach().cpu().numpy()`
  * a data-dependent number of proposals / sampled RoIs per image, fed back to
    the network with `torch.from_numpy(...)`
  * per-image Python loops and `np.random.choice` subsampling
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    "small": dict(img=64, batch=2, ch=16, classes=3, anchor_sizes=(16, 32), pre_nms=200,
                  post_nms=300, rpn_batch=64, rois_per_img=256, pool=4, fc=128),
    "large": dict(img=512, batch=4, ch=128, classes=20, anchor_sizes=(64, 128, 256),
                  pre_nms=6000, post_nms=2000, rpn_batch=256, rois_per_img=512, pool=7, fc=1024),
}
STRIDE, RATIOS = 8, (0.5, 1.0, 2.0)


def make_batch(cfg, rng):
    img, n_cls = cfg["img"], cfg["classes"]
    colours = np.linspace(-1.0, 1.0, 3 * n_cls).reshape(n_cls, 3)[:, ::-1]
    images = rng.normal(0, 0.1, size=(cfg["batch"], 3, img, img)).astype(np.float32)
    boxes, labels = [], []
    for b in range(cfg["batch"]):
        n = rng.randint(1, 4)
        wh = rng.uniform(0.2, 0.5, size=(n, 2)) * img
        xy = rng.uniform(0, 1, size=(n, 2)) * (img - wh)
        bx = np.hstack([xy, xy + wh]).astype(np.float32)
        lb = rng.randint(1, n_cls + 1, size=n)
        for (x1, y1, x2, y2), c in zip(bx.astype(int), lb):
            images[b, :, y1:y2, x1:x2] += colours[c - 1][:, None, None]
        boxes.append(bx)
        labels.append(lb)
    return images, boxes, labels


# ----------------------------------------------------------- numpy box utils
def generate_anchors(sizes, feat_h, feat_w):
    base = np.array([[-s / math.sqrt(r) / 2, -s * math.sqrt(r) / 2,
                      s / math.sqrt(r) / 2, s * math.sqrt(r) / 2]
                     for s in sizes for r in RATIOS], dtype=np.float32)
    sx, sy = np.meshgrid((np.arange(feat_w) + 0.5) * STRIDE, (np.arange(feat_h) + 0.5) * STRIDE)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    return (shifts[:, None, :] + base[None]).reshape(-1, 4).astype(np.float32)


def bbox_overlaps(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def bbox_transform(ex, gt):
    ew, eh = ex[:, 2] - ex[:, 0], ex[:, 3] - ex[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = (gt[:, 0] + 0.5 * gw - ex[:, 0] - 0.5 * ew) / ew
    dy = (gt[:, 1] + 0.5 * gh - ex[:, 1] - 0.5 * eh) / eh
    return np.stack([dx, dy, np.log(gw / ew), np.log(gh / eh)], axis=1).astype(np.float32)


def bbox_transform_inv(boxes, deltas):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w + deltas[:, 0] * w, boxes[:, 1] + 0.5 * h + deltas[:, 1] * h
    pw = np.exp(np.clip(deltas[:, 2], None, 4.0)) * w
    ph = np.exp(np.clip(deltas[:, 3], None, 4.0)) * h
    return np.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], axis=1)


def nms(dets, thresh):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return np.array(keep, dtype=np.int64)


def anchor_targets(anchors, gt, rpn_batch):
    overlaps = bbox_overlaps(anchors, gt)
    argmax, max_ov = overlaps.argmax(axis=1), overlaps.max(axis=1)
    labels = np.full(len(anchors), -1, dtype=np.float32)
    labels[max_ov < 0.3] = 0
    labels[overlaps.argmax(axis=0)] = 1
    labels[max_ov >= 0.7] = 1
    fg = np.where(labels == 1)[0]
    if len(fg) > rpn_batch // 2:
        labels[np.random.choice(fg, len(fg) - rpn_batch // 2, replace=False)] = -1
    bg = np.where(labels == 0)[0]
    n_bg = rpn_batch - int((labels == 1).sum())
    if len(bg) > n_bg:
        labels[np.random.choice(bg, len(bg) - n_bg, replace=False)] = -1
    return labels, bbox_transform(anchors, gt[argmax])


def proposals_for_image(anchors, scores, deltas, cfg):
    boxes = np.clip(bbox_transform_inv(anchors, deltas), 0, cfg["img"] - 1)
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = np.where((ws >= 4) & (hs >= 4))[0]
    boxes, scores = boxes[keep], scores[keep]
    order = scores.argsort()[::-1][:cfg["pre_nms"]]
    boxes, scores = boxes[order], scores[order]
    keep = nms(np.hstack([boxes, scores[:, None]]), 0.7)[:cfg["post_nms"]]
    return boxes[keep].astype(np.float32)


def sample_rois(props, gt, gt_labels, cfg):
    rois = np.vstack([props, gt])
    overlaps = bbox_overlaps(rois, gt)
    argmax, max_ov = overlaps.argmax(axis=1), overlaps.max(axis=1)
    fg, bg = np.where(max_ov >= 0.5)[0], np.where(max_ov < 0.5)[0]
    n_fg = min(len(fg), cfg["rois_per_img"] // 4)
    fg = np.random.choice(fg, n_fg, replace=False)
    bg = np.random.choice(bg, min(len(bg), cfg["rois_per_img"] - n_fg), replace=False)
    keep = np.concatenate([fg, bg])
    labels = gt_labels[argmax[keep]].astype(np.int64)
    labels[n_fg:] = 0
    targets = bbox_transform(rois[keep], gt[argmax[keep]]) / np.array([0.1, 0.1, 0.2, 0.2], np.float32)
    return rois[keep], labels, targets


# ----------------------------------------------------------------- the model
class FasterRCNN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, self.cfg, self.A = cfg["ch"], cfg, len(cfg["anchor_sizes"]) * len(RATIOS)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, ch, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch * 2, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(ch * 2, ch * 4, 3, 2, 1), nn.ReLU(inplace=True))
        c = ch * 4
        self.rpn_conv = nn.Conv2d(c, c, 3, 1, 1)
        self.rpn_cls = nn.Conv2d(c, self.A, 1)
        self.rpn_bbox = nn.Conv2d(c, self.A * 4, 1)
        self.fc = nn.Sequential(nn.Linear(c * cfg["pool"] ** 2, cfg["fc"]), nn.ReLU(inplace=True),
                                nn.Linear(cfg["fc"], cfg["fc"]), nn.ReLU(inplace=True))
        self.cls_score = nn.Linear(cfg["fc"], cfg["classes"] + 1)
        self.bbox_pred = nn.Linear(cfg["fc"], 4 * (cfg["classes"] + 1))

    def roi_pool(self, feats, rois):
        """RoIAlign-like pooling with affine_grid/grid_sample; rois are (R, 5)."""
        img, size = self.cfg["img"], self.cfg["pool"]
        x1, y1, x2, y2 = rois[:, 1], rois[:, 2], rois[:, 3], rois[:, 4]
        zero = torch.zeros_like(x1)
        theta = torch.stack([torch.stack([(x2 - x1) / img, zero, (x1 + x2) / img - 1], 1),
                             torch.stack([zero, (y2 - y1) / img, (y1 + y2) / img - 1], 1)], 1)
        grid = F.affine_grid(theta, [rois.size(0), feats.size(1), size, size], align_corners=False)
        pooled = []
        for b in range(feats.size(0)):  # rois are grouped by image, in image order
            g = grid[rois[:, 0] == b]
            out = F.grid_sample(feats[b:b + 1], g.reshape(1, -1, size * size, 2), align_corners=False)
            pooled.append(out[0].view(feats.size(1), -1, size, size).transpose(0, 1))
        return torch.cat(pooled)

    def forward(self, images, gt_boxes, gt_labels):
        feats = self.backbone(images)
        B, _, H, W = feats.shape
        h = F.relu(self.rpn_conv(feats))
        obj = self.rpn_cls(h).permute(0, 2, 3, 1).reshape(B, -1)
        deltas = self.rpn_bbox(h).permute(0, 2, 3, 1).reshape(B, -1, 4)
        anchors = generate_anchors(self.cfg["anchor_sizes"], H, W)

        obj_np, deltas_np = obj.detach().sigmoid().cpu().numpy(), deltas.detach().cpu().numpy()
        rpn_labels, rpn_targets, rois, roi_labels, roi_targets = [], [], [], [], []
        n_props = 0
        for b in range(B):
            lab, tgt = anchor_targets(anchors, gt_boxes[b], self.cfg["rpn_batch"])
            rpn_labels.append(lab)
            rpn_targets.append(tgt)
            props = proposals_for_image(anchors, obj_np[b], deltas_np[b], self.cfg)
            n_props += len(props)
            r, labels, t = sample_rois(props, gt_boxes[b], gt_labels[b], self.cfg)
            rois.append(np.hstack([np.full((len(r), 1), b, np.float32), r]))
            roi_labels.append(labels)
            roi_targets.append(t)

        dev = images.device
        rpn_labels = torch.from_numpy(np.stack(rpn_labels)).to(dev)
        rpn_targets = torch.from_numpy(np.stack(rpn_targets)).to(dev)
        valid, pos = rpn_labels >= 0, rpn_labels == 1
        rpn_cls_loss = F.binary_cross_entropy_with_logits(obj[valid], rpn_labels[valid])
        rpn_box_loss = F.smooth_l1_loss(deltas[pos], rpn_targets[pos], reduction="sum") / valid.sum()

        rois = torch.from_numpy(np.vstack(rois)).to(dev)
        roi_labels = torch.from_numpy(np.concatenate(roi_labels)).to(dev)
        roi_targets = torch.from_numpy(np.vstack(roi_targets)).to(dev)
        x = self.fc(self.roi_pool(feats, rois).flatten(1))
        scores, boxes = self.cls_score(x), self.bbox_pred(x).view(x.size(0), -1, 4)
        cls_loss = F.cross_entropy(scores, roi_labels)
        fg = roi_labels > 0
        box_loss = F.smooth_l1_loss(boxes[fg, roi_labels[fg]], roi_targets[fg],
                                    reduction="sum") / roi_labels.numel()
        return rpn_cls_loss, rpn_box_loss, cls_loss, box_loss, n_props, rois.size(0)


def train(model, optimizer, cfg, iters, device, rng):
    for it in range(iters):
        images, boxes, labels = make_batch(cfg, rng)
        losses = model(torch.from_numpy(images).to(device), boxes, labels)
        loss = sum(losses[:4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rpn_cls, rpn_box, cls, box = [term.item() for term in losses[:4]]
        print(f"iter {it} loss {loss.item():.4f} rpn_cls {rpn_cls:.4f} rpn_box {rpn_box:.4f} "
              f"rcnn_cls {cls:.4f} rcnn_box {box:.4f} proposals {losses[4]} rois {losses[5]}")


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
    model = FasterRCNN(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    if args.compile:
        model = torch.compile(model)
    train(model, optimizer, cfg, args.iters, device, np.random.RandomState(args.seed))


if __name__ == "__main__":
    main()
