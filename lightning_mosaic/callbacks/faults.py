"""``MosaicFaults``: the Lightning callback that simulates node churn and stragglers in a Mosaic Learning run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lightning_mosaic._validation import check_int, check_probability
from lightning_mosaic.callbacks.target import GossipTarget, as_gossip_target
from lightning_mosaic.gossip.faults import NodeFaults

#: The settings of the fault model, as they appear in :meth:`MosaicFaults.state_dict` and in the settings check
#: of a multi-process run.
FAULT_SETTINGS = ("availability", "churn_trace", "straggler_prob", "seed")

#: The fault settings without faults (the defaults of :class:`MosaicFaults`).
NO_FAULTS: dict[str, Any] = {"availability": 1.0, "churn_trace": None, "straggler_prob": 0.0, "seed": 0}


class RoundCounter(Protocol):
    """What :class:`MosaicFaults` needs from the gossip: the number of rounds run so far."""

    @property
    def rounds(self) -> int: ...


def faults_configured(settings: dict[str, Any]) -> bool:
    """Whether fault ``settings`` (keys of :data:`FAULT_SETTINGS`) ask for any fault: ``availability < 1``, a
    ``churn_trace`` or ``straggler_prob > 0``."""
    return (
        float(settings.get("availability", 1.0)) < 1.0
        or settings.get("churn_trace") is not None
        or float(settings.get("straggler_prob", 0.0)) > 0.0
    )


def fault_differences(saved: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """The differences between two sets of fault settings, as ``key=<saved> in the checkpoint, <ours> here``.

    Two settings without any fault are equal whatever their seeds (the seed draws nothing then).
    """
    if not faults_configured(saved) and not faults_configured(ours):
        return []
    return [
        f"{key}={saved.get(key)!r} in the checkpoint, {ours[key]!r} here"
        for key in FAULT_SETTINGS
        if saved.get(key) != ours[key]
    ]


def checkpoint_fault_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The fault settings a checkpoint was written with.

    Read from the state of a :class:`MosaicFaults` callback, or, in a checkpoint whose :class:`MosaicGossip` held
    the fault settings itself (``availability``, ``churn_trace`` and ``straggler_prob`` in its ``config``, drawn
    with the gossip's ``seed``), from that; a checkpoint with neither was written without faults
    (:data:`NO_FAULTS`).
    """
    states = checkpoint.get("callbacks", {})
    for key, state in states.items():
        if key.startswith(MosaicFaults.__qualname__) and isinstance(state, dict) and "config" in state:
            return {**NO_FAULTS, **state["config"]}
    for key, state in states.items():
        config = state.get("config") if isinstance(state, dict) else None
        if key.startswith("MosaicGossip") and isinstance(config, dict) and "availability" in config:
            return {**{k: config.get(k, NO_FAULTS[k]) for k in FAULT_SETTINGS if k != "seed"}, "seed": config["seed"]}
    return dict(NO_FAULTS)


class MosaicFaults(Callback):
    """Node churn and stragglers for the nodes of a :class:`~lightning_mosaic.MosaicModule` gossiped by
    :class:`~lightning_mosaic.MosaicGossip` (the fault model; message loss is the gossip's ``drop_prob``).

    A node offline in round r (churn) neither trains in the local steps that lead to round r, nor sends, nor
    receives in it; a straggler skips one local step (its parameters and per-coordinate optimizer state stay as they
    were) but gossips as usual. The schedule is :class:`~lightning_mosaic.gossip.faults.NodeFaults`: stateless in
    (seed, round) and (seed, step), so every process of a multi-process run and a resumed run draw the same faults.

    The callback decides when: in ``on_train_batch_start`` it freezes the idle nodes of the coming local step through
    the gossip target's ``freeze_nodes(mask)`` (this process's rows); :class:`~lightning_mosaic.MosaicGossip` finds
    it among ``trainer.callbacks`` at ``setup`` and asks :meth:`offline` every round (it logs
    ``gossip/offline_nodes``). Its place in ``trainer.callbacks`` does not matter: the round it counts is the gossip's
    :attr:`~lightning_mosaic.MosaicGossip.rounds`, and the gossip asks for the mask after the local step.

    Without any fault (the defaults) it does nothing and needs nothing: no gossip, no ``freeze_nodes``.

    Its state (:meth:`state_dict`) is its settings only; :meth:`on_load_checkpoint` refuses a checkpoint written
    with other fault settings.

    Args:
        availability: Probability in [0, 1] that a node is online in a round, independently per node and round
            (churn; default 1).
        churn_trace: Optional CSV file of offline intervals, header ``node,first_round,last_round`` (inclusive,
            rounds from 1), applied on top of ``availability`` (see
            :func:`~lightning_mosaic.gossip.faults.read_churn_trace`).
        straggler_prob: Probability in [0, 1] that a node skips a given local step (stragglers; default 0).
        seed: Seed of the churn (per round) and straggler (per step) streams.

    Raises:
        ValueError: At construction for a probability outside [0, 1] or a negative seed (naming it); at ``setup``
            for a bad trace file (naming file and line); at the start of ``fit``, with faults, if no
            :class:`~lightning_mosaic.MosaicGossip` is among ``trainer.callbacks``.
        FileNotFoundError: At construction if ``churn_trace`` does not exist.
        TypeError: At ``setup``, with faults, if the gossip target cannot freeze nodes (no ``freeze_nodes``).
    """

    def __init__(
        self,
        availability: float = 1.0,
        churn_trace: str | None = None,
        straggler_prob: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.availability = check_probability("availability", availability)
        self.straggler_prob = check_probability("straggler_prob", straggler_prob)
        if churn_trace is not None and not Path(churn_trace).is_file():
            raise FileNotFoundError(f"churn_trace {churn_trace} does not exist")
        self.churn_trace = None if churn_trace is None else str(churn_trace)
        self.seed = check_int("seed", seed, 0)
        self.faults: NodeFaults | None = None
        self._target: GossipTarget | None = None
        self._gossip: RoundCounter | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self.settings)

    @property
    def active(self) -> bool:
        """Whether any fault is configured (after :meth:`attach`: whether the schedule holds any, an empty trace
        file holds none)."""
        return faults_configured(self.settings) if self.faults is None else self.faults.active

    @property
    def settings(self) -> dict[str, Any]:
        """The fault settings (the keys of :data:`FAULT_SETTINGS`): the state, the state key and the checks of
        checkpoints and of the processes of a run."""
        return {
            "availability": self.availability,
            "churn_trace": self.churn_trace,
            "straggler_prob": self.straggler_prob,
            "seed": self.seed,
        }

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.attach(pl_module, world_size=trainer.world_size, rank=trainer.global_rank)

    def attach(self, pl_module: LightningModule, world_size: int = 1, rank: int = 0) -> NodeFaults | None:
        """Build the fault schedule for ``pl_module``'s nodes (``setup`` calls it; call it before ``Trainer.fit`` to
        check the trace file and the module without starting anything).

        Args:
            pl_module: The gossiped module (a gossip target, or, in a multi-process run, any ``LightningModule``).
            world_size: Number of processes (``trainer.world_size``).
            rank: This process's global rank.

        Returns:
            The schedule, or ``None`` without faults (nothing is read or checked then).

        Raises:
            ValueError: For a bad trace file (naming file and line: a node outside ``[0, n)``, ...).
            TypeError: If faults are configured and the gossip target has no ``freeze_nodes``.
        """
        self.faults, self._target = None, None
        if not faults_configured(self.settings):
            return None
        target = as_gossip_target(pl_module, world_size, rank)
        if not callable(getattr(target, "freeze_nodes", None)):
            raise TypeError(
                "availability, churn_trace and straggler_prob need a lightning_mosaic.MosaicModule (nodes that skip "
                f"local steps), got {type(pl_module).__name__}"
            )
        self.faults = NodeFaults(target.num_nodes, self.availability, self.churn_trace, self.straggler_prob, self.seed)
        self._target = target
        return self.faults

    def follow(self, gossip: RoundCounter) -> None:
        """Count rounds with ``gossip`` (its ``rounds``: rounds run so far); :class:`~lightning_mosaic.MosaicGossip`
        calls it at ``setup``."""
        self._gossip = gossip

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active and self._gossip is None:
            raise ValueError(
                "MosaicFaults (churn and stragglers of gossip rounds) needs a lightning_mosaic.MosaicGossip among "
                "trainer.callbacks"
            )

    def offline(self, round_: int) -> Tensor:
        """``(n,)`` bool mask over all nodes of those offline in round ``round_`` (rounds count from 1).

        Raises:
            RuntimeError: Before :meth:`attach` (``setup``) with faults configured.
        """
        if self.faults is None:
            if self.active:
                raise RuntimeError("MosaicFaults.offline is known after setup (attach)")
            raise RuntimeError("MosaicFaults.offline: no fault is configured")
        return self.faults.offline(round_)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        faults, target, gossip = self.faults, self._target, self._gossip
        if faults is None or not faults.active or target is None or gossip is None:
            return
        step = trainer.global_step + 1  # the local step this batch belongs to
        idle = faults.idle(step, gossip.rounds + 1)  # and the round it leads to
        first = target.first_node
        rows = target.gossip_rows().shape[0]
        target.freeze_nodes(idle[first : first + rows])  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.settings}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint written with other fault settings (a checkpoint without them had no faults).

        Raises:
            ValueError: Naming every setting that differs, with the checkpoint's and this run's values.
        """
        diffs = fault_differences(checkpoint_fault_settings(checkpoint), self.settings)
        if diffs:
            raise ValueError(
                "the checkpoint was written by a run with other fault settings (MosaicFaults), so it cannot continue "
                "this one: " + "; ".join(diffs)
            )
