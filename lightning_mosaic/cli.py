"""The ``mosaic`` command: LightningCLI for MosaicModule + a node datamodule + the MosaicGossip and MosaicFaults
callbacks.

``mosaic fit --config recipes/quickstart.yaml --gossip.fragments 8 --faults.availability 0.9``. The gossip callback
is its own config group (``gossip:``), and so is the fault model (``faults:``, churn and stragglers; its defaults
simulate no fault, so a recipe without faults leaves it out); at the end of ``fit`` the final parameters are
validated once more and a summary table is printed and written as ``summary.json`` next to the logs.
"""

from __future__ import annotations

import os
import sys
import zipfile
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_mosaic.callbacks.faults import MosaicFaults
from lightning_mosaic.callbacks.gossip import MosaicGossip
from lightning_mosaic.callbacks.summary import SUMMARY_FILE, MosaicSummary, format_summary
from lightning_mosaic.data.base import NodeDataModule
from lightning_mosaic.module import MosaicModule


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Refuse a checkpoint file that is missing, truncated or not a PyTorch zip archive, naming it.

    Reads the archive's directory and checks every member's CRC (no unpickling), so it costs one read of the file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a complete zip archive (what ``torch.save`` writes).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ckpt_path {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"ckpt_path {path} is truncated or not a PyTorch checkpoint ({error})") from None
    if bad is not None:
        raise ValueError(f"ckpt_path {path} is corrupt: member {bad} fails its CRC check")


class MosaicCLI(LightningCLI):
    """LightningCLI with ``gossip`` and ``faults`` groups and the end-of-fit summary."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the command line into ``self.config``, then check a local ``--ckpt_path`` file.

        A missing or truncated file is refused here, naming it, before any class is instantiated or anything is
        written. The config is the source of truth: LightningCLI would read the checkpoint's hyperparameters back
        into the config right after this method, so the path is held back until :meth:`before_instantiate_classes`
        puts it back; a checkpoint of another configuration is refused when it is loaded
        (``MosaicModule.on_load_checkpoint``, ``MosaicGossip.on_load_checkpoint``), naming the mismatch.

        Raises:
            FileNotFoundError: If ``--ckpt_path`` names a local file that does not exist.
            ValueError: If that file is truncated or not a PyTorch checkpoint.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._held_ckpt_path = ckpt_path
        if not ckpt_path:
            return
        if str(ckpt_path) not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt_path):
            check_checkpoint_file(ckpt_path)
        self.config[subcommand]["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        """Put back the ``--ckpt_path`` that :meth:`parse_arguments` held back."""
        if self._held_ckpt_path:
            self.config[self.config["subcommand"]]["ckpt_path"] = self._held_ckpt_path

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(MosaicFaults, "faults")
        parser.add_lightning_class_args(MosaicGossip, "gossip")
        # Each process reads its own nodes' data: Lightning must not add a DistributedSampler (MosaicStrategy).
        parser.set_defaults({"trainer.use_distributed_sampler": False})
        parser.link_arguments("data.init_args.num_nodes", "model.init_args.num_nodes")

    def before_fit(self) -> None:
        """Check the whole configuration before anything runs or is written (no empty run folders on bad input)."""
        trainer, model, data = self.trainer, self.model, self.datamodule
        if getattr(data, "num_nodes", model.num_nodes) != model.num_nodes:
            raise ValueError(
                f"data.num_nodes={data.num_nodes} but model.num_nodes={model.num_nodes}; the node count is "
                "data.init_args.num_nodes (the model's is linked to it)"
            )
        for callback in trainer.callbacks:
            if isinstance(callback, MosaicGossip) and isinstance(model, MosaicModule):
                callback.attach(model)  # checks K, s and the topology against n and d (rebuilt per process later)
            if isinstance(callback, MosaicFaults) and isinstance(model, MosaicModule):
                callback.attach(model)  # reads the churn trace against n (rebuilt per process later)
        if trainer.world_size == 1:  # load and partition now, so that data errors come before the run folder
            data.prepare_data()
            data.setup("fit")
        self._summary = next((c for c in trainer.callbacks if isinstance(c, MosaicSummary)), None)
        if self._summary is None:
            self._summary = MosaicSummary()
            trainer.callbacks.append(self._summary)  # after MosaicGossip: its time counts the gossip rounds

    def after_fit(self) -> None:
        """Validate the final parameters unless the last step was validated, then print the summary (rank 0)."""
        trainer, summary = self.trainer, self._summary
        if summary.validated_step != trainer.global_step or "val/loss" not in trainer.callback_metrics:
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)  # rewrites summary.json
        path = summary.directory(trainer) / SUMMARY_FILE  # on every rank (a collective)
        if trainer.is_global_zero and summary.summary is not None:
            print(f"\nMosaic Learning summary ({path}):\n{format_summary(summary.summary)}", flush=True)


def _concise(error: BaseException) -> str:
    """The library's own message out of jsonargparse's report on a class that failed to instantiate.

    jsonargparse lists one error per member of the ``Union[<class>, None]`` it tried; only the class's matters.
    """
    text = str(error)
    if "Errors:" not in text:
        return text
    reasons = [
        line.strip()[2:]
        for line in text.split("Errors:", 1)[1].splitlines()
        if line.strip().startswith("- ") and "NoneType" not in line
    ]
    return "; ".join(reasons) or text


def main(args: Any = None) -> None:
    """Entry point of the ``mosaic`` console script.

    A configuration error raised by the library (``ValueError``, ``TypeError``, ``FileNotFoundError``) is printed
    as one line, ``mosaic: error: ...``, with exit status 2; set ``MOSAIC_TRACEBACK=1`` for the full traceback.
    ``mosaic reproduce ...`` runs a grid of experiments and writes a report (:mod:`lightning_mosaic.reproduction`);
    ``mosaic analyze ...`` is dispatched to :func:`lightning_mosaic.analysis.cli.main` (no Lightning involved).
    """
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv and argv[0] == "analyze":
        from lightning_mosaic.analysis.cli import main as analyze

        analyze(argv[1:])
        return
    try:
        if argv and argv[0] == "reproduce":
            from lightning_mosaic.reproduction.grid import run_grid

            run_grid(argv[1:], fit=main)
            return
        MosaicCLI(
            MosaicModule,
            NodeDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        if os.environ.get("MOSAIC_TRACEBACK") == "1":
            raise
        print(f"mosaic: error: {_concise(error)}", file=sys.stderr)
        print("(set MOSAIC_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
