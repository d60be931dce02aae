"""Shared test helpers: the quiet single-process CPU Trainer, and the per-sample fetch path of a dataset."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from torch.utils.data import Dataset


def quiet_trainer(**options: Any) -> Trainer:
    """A CPU ``Trainer`` on one device that writes and prints nothing; ``options`` override or add Trainer arguments."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**defaults, **options})


class PerSample(Dataset):
    """The per-sample fetch path of ``dataset``: ``dataset[i]`` one by one (no ``__getitems__``), then the loader's
    ``default_collate`` (the fetch before ``GatheredSamples``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]
