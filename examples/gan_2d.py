"""`make demo`: the manual-optimization guide's GAN, trained by mopt_fast.Trainer on a 2-D mixture
of eight Gaussians, then timed against a hand-written loop and (when installed) Lightning.

    python examples/gan_2d.py [--epochs 30] [--out out/demo]

Writes <out>/gan_2d.png (real vs generated samples, and the loss curves from the CSV log) and
prints the per-step time of each way of training the same module.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Z_DIM = 8


def mixture_of_gaussians(n: int, modes: int = 8, radius: float = 2.0, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(modes, (n,), generator=g)
    angle = 2 * math.pi * k.float() / modes
    centers = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return centers + std * torch.randn(n, 2, generator=g)


def make_gan(LightningModule: type) -> type:
    """The guide's SimpleGAN on a given LightningModule base (mopt_fast's or Lightning's)."""

    class SimpleGAN(LightningModule):
        def __init__(self, lr: float = 1e-3) -> None:
            super().__init__()
            self.G = nn.Sequential(nn.Linear(Z_DIM, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
            self.D = nn.Sequential(nn.Linear(2, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128), nn.LeakyReLU(0.2),
                                   nn.Linear(128, 1))
            self.criterion = nn.BCEWithLogitsLoss()
            self.lr = lr
            # Important: This property activates manual optimization.
            self.automatic_optimization = False

        def sample_z(self, n: int) -> torch.Tensor:
            return torch.randn(n, Z_DIM, device=self.device)

        def sample_G(self, n: int) -> torch.Tensor:
            return self.G(self.sample_z(n))

        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_opt, d_opt = self.optimizers()
            X, _ = batch
            batch_size = X.shape[0]
            real_label = torch.ones((batch_size, 1), device=self.device)
            fake_label = torch.zeros((batch_size, 1), device=self.device)
            g_X = self.sample_G(batch_size)

            # Optimize Discriminator
            d_x = self.D(X)
            errD_real = self.criterion(d_x, real_label)
            d_z = self.D(g_X.detach())
            errD_fake = self.criterion(d_z, fake_label)
            errD = errD_real + errD_fake
            d_opt.zero_grad()
            self.manual_backward(errD)
            d_opt.step()

            # Optimize Generator
            d_z = self.D(g_X)
            errG = self.criterion(d_z, real_label)
            g_opt.zero_grad()
            self.manual_backward(errG)
            g_opt.step()

            self.log_dict({"g_loss": errG, "d_loss": errD}, prog_bar=True)

        def configure_optimizers(self) -> Any:
            g_opt = torch.optim.Adam(self.G.parameters(), lr=self.lr, betas=(0.5, 0.999))
            d_opt = torch.optim.Adam(self.D.parameters(), lr=self.lr, betas=(0.5, 0.999))
            return g_opt, d_opt

    return SimpleGAN


def loader(n: int = 8192, batch_size: int = 128) -> DataLoader:
    x = mixture_of_gaussians(n)
    return DataLoader(TensorDataset(x, torch.zeros(n)), batch_size=batch_size, shuffle=True)


# -- the three ways of training, for timing ---------------------------------------------------------
def fit_with(framework: str, steps: int) -> float:
    """Seconds to train the GAN for `steps` batches (quiet: no bar, logger, summary or checkpoint)."""
    if framework == "mopt_fast":
        import mopt_fast

        LM, Trainer = mopt_fast.LightningModule, mopt_fast.Trainer
    else:
        import logging

        import lightning.pytorch as pl

        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        LM, Trainer = pl.LightningModule, pl.Trainer
    torch.manual_seed(0)
    model = make_gan(LM)()
    data = loader()
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    return time.perf_counter() - t0


def hand_written(steps: int) -> float:
    """The same GAN in a plain PyTorch loop: what the Trainer must not be slower than."""
    import mopt_fast

    torch.manual_seed(0)
    model = make_gan(mopt_fast.LightningModule)()
    g_opt, d_opt = model.configure_optimizers()
    crit = model.criterion
    data = loader()
    t0 = time.perf_counter()
    for i, (X, _) in enumerate(data):
        if i == steps:
            break
        n = X.shape[0]
        real, fake = torch.ones((n, 1)), torch.zeros((n, 1))
        g_X = model.G(torch.randn(n, Z_DIM))
        errD = crit(model.D(X), real) + crit(model.D(g_X.detach()), fake)
        d_opt.zero_grad()
        errD.backward()
        d_opt.step()
        errG = crit(model.D(g_X), real)
        g_opt.zero_grad()
        errG.backward()
        g_opt.step()
    return time.perf_counter() - t0


def per_step(run: Any, short: int = 8, long: int = 32, repeats: int = 5) -> float:
    """Seconds per step without the set-up: (T(long) - T(short)) / (long - short), best of `repeats`
    runs each, interleaved by the caller's loop."""
    return (min(run(long) for _ in range(repeats)) - min(run(short) for _ in range(repeats))) / (long - short)


def timing_table() -> list[tuple[str, float]]:
    runners = {"hand-written loop": hand_written, "mopt_fast.Trainer": lambda n: fit_with("mopt_fast", n)}
    try:
        import lightning  # noqa: F401

        runners["lightning.Trainer"] = lambda n: fit_with("lightning", n)
    except ImportError:
        print("(lightning is not installed: its row is left out)")
    for run in runners.values():  # warm-up: imports, allocator, first-call costs
        run(4)
    return [(name, per_step(run)) for name, run in runners.items()]


# -- the main job ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the timing is per thread)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    import mopt_fast

    torch.manual_seed(0)
    model = make_gan(mopt_fast.LightningModule)()
    logger = mopt_fast.CSVLogger(args.out, name="gan_2d")
    trainer = mopt_fast.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=logger, log_every_n_steps=1,
                                enable_checkpointing=False)
    trainer.fit(model, loader())
    print(f"trained {trainer.global_step} optimizer steps over {trainer.current_epoch} epochs; "
          f"final g_loss={trainer.callback_metrics['g_loss'].item():.3f} "
          f"d_loss={trainer.callback_metrics['d_loss'].item():.3f}; log: {logger.metrics_file_path}")

    png = os.path.join(args.out, "gan_2d.png")
    plot(model, logger.metrics_file_path, png)
    print(f"saved {png}")

    print(f"\nper-step time, GAN above, batch 128, {args.threads} thread(s), set-up excluded:")
    rows = timing_table()
    base = rows[0][1]
    for name, t in rows:
        print(f"  {name:<20} {t * 1e6:8.0f} µs/step   {t / base:5.2f}x the hand-written loop")


def plot(model: nn.Module, metrics_csv: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = mixture_of_gaussians(2000, seed=1)
    with torch.no_grad():
        fake = model.G(torch.randn(2000, Z_DIM))
    steps, g, d = [], [], []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("g_loss"):
                steps.append(int(row["step"]))
                g.append(float(row["g_loss"]))
                d.append(float(row["d_loss"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    ax1.scatter(real[:, 0], real[:, 1], s=3, alpha=0.4, label="real")
    ax1.scatter(fake[:, 0], fake[:, 1], s=3, alpha=0.4, label="generated")
    ax1.set_aspect("equal")
    ax1.set_title("2-D mixture of Gaussians: real vs generated")
    ax1.legend(markerscale=4)
    window = 20
    smooth = lambda v: [statistics.fmean(v[max(0, i - window):i + 1]) for i in range(len(v))]  # noqa: E731
    ax2.plot(steps, smooth(g), label="g_loss")
    ax2.plot(steps, smooth(d), label="d_loss")
    ax2.set_xlabel("batch")
    ax2.set_title(f"losses (running mean over {window} batches)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
