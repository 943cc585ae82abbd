"""The training loop: Open-Unmix's training semantics in pure PyTorch, reporting through callbacks.

No MLflow here: the per-epoch callback (umx_tune.pipeline) logs and reports to Optuna.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tqdm
from openunmix import model as umx_model
from torch.utils.data import DataLoader

from umx_tune.config import TrainConfig
from umx_tune.data.dataset import DatasetSplits, FullTracks, TrainChunks
from umx_tune.errors import ModelError, UmxTuneError
from umx_tune.separation.folder import unmix_shape
from umx_tune.separation.model import build_encoder, build_unmix
from umx_tune.training.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    StateDict,
    TrainState,
    read_checkpoint,
    write_checkpoint,
)


class TrainingDiverged(UmxTuneError):
    """The loss became NaN or infinite."""


@dataclass
class EpochResult:
    """What one finished epoch reports to the callback."""

    epoch: int  # 1-based
    train_loss: float
    valid_loss: float
    seconds: float
    samples: int
    lr: float
    best_epoch: int
    stop: bool  # early stopping triggered


@dataclass
class TrainingResult:
    unmix: umx_model.OpenUnmix  # the best-validation weights, on CPU
    state: TrainState


EpochCallback = Callable[[EpochResult], None]
Scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau


def compute_statistics(
    config: TrainConfig, data: DatasetSplits, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and scale of the mono magnitude spectrogram of the full training mixtures.

    As Open-Unmix's get_statistics (a StandardScaler over frames); returns two (nb_bins,) arrays.
    """
    encoder = build_encoder(config)
    count, total, total_sq = 0, np.zeros(1), np.zeros(1)
    with torch.no_grad():
        for track in tqdm.tqdm(data.train, desc="statistics", disable=not progress, leave=False):
            mix = torch.from_numpy(track.read("mixture"))[None]
            # (1, channels, bins, frames) -> mono (frames, bins)
            spec = encoder(mix).mean(1)[0].T.double().numpy()
            count += spec.shape[0]
            total = total + spec.sum(0)
            total_sq = total_sq + (spec**2).sum(0)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std[std == 0.0] = 1.0  # as sklearn's scaler: constant bins keep scale 1
    return mean, np.maximum(std, 1e-4 * std.max())


class Trainer:
    """Trains one OpenUnmix on a dataset, checkpointing every epoch into checkpoint_dir."""

    def __init__(
        self,
        config: TrainConfig,
        data: DatasetSplits,
        device: torch.device,
        checkpoint_dir: Path,
        progress: bool = True,
        *,
        loader_workers: int | None = None,
    ) -> None:
        """loader_workers: DataLoader worker processes [default: config.nb_workers]; result-neutral."""
        self.config = config
        self.loader_workers = config.nb_workers if loader_workers is None else loader_workers
        self.state = TrainState()  # fit's, from its start
        self.data = data
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress
        self.train_set = TrainChunks(data.train, config)
        self.valid_set = FullTracks(data.valid, config.target)
        self.encoder = build_encoder(config).to(device)

    def fit(
        self, on_epoch: EpochCallback | None = None, resume: bool = False, init: StateDict | None = None
    ) -> TrainingResult:
        """Train until config.epochs or early stopping; resume continues from the last checkpoint;
        init (fine-tuning, see init_weights) are the weights and input statistics to start from."""
        torch.manual_seed(self.config.seed)
        if resume:
            unmix, optimizer, scheduler, state, best = self._resume()
        else:
            unmix = self._fresh(init)
            optimizer, scheduler = self.make_optimizer(unmix)
            state, best = TrainState(), copy.deepcopy(unmix.state_dict())
        self.state = state  # what the epoch callback can read: every epoch so far, a resume's too
        while state.epoch < self.config.epochs:
            result = self._run_epoch(unmix, optimizer, scheduler, state)
            if result.best_epoch == result.epoch:
                best = copy.deepcopy(unmix.state_dict())
            checkpoint = Checkpoint(
                config=self.config,
                state=state,
                model=unmix.state_dict(),
                best_model=best,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                torch_rng=torch.get_rng_state(),
            )
            write_checkpoint(self.checkpoint_path, checkpoint)
            if on_epoch is not None:
                on_epoch(result)
            if result.stop:
                break
        unmix.load_state_dict(best)
        return TrainingResult(unmix=unmix.cpu().eval(), state=state)

    def _fresh(self, init: StateDict | None) -> umx_model.OpenUnmix:
        """A new network: init's weights and statistics, else the training set's statistics."""
        if init is not None:
            unmix = build_unmix(self.config)
            unmix.load_state_dict(init)
        else:
            mean, scale = compute_statistics(self.config, self.data, self.progress)
            unmix = build_unmix(self.config, mean, scale)
        return unmix.to(self.device)

    def make_optimizer(self, unmix: torch.nn.Module) -> tuple[torch.optim.Optimizer, Scheduler]:
        cfg = self.config
        optimizer = torch.optim.Adam(unmix.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.lr_decay_gamma, patience=cfg.lr_decay_patience, cooldown=10
        )
        return optimizer, scheduler

    def _run_epoch(
        self,
        unmix: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Scheduler,
        state: TrainState,
    ) -> EpochResult:
        epoch = state.epoch + 1
        start, compute_start = time.perf_counter(), self._compute_clock()
        train_loss = self.train_epoch(unmix, optimizer, epoch)
        valid_loss = self._valid_loss(unmix)
        for name, value in (("train_loss", train_loss), ("valid_loss", valid_loss)):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{name} became {value} at epoch {epoch}; try a lower lr")
        scheduler.step(valid_loss)
        seconds = time.perf_counter() - start
        state.epoch_compute_seconds.append(self._compute_clock() - compute_start)
        # early stopping as Open-Unmix's EarlyStopping(mode="min", min_delta=0)
        if valid_loss < state.best_loss:
            state.best_loss, state.best_epoch, state.bad_epochs = valid_loss, epoch, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.train_losses.append(train_loss)
        state.valid_losses.append(valid_loss)
        state.epoch_seconds.append(seconds)
        state.samples_seen += len(self.train_set)
        return EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            valid_loss=valid_loss,
            seconds=seconds,
            samples=len(self.train_set),
            lr=optimizer.param_groups[0]["lr"],
            best_epoch=state.best_epoch,
            stop=state.bad_epochs >= self.config.patience,
        )

    def train_loader(self, epoch: int) -> DataLoader:
        self.train_set.set_epoch(epoch)
        # the shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            shuffle=True,
            num_workers=self.loader_workers,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def train_epoch(self, unmix: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """Mean MSE between estimated and true target magnitudes over the epoch's batches."""
        unmix.train()
        total, weight = 0.0, 0
        batches = tqdm.tqdm(
            self.train_loader(epoch), desc=f"epoch {epoch}", disable=not self.progress, leave=False
        )
        for x, y in batches:
            x, y = x.to(self.device), y.to(self.device)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(unmix(self.encoder(x)), self.encoder(y))
            loss.backward()
            optimizer.step()
            # Open-Unmix weights each batch's loss by Y.size(1) (the channel count): a plain mean
            total += loss.item() * y.size(1)
            weight += y.size(1)
        return total / weight

    def _valid_loss(self, unmix: torch.nn.Module) -> float:
        """Mean MSE over the full validation tracks, one track per batch."""
        unmix.eval()
        total, weight = 0.0, 0
        with torch.no_grad():
            for x, y in DataLoader(self.valid_set, batch_size=1):
                x, y = x.to(self.device), y.to(self.device)
                loss = torch.nn.functional.mse_loss(unmix(self.encoder(x)), self.encoder(y))
                total += loss.item() * y.size(1)
                weight += y.size(1)
        return total / weight

    def _compute_clock(self) -> float:
        """Seconds of compute so far: on a CPU, the CPU time of this process (all its threads) and of
        its ended children (each epoch's DataLoader workers), which other processes on the machine
        barely change; on a GPU, the wall clock."""
        if self.device.type != "cpu":
            return time.perf_counter()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint_dir / CHECKPOINT_FILE

    def _resume(self) -> tuple[umx_model.OpenUnmix, torch.optim.Optimizer, Scheduler, TrainState, StateDict]:
        """The network, optimizer, scheduler, state and best weights of the last checkpoint."""
        checkpoint = read_checkpoint(self.checkpoint_path)
        changes = checkpoint.config.model_shape_changes(self.config)
        if changes:
            raise ModelError(f"cannot resume {self.checkpoint_path}: {changes}")
        unmix = build_unmix(self.config).to(self.device)
        unmix.load_state_dict(checkpoint.model)
        optimizer, scheduler = self.make_optimizer(unmix)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
        torch.set_rng_state(checkpoint.torch_rng)
        return unmix, optimizer, scheduler, checkpoint.state, checkpoint.best_model


def init_weights(separator: umx_model.Separator, config: TrainConfig, source: str) -> StateDict:
    """The weights and input statistics of config.target's network in separator (the model
    `--init-model` names, source), to fine-tune; ModelError naming both values of each shape
    parameter where the network is not the one config builds."""
    if config.target not in separator.target_models:
        networks = ", ".join(separator.target_models)
        raise ModelError(f"--init-model {source} has no {config.target} network (it has {networks})")
    state = separator.target_models[config.target].state_dict()
    stft = separator.stft
    model = {**unmix_shape(state), "nfft": int(stft.n_fft), "nhop": int(stft.n_hop)}
    with torch.device("meta"):  # the shape config builds, without allocating it
        wanted = {**unmix_shape(build_unmix(config).state_dict()), "nfft": config.nfft, "nhop": config.nhop}
    note = {"max_bin": f", bandwidth {config.bandwidth:g} Hz"}  # where max_bin comes from
    differences = [
        f"{key} {model[key]} (model) vs {wanted[key]} (config{note.get(key, '')})"
        for key in model
        if key != "nb_bins" and model[key] != wanted[key]  # nb_bins differ where nfft does
    ]
    if differences:
        raise ModelError(f"--init-model {source} does not fit the config: {'; '.join(differences)}")
    return {key: value.detach().clone() for key, value in state.items()}
