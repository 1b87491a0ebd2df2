"""DCGAN: a tiny convolutional generator/discriminator pair trained adversarially.

The "dataset" is synthetic: images of Gaussian blobs with random centre, width
and colour, generated from a seeded numpy RNG.

Python features exercised:
  * two optimizers (one per network), stepped alternately in one training step
  * `.item()` on losses and discriminator outputs every step, for logging
  * `fake.detach()` to stop generator gradients in the discriminator update
  * in-place `label.fill_(...)` to reuse the label tensor for real/fake targets
  * numpy statistics of generated samples: np.mean / np.std on
    `fake.detach().cpu().numpy()`
"""
import argparse
import math
import random

import numpy as np
import torch
import torch.nn as nn

SIZES = {
    "small": dict(nz=16, ngf=8, ndf=8, img=16, batch=16, nc=3),
    "large": dict(nz=100, ngf=64, ndf=64, img=64, batch=128, nc=3),
}


def make_dataset(n, img, nc, rng):
    """Gaussian blobs in [-1, 1]; returns a float32 array (n, nc, img, img)."""
    ys, xs = np.mgrid[0:img, 0:img].astype(np.float32) / img
    data = np.empty((n, nc, img, img), dtype=np.float32)
    for i in range(n):
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        sigma = rng.uniform(0.08, 0.2)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        colour = rng.uniform(0.3, 1.0, size=(nc, 1, 1))
        data[i] = blob[None] * colour * 2.0 - 1.0
    return data


class Generator(nn.Module):
    def __init__(self, nz, ngf, img, nc):
        super().__init__()
        n_up = int(math.log2(img)) - 2
        mult = 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                  nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self, ndf, img, nc):
        super().__init__()
        n_down = int(math.log2(img)) - 2
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1)


def weights_init(m):
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def train_step(netG, netD, optG, optD, criterion, real, nz):
    b = real.size(0)
    label = torch.full((b,), 1.0, device=real.device)

    # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    output = netD(real)
    errD_real = criterion(output, label)
    errD_real.backward()
    D_x = output.mean().item()

    noise = torch.randn(b, nz, 1, 1, device=real.device)
    fake = netG(noise)
    label.fill_(0.0)
    output = netD(fake.detach())
    errD_fake = criterion(output, label)
    errD_fake.backward()
    D_G_z1 = output.mean().item()
    errD = errD_real + errD_fake
    optD.step()

    # (2) update G: maximize log(D(G(z)))
    netG.zero_grad()
    label.fill_(1.0)
    output = netD(fake)
    errG = criterion(output, label)
    errG.backward()
    D_G_z2 = output.mean().item()
    optG.step()
    return errD.item(), errG.item(), D_x, D_G_z1, D_G_z2, fake


def train(netG, netD, optG, optD, data, cfg, iters, device):
    criterion = nn.BCELoss()
    n, b = data.shape[0], cfg["batch"]
    for it in range(iters):
        start = (it * b) % (n - b + 1)
        real = torch.from_numpy(data[start:start + b]).to(device)
        errD, errG, D_x, D_G_z1, D_G_z2, fake = train_step(
            netG, netD, optG, optD, criterion, real, cfg["nz"])
        samples = fake.detach().cpu().numpy()
        print(f"iter {it} loss_D {errD:.4f} loss_G {errG:.4f} D(x) {D_x:.4f} "
              f"D(G(z)) {D_G_z1:.4f}/{D_G_z2:.4f} "
              f"fake_mean {np.mean(samples):.4f} fake_std {np.std(samples):.4f}")


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
    data = make_dataset(cfg["batch"] * 8, cfg["img"], cfg["nc"], np.random.RandomState(args.seed))

    netG = Generator(cfg["nz"], cfg["ngf"], cfg["img"], cfg["nc"]).to(device)
    netD = Discriminator(cfg["ndf"], cfg["img"], cfg["nc"]).to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    if args.compile:
        netG = torch.compile(netG)
        netD = torch.compile(netD)

    train(netG, netD, optG, optD, data, cfg, args.iters, device)


if __name__ == "__main__":
    main()
