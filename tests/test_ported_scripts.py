"""Real scripts, ported: well-known public Lightning examples and tutorials, rewritten small.

Each script is a function `script(L, callbacks, loggers, root)` written once against a framework
namespace: `L` is ``lightning.pytorch`` or ``mopt_fast``, `callbacks` / `loggers` are their
``callbacks`` / ``loggers`` modules. The test runs it under both, with only that namespace
switched and the same seed given to each framework's own ``seed_everything``, and compares what
the script produced: the final weights (bitwise, unless a gradient-norm clip acts), what
validate / test / predict returned, what the callbacks did (early-stop epoch, best score, which
checkpoint files exist, learning rates logged), the rows of metrics.csv and the keys of
``trainer.callback_metrics``.

The datasets the originals download are replaced by small synthetic tensors (fixed
torch.Generator seeds) and the models are shrunk; the structure and the Lightning API calls of
each original are kept. Every script names the public file it follows.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset, random_split

from helpers import importorskip_unless_ci

importorskip_unless_ci("lightning")
importorskip_unless_ci("torchmetrics")


# -- harness ---------------------------------------------------------------------------------------
def namespace(name: str) -> tuple[Any, Any, Any]:
    """(L, callbacks, loggers) of `name`: what a script gets from its imports."""
    if name == "lightning":
        import lightning.pytorch as L
        import lightning.pytorch.callbacks as callbacks
        import lightning.pytorch.loggers as loggers

        for logger_name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
        return L, callbacks, loggers
    import mopt_fast as L
    import mopt_fast.callbacks as callbacks
    import mopt_fast.loggers as loggers

    return L, callbacks, loggers


def run_both(script: Callable[..., dict], tmp_path: Path, **kwargs: Any) -> tuple[dict, dict]:
    """The script's results under Lightning and under mopt_fast, each writing under its own folder."""
    results = []
    for name in ("lightning", "mopt_fast"):
        root = tmp_path / name
        root.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(script(*namespace(name), root, **kwargs))
    return results[0], results[1]


def assert_same(ref: Any, got: Any, rtol: float = 0.0, path: str = "result") -> None:
    """`got` equals `ref`: tensors bitwise (torch.equal) with rtol 0, else within rtol; dicts with
    the same keys; sequences of the same length; floats equal (or within rtol); the rest by ==."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{path}: {type(got).__name__} instead of a tensor"
        assert got.shape == ref.shape and got.dtype == ref.dtype, f"{path}: {got.shape}/{got.dtype} vs {ref.shape}/{ref.dtype}"
        if rtol == 0.0:
            assert torch.equal(got, ref), f"{path}: {got} != {ref} (max diff {(got - ref).abs().max()})"
        else:
            torch.testing.assert_close(got, ref, rtol=rtol, atol=1e-8, msg=lambda m: f"{path}: {m}")
    elif isinstance(ref, dict):
        assert isinstance(got, dict), f"{path}: {type(got).__name__} instead of a dict"
        assert sorted(got) == sorted(ref), f"{path}: keys {sorted(got)} != {sorted(ref)}"
        for key in ref:
            assert_same(ref[key], got[key], rtol, f"{path}[{key!r}]")
    elif isinstance(ref, (list, tuple)):
        assert isinstance(got, (list, tuple)), f"{path}: {type(got).__name__} instead of a sequence"
        assert len(got) == len(ref), f"{path}: length {len(got)} != {len(ref)}"
        for i, (r, g) in enumerate(zip(ref, got)):
            assert_same(r, g, rtol, f"{path}[{i}]")
    elif isinstance(ref, float) and rtol:
        assert isinstance(got, float) and math.isclose(got, ref, rel_tol=rtol, abs_tol=1e-8), f"{path}: {got} != {ref}"
    else:
        assert got == ref, f"{path}: {got!r} != {ref!r}"


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tensors(metrics: dict) -> dict[str, torch.Tensor]:
    return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


def files(root: Path) -> list[str]:
    """Every file under `root`, relative; TensorBoard event files (named by host and time) by their prefix."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root)
            if rel.name.startswith("events.out.tfevents."):
                rel = rel.with_name("events.out.tfevents.*")
            found.append(rel.as_posix())
    return sorted(found)


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """metrics.csv as (header, rows), the cells as the logger wrote them."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def rel(path: str | os.PathLike, root: Path) -> str:
    return Path(path).relative_to(root).as_posix() if path else ""


def fake_images(n: int, seed: int, num_classes: int = 10, shape: tuple = (1, 8, 8)) -> TensorDataset:
    """A stand-in for MNIST / CIFAR-10: `n` images of `shape` drawn with `seed`, each a noisy copy
    of its class's prototype (the same prototypes for every seed, so the splits of one "dataset"
    share them), so a classifier learns something in a few steps."""
    prototypes = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = prototypes[y] + 1.2 * torch.randn(n, *shape, generator=g)
    return TensorDataset(x, y)


QUIET = dict(accelerator="cpu", devices=1, enable_progress_bar=False)


# -- 1. "Lightning in 15 minutes" / README LitAutoEncoder ---------------------------------------------
def intro_autoencoder(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows Lightning-AI/pytorch-lightning docs/source-pytorch/starter/introduction.rst ("Lightning in
    15 minutes", the same LitAutoEncoder as README.md): encoder/decoder passed to the module,
    training_step logging "train_loss", Adam, Trainer(limit_train_batches, max_epochs) with the
    default logger and checkpointing, then load_from_checkpoint(path, encoder=, decoder=) and the
    encoder used on a fake batch."""
    L.seed_everything(42)
    encoder = nn.Sequential(nn.Linear(8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8 * 8))

    class LitAutoEncoder(L.LightningModule):
        def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder
            self.decoder = decoder

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, _ = batch
            x = x.view(x.size(0), -1)
            z = self.encoder(x)
            x_hat = self.decoder(z)
            loss = nn.functional.mse_loss(x_hat, x)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    autoencoder = LitAutoEncoder(encoder, decoder)
    train_loader = DataLoader(fake_images(40, seed=1), batch_size=4, shuffle=True)
    trainer = L.Trainer(limit_train_batches=6, max_epochs=2, default_root_dir=root, enable_model_summary=False,
                        **QUIET)
    trainer.fit(model=autoencoder, train_dataloaders=train_loader)

    checkpoints = [f for f in files(root) if f.endswith(".ckpt")]
    fresh_encoder = nn.Sequential(nn.Linear(8 * 8, 16), nn.ReLU(), nn.Linear(16, 3))
    fresh_decoder = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8 * 8))
    loaded = LitAutoEncoder.load_from_checkpoint(root / checkpoints[0], encoder=fresh_encoder, decoder=fresh_decoder)
    encoder = loaded.encoder
    encoder.eval()
    fake_image_batch = torch.randn(4, 8 * 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embeddings = encoder(fake_image_batch)
    ckpt = torch.load(root / checkpoints[0], weights_only=False)
    return {
        "weights": weights(autoencoder),
        "loaded": weights(loaded),
        "embeddings": embeddings,
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "callback_metrics": tensors(trainer.callback_metrics),
        "files": files(root),
        "ckpt": {"epoch": ckpt["epoch"], "global_step": ckpt["global_step"], "state_dict": ckpt["state_dict"]},
        "log_dir": rel(trainer.log_dir, root),
    }


def test_intro_autoencoder(tmp_path: Path) -> None:
    ref, got = run_both(intro_autoencoder, tmp_path)
    assert ref["global_step"] == 12 and any(f.endswith("epoch=1-step=12.ckpt") for f in ref["files"])
    assert_same(ref, got)


# -- 2. examples/pytorch/basics/autoencoder.py -----------------------------------------------------------
def basics_autoencoder(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows Lightning-AI/pytorch-lightning examples/pytorch/basics/autoencoder.py: LitAutoEncoder with
    save_hyperparameters() and a shared step logging f"{stage}_loss" with on_step=True, predict_step,
    a LightningDataModule with a seeded random_split (done in setup(stage) here), an ImageSampler
    callback that runs the model on trainer.datamodule's validation set at every train epoch end,
    Trainer(callbacks=<one callback, not a list>), fit, then test and predict with ckpt_path="best"
    (as the example's cli_main does with seed_everything_default=1234)."""
    L.seed_everything(1234)

    class ImageSampler(callbacks.Callback):
        def __init__(self, num_samples: int = 3) -> None:
            super().__init__()
            self.num_samples = num_samples
            self.generated: list = []

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            images, _ = next(iter(DataLoader(trainer.datamodule.mnist_val, batch_size=self.num_samples)))
            images_flattened = images.view(images.size(0), -1)
            with torch.no_grad():
                pl_module.eval()
                images_generated = pl_module(images_flattened.to(pl_module.device))
                pl_module.train()
            self.generated.append((trainer.current_epoch, images_generated.reshape(images.shape)))

    class LitAutoEncoder(L.LightningModule):
        def __init__(self, hidden_dim: int = 16, learning_rate: float = 10e-3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.encoder = nn.Sequential(nn.Linear(8 * 8, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 3))
            self.decoder = nn.Sequential(nn.Linear(3, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 8 * 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.encoder(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self._common_step(batch, batch_idx, "train")

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self._common_step(batch, batch_idx, "val")

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self._common_step(batch, batch_idx, "test")

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: Any = None) -> torch.Tensor:
            return self(self._prepare_batch(batch))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

        def _prepare_batch(self, batch: Any) -> torch.Tensor:
            x, _ = batch
            return x.view(x.size(0), -1)

        def _common_step(self, batch: Any, batch_idx: int, stage: str) -> torch.Tensor:
            x = self._prepare_batch(batch)
            loss = F.mse_loss(x, self(x))
            self.log(f"{stage}_loss", loss, on_step=True)
            return loss

    class MyDataModule(L.LightningDataModule):
        def __init__(self, batch_size: int = 8) -> None:
            super().__init__()
            self.batch_size = batch_size

        def setup(self, stage: str) -> None:
            dataset = fake_images(40, seed=2)
            self.mnist_test = fake_images(12, seed=3)
            self.mnist_train, self.mnist_val = random_split(dataset, [32, 8], generator=torch.Generator().manual_seed(42))

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_train, batch_size=self.batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_val, batch_size=self.batch_size)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_test, batch_size=self.batch_size)

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_test, batch_size=self.batch_size)

    model = LitAutoEncoder()
    datamodule = MyDataModule()
    sampler = ImageSampler()
    trainer = L.Trainer(callbacks=sampler, max_epochs=3, default_root_dir=root,
                        logger=loggers.CSVLogger(save_dir=root), enable_model_summary=False, **QUIET)
    trainer.fit(model, datamodule=datamodule)
    fit_metrics = tensors(trainer.callback_metrics)
    fit_weights = weights(model)
    test_results = trainer.test(ckpt_path="best", datamodule=datamodule)
    predictions = trainer.predict(ckpt_path="best", datamodule=datamodule)
    header, rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    return {
        "weights": fit_weights,
        "hparams": dict(model.hparams),
        "fit_metrics": fit_metrics,
        "test": test_results,
        "predictions": predictions,
        "generated": sampler.generated,
        "best": rel(trainer.checkpoint_callback.best_model_path, root),
        "files": files(root),
        "metrics.csv": (header, rows),
        "callback_metrics": sorted(trainer.callback_metrics),
    }


def test_basics_autoencoder(tmp_path: Path) -> None:
    ref, got = run_both(basics_autoencoder, tmp_path)
    assert len(ref["predictions"]) == 2 and ref["predictions"][0].shape == (8, 64)
    assert ref["test"] and "test_loss_epoch" in ref["test"][0]
    assert_same(ref, got)


# -- 3. examples/pytorch/domain_templates/generative_adversarial_net.py ------------------------------
def gan(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows Lightning-AI/pytorch-lightning examples/pytorch/domain_templates/generative_adversarial_net.py:
    manual optimization (automatic_optimization = False) with two Adam optimizers returned as a
    tuple, toggle_optimizer / manual_backward / untoggle_optimizer for the generator then the
    discriminator, noise drawn from the global RNG inside training_step(self, batch) (no batch_idx),
    self.log_dict, BatchNorm1d(out, 0.8) in the generator, example_input_array (with the default
    model summary on), and samples of validation_z generated at every train epoch end."""
    L.seed_everything(7)

    class Generator(nn.Module):
        def __init__(self, latent_dim: int = 8, img_shape: tuple = (1, 4, 4)) -> None:
            super().__init__()
            self.img_shape = img_shape

            def block(in_feat: int, out_feat: int, normalize: bool = True) -> list:
                layers: list = [nn.Linear(in_feat, out_feat)]
                if normalize:
                    layers.append(nn.BatchNorm1d(out_feat, 0.8))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                return layers

            self.model = nn.Sequential(*block(latent_dim, 16, normalize=False), *block(16, 32),
                                       nn.Linear(32, math.prod(img_shape)), nn.Tanh())

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            img = self.model(z)
            return img.view(img.size(0), *self.img_shape)

    class Discriminator(nn.Module):
        def __init__(self, img_shape: tuple) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Linear(math.prod(img_shape), 32), nn.LeakyReLU(0.2, inplace=True),
                                       nn.Linear(32, 16), nn.LeakyReLU(0.2, inplace=True), nn.Linear(16, 1))

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return self.model(img.view(img.size(0), -1))

    class GAN(L.LightningModule):
        def __init__(self, img_shape: tuple = (1, 4, 4), lr: float = 0.0002, b1: float = 0.5, b2: float = 0.999,
                     latent_dim: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.automatic_optimization = False
            self.generator = Generator(latent_dim=self.hparams.latent_dim, img_shape=img_shape)
            self.discriminator = Discriminator(img_shape=img_shape)
            self.validation_z = torch.randn(8, self.hparams.latent_dim)
            self.example_input_array = torch.zeros(2, self.hparams.latent_dim)
            self.samples: list = []

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.generator(z)

        @staticmethod
        def adversarial_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(y_hat, y)

        def training_step(self, batch: Any) -> None:
            imgs, _ = batch
            opt_g, opt_d = self.optimizers()
            z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)

            valid = torch.ones(imgs.size(0), 1).type_as(imgs)
            self.toggle_optimizer(opt_g)
            g_loss = self.adversarial_loss(self.discriminator(self(z)), valid)
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            self.untoggle_optimizer(opt_g)

            self.toggle_optimizer(opt_d)
            real_loss = self.adversarial_loss(self.discriminator(imgs), valid)
            fake = torch.zeros(imgs.size(0), 1).type_as(imgs)
            fake_loss = self.adversarial_loss(self.discriminator(self(z).detach()), fake)
            d_loss = (real_loss + fake_loss) / 2
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            self.untoggle_optimizer(opt_d)

            self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

        def configure_optimizers(self) -> Any:
            lr, b1, b2 = self.hparams.lr, self.hparams.b1, self.hparams.b2
            opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(b1, b2))
            opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(b1, b2))
            return opt_g, opt_d

        def on_train_epoch_end(self) -> None:
            z = self.validation_z.type_as(self.generator.model[0].weight)
            sample_imgs = self(z)
            self.samples.append((self.current_epoch, len(self.loggers), sample_imgs.detach().clone()))

    class MNISTDataModule(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            data = fake_images(48, seed=4, shape=(1, 4, 4))
            return DataLoader(TensorDataset(data.tensors[0].tanh(), data.tensors[1]), batch_size=8, shuffle=True)

    model = GAN(lr=0.01)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, default_root_dir=root, **QUIET)
    trainer.fit(model, MNISTDataModule())
    return {
        "weights": weights(model),
        "samples": model.samples,
        "global_step": trainer.global_step,
        "callback_metrics": tensors(trainer.callback_metrics),
        "logged_metrics": tensors(trainer.logged_metrics),
        "optimizer_states": [opt.state_dict() for opt in trainer.optimizers],
    }


def test_gan(tmp_path: Path) -> None:
    ref, got = run_both(gan, tmp_path)
    assert ref["global_step"] == 24  # two optimizer steps for each of the 12 batches
    assert sorted(ref["callback_metrics"]) == ["d_loss", "g_loss"]
    assert_same(ref, got)


# -- 4. lightning-hydra-template: MNISTLitModule + MNISTDataModule + train.py ---------------------------
def hydra_template(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows ashleve/lightning-hydra-template src/models/mnist_module.py (MNISTLitModule),
    src/models/components/simple_dense_net.py, src/data/mnist_datamodule.py (MNISTDataModule),
    configs/callbacks/{model_checkpoint,early_stopping}.yaml, configs/logger/csv.yaml and the
    fit / test(ckpt_path=best) / metric_dict sequence of src/train.py: torchmetrics Accuracy /
    MeanMetric / MaxMetric updated in the steps and logged as objects, metrics reset in
    on_train_start, best-so-far in on_validation_epoch_end, optimizer and scheduler given as
    functools.partial hyper-parameters and built on self.trainer.model.parameters(), a
    ReduceLROnPlateau scheduler dict monitoring "val/loss", ModelCheckpoint(monitor="val/acc",
    mode="max", save_last=True, filename="epoch_{epoch:03d}", auto_insert_metric_name=False),
    EarlyStopping(monitor="val/acc", mode="max"), a data module reading self.trainer.world_size in
    setup() and a seeded random_split of a ConcatDataset."""
    from torchmetrics import MaxMetric, MeanMetric
    from torchmetrics.classification.accuracy import Accuracy

    L.seed_everything(12345, workers=True)

    class SimpleDenseNet(nn.Module):
        def __init__(self, input_size: int = 64, lin1_size: int = 16, lin2_size: int = 16, lin3_size: int = 16,
                     output_size: int = 10) -> None:
            super().__init__()
            self.model = nn.Sequential(
                nn.Linear(input_size, lin1_size), nn.BatchNorm1d(lin1_size), nn.ReLU(),
                nn.Linear(lin1_size, lin2_size), nn.BatchNorm1d(lin2_size), nn.ReLU(),
                nn.Linear(lin2_size, lin3_size), nn.BatchNorm1d(lin3_size), nn.ReLU(),
                nn.Linear(lin3_size, output_size),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch_size, channels, width, height = x.size()
            return self.model(x.view(batch_size, -1))

    class MNISTLitModule(L.LightningModule):
        def __init__(self, net: nn.Module, optimizer: Any, scheduler: Any, compile: bool) -> None:
            super().__init__()
            self.save_hyperparameters(logger=False)
            self.net = net
            self.criterion = torch.nn.CrossEntropyLoss()
            self.train_acc = Accuracy(task="multiclass", num_classes=10)
            self.val_acc = Accuracy(task="multiclass", num_classes=10)
            self.test_acc = Accuracy(task="multiclass", num_classes=10)
            self.train_loss = MeanMetric()
            self.val_loss = MeanMetric()
            self.test_loss = MeanMetric()
            self.val_acc_best = MaxMetric()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def on_train_start(self) -> None:
            self.val_loss.reset()
            self.val_acc.reset()
            self.val_acc_best.reset()

        def model_step(self, batch: Any) -> tuple:
            x, y = batch
            logits = self.forward(x)
            loss = self.criterion(logits, y)
            preds = torch.argmax(logits, dim=1)
            return loss, preds, y

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss, preds, targets = self.model_step(batch)
            self.train_loss(loss)
            self.train_acc(preds, targets)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def on_train_epoch_end(self) -> None:
            pass

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss, preds, targets = self.model_step(batch)
            self.val_loss(loss)
            self.val_acc(preds, targets)
            self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

        def on_validation_epoch_end(self) -> None:
            acc = self.val_acc.compute()
            self.val_acc_best(acc)
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            loss, preds, targets = self.model_step(batch)
            self.test_loss(loss)
            self.test_acc(preds, targets)
            self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, prog_bar=True)
            self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

        def on_test_epoch_end(self) -> None:
            pass

        def setup(self, stage: str) -> None:
            if self.hparams.compile and stage == "fit":
                self.net = torch.compile(self.net)

        def configure_optimizers(self) -> dict:
            optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
            if self.hparams.scheduler is not None:
                scheduler = self.hparams.scheduler(optimizer=optimizer)
                return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss",
                                                                 "interval": "epoch", "frequency": 1}}
            return {"optimizer": optimizer}

    class MNISTDataModule(L.LightningDataModule):
        def __init__(self, data_dir: str = "data/", train_val_test_split: tuple = (48, 16, 16), batch_size: int = 8,
                     num_workers: int = 0, pin_memory: bool = False) -> None:
            super().__init__()
            self.save_hyperparameters(logger=False)
            self.data_train = self.data_val = self.data_test = None
            self.batch_size_per_device = batch_size

        @property
        def num_classes(self) -> int:
            return 10

        def prepare_data(self) -> None:
            pass  # the original downloads MNIST here

        def setup(self, stage: str | None = None) -> None:
            if self.trainer is not None:
                if self.hparams.batch_size % self.trainer.world_size != 0:
                    raise RuntimeError("Batch size is not divisible by the number of devices.")
                self.batch_size_per_device = self.hparams.batch_size // self.trainer.world_size
            if not self.data_train and not self.data_val and not self.data_test:
                trainset, testset = fake_images(60, seed=5), fake_images(20, seed=6)
                dataset = ConcatDataset(datasets=[trainset, testset])
                self.data_train, self.data_val, self.data_test = random_split(
                    dataset=dataset, lengths=self.hparams.train_val_test_split,
                    generator=torch.Generator().manual_seed(42))

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.data_train, batch_size=self.batch_size_per_device,
                              num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.data_val, batch_size=self.batch_size_per_device,
                              num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory, shuffle=False)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.data_test, batch_size=self.batch_size_per_device,
                              num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory, shuffle=False)

        def teardown(self, stage: str | None = None) -> None:
            pass

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state_dict: dict) -> None:
            pass

    datamodule = MNISTDataModule()
    model = MNISTLitModule(
        net=SimpleDenseNet(),
        optimizer=functools.partial(torch.optim.Adam, lr=0.1, weight_decay=0.0),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min", factor=0.5, patience=0),
        compile=False,
    )
    checkpoint = callbacks.ModelCheckpoint(dirpath=root / "checkpoints", filename="epoch_{epoch:03d}", monitor="val/acc",
                                           verbose=False, save_last=True, save_top_k=1, mode="max",
                                           auto_insert_metric_name=False, save_weights_only=False)
    early_stopping = callbacks.EarlyStopping(monitor="val/acc", min_delta=0.0, patience=2, verbose=False, mode="max",
                                             strict=True, check_finite=True)
    logger = [loggers.CSVLogger(save_dir=root, name="csv/", prefix="")]
    trainer = L.Trainer(default_root_dir=root, min_epochs=1, max_epochs=8, check_val_every_n_epoch=1,
                        deterministic=False, callbacks=[checkpoint, early_stopping], logger=logger,
                        enable_model_summary=False, **QUIET)
    hparams = {"model": {"lr": 0.1}, "model/params/total": sum(p.numel() for p in model.parameters()),
               "seed": 12345}
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)

    def callback_state() -> dict:
        return {"stopped_epoch": early_stopping.stopped_epoch, "wait_count": early_stopping.wait_count,
                "es_best_score": early_stopping.best_score, "best_model_score": checkpoint.best_model_score,
                "best_model_path": rel(checkpoint.best_model_path, root),
                "last_model_path": rel(checkpoint.last_model_path, root)}

    trainer.fit(model=model, datamodule=datamodule, ckpt_path=None)
    train_metrics = trainer.callback_metrics
    fit_snapshot = tensors(train_metrics)
    fit_weights = weights(model)
    fit_callbacks = callback_state()
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    ckpt_path = trainer.checkpoint_callback.best_model_path
    if ckpt_path == "":
        ckpt_path = None
    # The partial optimizer/scheduler in the hyper-parameters need a full (not weights-only) load in Lightning.
    test_results = trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    test_metrics = trainer.callback_metrics
    metric_dict = {**train_metrics, **test_metrics}
    header, rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    return {
        "weights": fit_weights,
        "tested_weights": weights(model),
        "fit_metrics": fit_snapshot,
        "metric_dict": tensors(metric_dict),
        "test": test_results,
        "lrs": lrs,
        "current_epoch": trainer.current_epoch,
        "fit_callbacks": fit_callbacks,
        "test_callbacks": callback_state(),
        "files": files(root),
        "metrics.csv": (header, rows),
        "hparams.yaml": (Path(trainer.logger.log_dir) / "hparams.yaml").read_text(),
    }


@pytest.fixture(scope="module")
def hydra_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return run_both(hydra_template, tmp_path_factory.mktemp("hydra"))


def test_hydra_template(hydra_results: tuple[dict, dict]) -> None:
    ref, got = hydra_results
    assert 0 < ref["fit_callbacks"]["stopped_epoch"] < 7 and ref["current_epoch"] < 8, "EarlyStopping should stop early"
    assert ref["lrs"] != [0.1], "ReduceLROnPlateau should have lowered the learning rate"
    assert "checkpoints/last.ckpt" in ref["files"]
    # Lightning: test(ckpt_path=best) put back the callbacks' state saved in that (earlier) checkpoint
    assert ref["test_callbacks"]["stopped_epoch"] == 0 < ref["fit_callbacks"]["stopped_epoch"]
    assert_same({k: v for k, v in ref.items() if k != "test_callbacks"},
                {k: v for k, v in got.items() if k != "test_callbacks"})


def test_hydra_template_callback_state_after_test(hydra_results: tuple[dict, dict]) -> None:
    """test(ckpt_path=...) puts back the callbacks' state saved in the checkpoint, as Lightning 2.6's
    _restore_modules_and_callbacks does whatever the stage."""
    ref, got = hydra_results
    assert_same(ref["test_callbacks"], got["test_callbacks"])


# -- 5. tutorials mnist-hello-world + EarlyStopping / LearningRateMonitor / load_from_checkpoint --------
def hello_world(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows Lightning-AI/tutorials lightning_examples/mnist-hello-world/hello-world.py (LitMNIST:
    data hooks prepare_data / setup(stage) with an unseeded random_split / *_dataloader on the
    module itself, torchmetrics Accuracy objects logged, CSVLogger, trainer.fit(model) without
    loaders, trainer.test() without a model, fit called again, metrics.csv read back), with the
    callbacks and the checkpoint reload of Lightning-AI/pytorch-lightning
    docs/source-pytorch/common/early_stopping.rst, .../common/checkpointing_basic.rst and
    .../common/evaluation_basic.rst: seed_everything, EarlyStopping(monitor="val_loss"),
    LearningRateMonitor, LitMNIST.load_from_checkpoint(best_model_path) and trainer.validate."""
    from torchmetrics import Accuracy

    L.seed_everything(42)
    batch_size = 8

    class LitMNIST(L.LightningModule):
        def __init__(self, data_dir: str = ".", hidden_size: int = 16, learning_rate: float = 2e-2) -> None:
            super().__init__()
            self.data_dir = data_dir
            self.hidden_size = hidden_size
            self.learning_rate = learning_rate
            self.num_classes = 10
            self.dims = (1, 8, 8)
            channels, width, height = self.dims
            self.model = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * width * height, hidden_size), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden_size, self.num_classes),
            )
            self.val_accuracy = Accuracy(task="multiclass", num_classes=10)
            self.test_accuracy = Accuracy(task="multiclass", num_classes=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.model(x), dim=1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.nll_loss(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            loss = F.nll_loss(logits, y)
            preds = torch.argmax(logits, dim=1)
            self.val_accuracy.update(preds, y)
            self.log("val_loss", loss, prog_bar=True)
            self.log("val_acc", self.val_accuracy, prog_bar=True)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            loss = F.nll_loss(logits, y)
            preds = torch.argmax(logits, dim=1)
            self.test_accuracy.update(preds, y)
            self.log("test_loss", loss, prog_bar=True)
            self.log("test_acc", self.test_accuracy, prog_bar=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

        def prepare_data(self) -> None:
            pass  # the original downloads MNIST here

        def setup(self, stage: str | None = None) -> None:
            if stage in ("fit", "validate") or stage is None:
                mnist_full = fake_images(48, seed=7)
                self.mnist_train, self.mnist_val = random_split(mnist_full, [40, 8])
            if stage == "test" or stage is None:
                self.mnist_test = fake_images(16, seed=8)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_train, batch_size=batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_val, batch_size=batch_size)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.mnist_test, batch_size=batch_size)

    model = LitMNIST()
    early_stop = callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=1, min_delta=0.2)
    lr_monitor = callbacks.LearningRateMonitor(logging_interval="epoch")
    trainer = L.Trainer(max_epochs=8, logger=loggers.CSVLogger(save_dir=root), callbacks=[early_stop, lr_monitor],
                        default_root_dir=root, enable_model_summary=False, **QUIET)
    trainer.fit(model)
    first = {"current_epoch": trainer.current_epoch, "stopped_epoch": early_stop.stopped_epoch,
             "global_step": trainer.global_step, "weights": weights(model),
             "callback_metrics": tensors(trainer.callback_metrics)}
    tested = trainer.test()
    log_dir = trainer.logger.log_dir
    after_test = {"first_fit": first, "test": tested, "metrics.csv": read_csv(f"{log_dir}/metrics.csv"),
                  "best_model_path": rel(trainer.checkpoint_callback.best_model_path, root),
                  "callback_metrics": sorted(trainer.callback_metrics), "files": files(root)}

    trainer.fit(model)  # "You can keep calling trainer.fit(model) as many times as you'd like"
    second = {"current_epoch": trainer.current_epoch, "stopped_epoch": early_stop.stopped_epoch,
              "global_step": trainer.global_step, "weights": weights(model)}
    best_path = trainer.checkpoint_callback.best_model_path
    best = LitMNIST.load_from_checkpoint(best_path)
    validated = trainer.validate(model=best)
    return {
        "after_test": after_test,
        "second_fit": second,
        "metrics.csv": read_csv(f"{log_dir}/metrics.csv"),
        "best_model_path": rel(best_path, root),
        "best_weights": weights(best),
        "validate": validated,
        "callback_metrics": sorted(trainer.callback_metrics),
        "files": files(root),
    }


@pytest.fixture(scope="module")
def hello_world_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    return run_both(hello_world, tmp_path_factory.mktemp("hello_world"))


def test_hello_world(hello_world_results: tuple[dict, dict]) -> None:
    """Up to the second fit: the early-stopped fit, test() on its best checkpoint, metrics.csv so far."""
    ref, got = hello_world_results
    assert 0 < ref["after_test"]["first_fit"]["stopped_epoch"] < 7, "EarlyStopping should stop the first fit early"
    assert "lr-Adam" in ref["after_test"]["metrics.csv"][0]
    assert ref["second_fit"]["global_step"] > ref["after_test"]["first_fit"]["global_step"], "the second fit trains"
    assert_same(ref["after_test"], got["after_test"])
    # what the second fit does not change: which files exist, which metrics were logged
    assert_same(ref["files"], got["files"])
    assert_same(ref["callback_metrics"], got["callback_metrics"])
    assert_same(ref["metrics.csv"][0], got["metrics.csv"][0])


def test_hello_world_second_fit(hello_world_results: tuple[dict, dict]) -> None:
    """A second fit(model) on a trainer past its first epoch draws the RNG as Lightning does (its
    first epoch's DataLoader iterator is made twice, each drawing a base seed)."""
    ref, got = hello_world_results
    assert_same({k: ref[k] for k in ("second_fit", "metrics.csv", "best_weights", "validate")},
                {k: got[k] for k in ("second_fit", "metrics.csv", "best_weights", "validate")})


# -- 6. several validation dataloaders, gradient clipping, gradient accumulation --------------------
def multi_val_clip_accumulate(L: Any, callbacks: Any, loggers: Any, root: Path, algorithm: str) -> dict:
    """Follows Lightning-AI/pytorch-lightning docs/source-pytorch/data/iterables.rst (several
    validation / test / predict dataloaders as a list, `dataloader_idx` in the step methods, the
    "/dataloader_idx_N" suffix of logged names, a list of results from validate / test and a list
    per dataloader from predict) and docs/source-pytorch/advanced/training_tricks.rst
    (accumulate_grad_batches, gradient_clip_val with gradient_clip_algorithm "value" or "norm")."""
    L.seed_everything(3)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(80, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.3 * torch.randn(80, 1, generator=g)
    train = DataLoader(TensorDataset(x[:50], y[:50] * 4.0), batch_size=5, shuffle=True)  # 10 batches

    def loaders() -> list[DataLoader]:
        return [DataLoader(TensorDataset(x[50:65], y[50:65]), batch_size=4),
                DataLoader(TensorDataset(x[65:], y[65:]), batch_size=6)]

    class LitRegressor(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
            self.steps: list = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            loss = F.mse_loss(self(xb), yb)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()]))
            self.steps.append((self.trainer.global_step, norm.detach().clone()))

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            xb, yb = batch
            self.log("val_loss", F.mse_loss(self(xb), yb))

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            xb, yb = batch
            self.log("test_loss", F.l1_loss(self(xb), yb))
            self.log(f"test_mse_{dataloader_idx}", F.mse_loss(self(xb), yb), add_dataloader_idx=False)

        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)

    model = LitRegressor()
    trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=3, gradient_clip_val=0.5,
                        gradient_clip_algorithm=algorithm, logger=False, enable_checkpointing=False,
                        default_root_dir=root, enable_model_summary=False, **QUIET)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=loaders())
    fit_metrics = tensors(trainer.callback_metrics)
    validated = trainer.validate(model, dataloaders=loaders())
    tested = trainer.test(model, dataloaders=loaders())
    predicted = trainer.predict(model, dataloaders=loaders())
    return {
        "weights": weights(model),
        "grad_norms": model.steps,
        "global_step": trainer.global_step,
        "fit_metrics": fit_metrics,
        "validate": validated,
        "test": tested,
        "predict": predicted,
        "callback_metrics": sorted(trainer.callback_metrics),
    }


@pytest.mark.parametrize("algorithm", ["value", "norm"])
def test_multi_val_clip_accumulate(tmp_path: Path, algorithm: str) -> None:
    ref, got = run_both(multi_val_clip_accumulate, tmp_path, algorithm=algorithm)
    assert ref["global_step"] == 8  # ceil(10 / 3) optimizer steps per epoch
    assert max(norm for _, norm in ref["grad_norms"]) > 0.5, "the clip should act"
    assert "val_loss/dataloader_idx_1" in ref["fit_metrics"] and len(ref["predict"]) == 2
    # the "norm" clip scales by clip / (norm + eps): mopt_fast's fused kernels may round differently
    assert_same(ref, got, rtol=0.0 if algorithm == "value" else 1e-6)


# -- 7. tutorials cifar10-baseline: OneCycleLR stepped per batch, LearningRateMonitor, SWA ------------
def cifar10_baseline(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows Lightning-AI/tutorials lightning_examples/cifar10-baseline/baseline.py: seed_everything(7),
    LitResnet(lr) with save_hyperparameters, a shared evaluate(batch, stage) logging loss and
    torchmetrics.functional accuracy, SGD with momentum and weight decay, OneCycleLR built on
    self.trainer.max_epochs in a scheduler dict with "interval": "step",
    LearningRateMonitor(logging_interval="step"), fit(model, datamodule) / test(model, datamodule=),
    and the SWA bonus: a second module around the trained network with AveragedModel updated at
    every train epoch end and update_bn over self.trainer.datamodule.train_dataloader() in
    on_train_end. The TensorBoardLogger is a CSVLogger here, so metrics.csv can be compared."""
    from torchmetrics.functional import accuracy

    L.seed_everything(7)
    batch_size = 8
    n_train = 48

    class CIFAR10DataModule(L.LightningDataModule):
        def setup(self, stage: str) -> None:
            full = fake_images(n_train + 16, seed=9, shape=(3, 6, 6))
            self.train_set, self.val_set = random_split(full, [n_train, 16], generator=torch.Generator().manual_seed(0))
            self.test_set = fake_images(16, seed=10, shape=(3, 6, 6))

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=batch_size, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.val_set, batch_size=batch_size)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.test_set, batch_size=batch_size)

    def create_model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    class LitResnet(L.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = create_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.model(x), dim=1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.nll_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def evaluate(self, batch: Any, stage: str | None = None) -> None:
            x, y = batch
            logits = self(x)
            loss = F.nll_loss(logits, y)
            preds = torch.argmax(logits, dim=1)
            acc = accuracy(preds, y, task="multiclass", num_classes=10)
            if stage:
                self.log(f"{stage}_loss", loss, prog_bar=True)
                self.log(f"{stage}_acc", acc, prog_bar=True)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.evaluate(batch, "val")

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.evaluate(batch, "test")

        def configure_optimizers(self) -> dict:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)
            steps_per_epoch = n_train // batch_size
            scheduler_dict = {
                "scheduler": torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, epochs=self.trainer.max_epochs,
                                                                 steps_per_epoch=steps_per_epoch),
                "interval": "step",
            }
            return {"optimizer": optimizer, "lr_scheduler": scheduler_dict}

    class SWAResnet(LitResnet):
        def __init__(self, trained_model: nn.Module, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters("lr")
            self.model = trained_model
            self.swa_model = torch.optim.swa_utils.AveragedModel(self.model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.swa_model(x), dim=1)

        def on_train_epoch_end(self) -> None:
            self.swa_model.update_parameters(self.model)

        def validation_step(self, batch: Any, batch_idx: int, stage: str | None = None) -> None:
            x, y = batch
            logits = F.log_softmax(self.model(x), dim=1)
            loss = F.nll_loss(logits, y)
            preds = torch.argmax(logits, dim=1)
            self.log("val_loss", loss, prog_bar=True)
            self.log("val_acc", accuracy(preds, y, task="multiclass", num_classes=10), prog_bar=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.model.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=5e-4)

        def on_train_end(self) -> None:
            torch.optim.swa_utils.update_bn(self.trainer.datamodule.train_dataloader(), self.swa_model,
                                            device=self.device)

    cifar10_dm = CIFAR10DataModule()
    model = LitResnet(lr=0.05)
    # log_every_n_steps=1: this run has 12 steps, fewer than the default 50
    trainer = L.Trainer(max_epochs=2, logger=loggers.CSVLogger(save_dir=root, name="resnet"),
                        callbacks=[callbacks.LearningRateMonitor(logging_interval="step")], log_every_n_steps=1,
                        default_root_dir=root, enable_model_summary=False, **QUIET)
    trainer.fit(model, cifar10_dm)
    tested = trainer.test(model, datamodule=cifar10_dm)
    header, rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    first = {"weights": weights(model), "test": tested, "metrics.csv": (header, rows),
             "callback_metrics": sorted(trainer.callback_metrics), "files": files(root)}

    swa_model = SWAResnet(model.model, lr=0.01)
    swa_model.datamodule = cifar10_dm
    swa_trainer = L.Trainer(max_epochs=2, logger=loggers.CSVLogger(save_dir=root, name="swa_resnet"),
                            log_every_n_steps=2, default_root_dir=root, enable_model_summary=False, **QUIET)
    swa_trainer.fit(swa_model, cifar10_dm)
    swa_tested = swa_trainer.test(swa_model, datamodule=cifar10_dm)
    return {"resnet": first, "swa_weights": weights(swa_model), "swa_test": swa_tested,
            "swa_metrics.csv": read_csv(Path(swa_trainer.logger.log_dir) / "metrics.csv"), "files": files(root)}


def test_cifar10_baseline(tmp_path: Path) -> None:
    ref, got = run_both(cifar10_baseline, tmp_path)
    header, rows = ref["resnet"]["metrics.csv"]
    lrs = [r["lr-SGD"] for r in rows if r["lr-SGD"]]
    assert len(lrs) == 12 and len(set(lrs)) > 6, "the step-wise OneCycleLR should be logged at every step"
    assert_same(ref, got)


# -- 8. LBFGS with its closure, and a scheduler stepped per batch ---------------------------------------
def lbfgs_closure(L: Any, callbacks: Any, loggers: Any, root: Path) -> dict:
    """Follows the LBFGS note of LightningModule.configure_optimizers in Lightning-AI/pytorch-lightning
    src/lightning/pytorch/core/module.py ("If you use torch.optim.LBFGS, Lightning handles the
    closure function automatically for you") and the scheduler-dict example beside it
    ("interval": "step"): automatic optimization hands the optimizer a closure running
    training_step and backward, LBFGS calls it several times per step; StepLR steps per batch."""
    L.seed_everything(5)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(32, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.05 * torch.randn(32, 1, generator=g)

    class LitLinear(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)
            self.closure_calls = 0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.closure_calls += 1
            xb, yb = batch
            loss = F.mse_loss(self.layer(xb), yb)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> dict:
            optimizer = torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    model = LitLinear()
    lr_monitor = callbacks.LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(max_epochs=2, logger=loggers.CSVLogger(save_dir=root), callbacks=[lr_monitor],
                        log_every_n_steps=1, enable_checkpointing=False, default_root_dir=root, enable_model_summary=False, **QUIET)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    return {
        "weights": weights(model),
        "closure_calls": model.closure_calls,
        "global_step": trainer.global_step,
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "callback_metrics": tensors(trainer.callback_metrics),
        "metrics.csv": read_csv(Path(trainer.logger.log_dir) / "metrics.csv"),
    }


def test_lbfgs_closure(tmp_path: Path) -> None:
    ref, got = run_both(lbfgs_closure, tmp_path)
    assert ref["global_step"] == 8 and ref["closure_calls"] > 8 and ref["lr"] == 0.5 * 0.5**4
    assert_same(ref, got)
