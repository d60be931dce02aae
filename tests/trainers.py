"""The quiet single-process CPU Trainer of the tests: no logger, checkpoint, progress bar or model summary."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


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
