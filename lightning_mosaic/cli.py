"""The ``mosaic`` command: LightningCLI for MosaicModule + a node datamodule + the MosaicGossip callback.

``mosaic fit --config recipes/quickstart.yaml --gossip.fragments 8``. The gossip callback is its own config group
(``gossip:``); at the end of ``fit`` the final parameters are validated once more and a summary table is printed and
written as ``summary.json`` next to the logs.
"""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mosaic.callbacks.gossip import MosaicGossip
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.module import MosaicModule
from lightning_mosaic.summary import format_summary, run_summary, write_summary


class MosaicCLI(LightningCLI):
    """LightningCLI with a ``gossip`` group and the end-of-fit summary."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MosaicGossip, "gossip")
        parser.link_arguments("data.init_args.num_nodes", "model.init_args.num_nodes")

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        seconds = time.perf_counter() - self._fit_start
        trainer, model = self.trainer, self.model
        results = trainer.validate(model, datamodule=self.datamodule, verbose=False)
        summary = run_summary(trainer, model, results[0], seconds)
        directory = trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero:
            path = write_summary(summary, directory)
            print(f"\nMosaic Learning summary ({path}):\n{format_summary(summary)}", flush=True)


def main(args: Any = None) -> None:
    """Entry point of the ``mosaic`` console script."""
    MosaicCLI(
        MosaicModule,
        NodeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
