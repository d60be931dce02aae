"""Churn and stragglers: seeded, stateless fault schedules, and nodes that really skip training and gossip."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mosaic import MosaicFaults, MosaicGossip, MosaicModule
from lightning_mosaic.data import DigitsDataModule
from lightning_mosaic.distributed.strategy import RANK_STATES_KEY
from lightning_mosaic.gossip.faults import NodeFaults, read_churn_trace
from lightning_mosaic.models import MLP


def test_fault_schedule_is_seeded_stateless_and_has_the_requested_rates():
    faults = NodeFaults(1000, availability=0.8, straggler_prob=0.1, seed=5)
    first = [faults.offline(r) for r in range(1, 6)]
    again = NodeFaults(1000, availability=0.8, straggler_prob=0.1, seed=5)
    assert all(torch.equal(a, again.offline(r)) for r, a in zip(range(1, 6), first))
    assert not torch.equal(first[0], first[1])  # a fresh draw every round
    assert not torch.equal(first[0], NodeFaults(1000, availability=0.8, seed=6).offline(1))
    offline_rate = torch.stack(first).float().mean().item()
    assert 0.17 < offline_rate < 0.23
    idle = faults.idle(step=3, round_=2)
    assert torch.all(idle >= faults.offline(2))  # offline nodes never train
    assert 0.22 < idle.float().mean().item() < 0.34  # 1 - 0.8 * 0.9 = 0.28
    assert not NodeFaults(10).active and not NodeFaults(10).offline(1).any()


def test_churn_trace(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("# node 2 is away for rounds 3-5\nnode,first_round,last_round\n2,3,5\n0,1,1\n")
    assert read_churn_trace(trace, 4) == [(2, 3, 5), (0, 1, 1)]
    faults = NodeFaults(4, churn_trace=trace)
    assert faults.offline(1).tolist() == [True, False, False, False]
    assert [faults.offline(r)[2].item() for r in range(1, 7)] == [False, False, True, True, True, False]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("node,start,end\n", r"trace.csv:1: the churn trace must start with the header node,first_round,last_round"),
        ("node,first_round,last_round\n1,2\n", r"trace.csv:2: expected 3 fields"),
        ("node,first_round,last_round\n1,x,3\n", r"trace.csv:2: .* must be integers"),
        ("node,first_round,last_round\n\n7,1,3\n", r"trace.csv:3: node must be in \[0, 4\), got 7"),
        ("node,first_round,last_round\n1,4,3\n", r"trace.csv:2: need 1 <= first_round <= last_round, got 4..3"),
    ],
)
def test_bad_churn_trace_names_file_and_line(tmp_path, text, match):
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_churn_trace(trace, 4)


def test_bad_fault_arguments_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="availability must be a probability in"):
        MosaicFaults(availability=1.5)
    with pytest.raises(ValueError, match="straggler_prob must be a probability in"):
        MosaicFaults(straggler_prob=-0.1)
    with pytest.raises(FileNotFoundError, match="churn_trace .*missing.csv does not exist"):
        MosaicFaults(churn_trace=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        MosaicFaults(seed=-1)
    with pytest.raises(TypeError, match="availability"):
        MosaicGossip(availability=0.9)  # the fault model is MosaicFaults


class Snapshot(Callback):
    """Copies of the node parameters at batch start (before the local step) and at batch end."""

    def __init__(self) -> None:
        self.start: list[torch.Tensor] = []
        self.end: list[torch.Tensor] = []
        self.idle: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start.append(pl_module.gossip_parameters.detach().clone())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.idle.append(pl_module.frozen_nodes.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end.append(pl_module.gossip_parameters.detach().clone())


def test_offline_nodes_and_stragglers_skip_training_and_offline_nodes_skip_gossip(tmp_path):
    before_gossip, after_gossip = Snapshot(), Snapshot()
    gossip = MosaicGossip(fragments=4, peers=3, seed=1)
    trainer = Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[before_gossip, MosaicFaults(availability=0.7, straggler_prob=0.2, seed=1), gossip, after_gossip],
    )
    module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    trainer.fit(module, DigitsDataModule(num_nodes=8, alpha=0.5, batch_size=8))
    faults = NodeFaults(8, availability=0.7, straggler_prob=0.2, seed=1)
    for step in range(8):
        idle = faults.idle(step + 1, step + 1)
        offline = faults.offline(step + 1)
        assert torch.equal(before_gossip.idle[step], idle)
        trained = (before_gossip.end[step] != before_gossip.start[step]).any(dim=1)
        assert torch.equal(trained, ~idle), step  # idle nodes kept their parameters (and momentum, below)
        received = (after_gossip.end[step] != before_gossip.end[step]).any(dim=1)
        assert not received[offline].any(), step  # offline nodes received nothing
    assert any(i.any() for i in before_gossip.idle) and not all(i.all() for i in before_gossip.idle)


def test_faults_need_a_mosaic_module():
    class OneNode(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

    with pytest.raises(TypeError, match="need a lightning_mosaic.MosaicModule"):
        MosaicFaults(availability=0.9).attach(OneNode(), world_size=2)
    assert MosaicFaults().attach(OneNode()) is None  # no fault: nothing needed, nothing checked


# -- MosaicFaults as a callback: order, no cost without faults, checkpoints, the multi-process settings check --------


def fit(tmp_path, callbacks, max_steps=8, ckpt_path=None, **kwargs):
    """Fit an 8-node MLP on digits (6 batches per epoch, SGD with momentum) with ``callbacks``; return the module."""
    trainer = Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kwargs,
    )
    module = MosaicModule(MLP, 8, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    trainer.fit(module, DigitsDataModule(num_nodes=8, alpha=0.5, batch_size=8, steps_per_epoch=6), ckpt_path=ckpt_path)
    return module, trainer


class Frozen(Callback):
    """The frozen-node mask of every optimizer step, and the logged offline count of every round."""

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = every_n_steps
        self.masks: list[torch.Tensor | None] = []
        self.offline: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        mask = pl_module.frozen_nodes
        self.masks.append(None if mask is None else mask.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "gossip/offline_nodes" in trainer.callback_metrics and trainer.global_step % self.every_n_steps == 0:
            self.offline.append(float(trainer.callback_metrics["gossip/offline_nodes"]))


def test_the_order_of_faults_and_gossip_does_not_matter_and_steps_lead_to_the_next_round(tmp_path):
    """Every local step freezes the idle nodes of the round it leads to (every_n_steps=2: steps 2r-1 and 2r lead
    to round r), whichever of the two callbacks comes first; the parameters are the same bit for bit."""
    schedule = NodeFaults(8, availability=0.7, straggler_prob=0.2, seed=1)
    runs = []
    for faults_first in (True, False):
        frozen = Frozen(every_n_steps=2)
        faults = MosaicFaults(availability=0.7, straggler_prob=0.2, seed=1)
        gossip = MosaicGossip(fragments=4, peers=3, seed=1, every_n_steps=2)
        module, _ = fit(tmp_path, [faults, gossip, frozen] if faults_first else [gossip, faults, frozen])
        runs.append(module.gossip_parameters.detach().clone())
        assert gossip.rounds == 4 and gossip.faults is faults
        assert [m.tolist() for m in frozen.masks] == [schedule.idle(t, (t + 1) // 2).tolist() for t in range(1, 9)]
        assert frozen.offline == [float(schedule.offline(r).sum()) for r in range(1, 5)]
    assert torch.equal(runs[0], runs[1])


def test_without_faults_the_callback_does_nothing(tmp_path):
    frozen = Frozen()
    with_faults_callback, trainer = fit(tmp_path, [MosaicFaults(), MosaicGossip(fragments=4, peers=3, seed=1), frozen])
    assert frozen.masks == [None] * 8  # no node frozen, no mask built
    assert "gossip/offline_nodes" not in trainer.callback_metrics
    without, _ = fit(tmp_path, [MosaicGossip(fragments=4, peers=3, seed=1)])
    assert torch.equal(with_faults_callback.gossip_parameters, without.gossip_parameters)
    fit(tmp_path, [MosaicFaults(seed=3)], max_steps=2)  # without faults it needs no gossip either


def test_one_fault_model_per_run_and_faults_need_the_gossip(tmp_path):
    with pytest.raises(ValueError, match="trainer.callbacks holds 2 MosaicFaults callbacks"):
        fit(tmp_path, [MosaicFaults(availability=0.9), MosaicFaults(), MosaicGossip()])
    with pytest.raises(ValueError, match="MosaicFaults .* needs a lightning_mosaic.MosaicGossip"):
        fit(tmp_path, [MosaicFaults(straggler_prob=0.5)])


def test_bad_churn_trace_is_refused_at_setup_naming_the_file(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("node,first_round,last_round\n9,1,2\n")
    with pytest.raises(ValueError, match=r"trace.csv:2: node must be in \[0, 8\), got 9"):
        fit(tmp_path, [MosaicFaults(churn_trace=str(trace)), MosaicGossip()])


def test_state_is_the_settings_and_resume_continues_exactly(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("node,first_round,last_round\n3,5,9\n")

    def faults():
        return MosaicFaults(availability=0.8, churn_trace=str(trace), straggler_prob=0.1, seed=4)

    assert faults().state_dict() == {
        "config": {"availability": 0.8, "churn_trace": str(trace), "straggler_prob": 0.1, "seed": 4}
    }
    full, _ = fit(tmp_path, [faults(), MosaicGossip(fragments=4, peers=2, seed=1)], max_steps=12)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=6)
    fit(tmp_path, [faults(), MosaicGossip(fragments=4, peers=2, seed=1), checkpoint], max_steps=6)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["callbacks"][faults().state_key] == faults().state_dict()
    resumed, _ = fit(tmp_path, [MosaicGossip(fragments=4, peers=2, seed=1), faults()], max_steps=12, ckpt_path=last)
    assert torch.equal(resumed.gossip_parameters, full.gossip_parameters)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints after 6 steps: with faults, without a fault model, and the same two as an older version wrote
    them (the fault settings in the gossip's config and state key, drawn with the gossip's seed), plus the
    uninterrupted 12-step parameters of both runs."""
    root = tmp_path_factory.mktemp("faults")
    paths, full = {}, {}
    for name, faults in (("faults", dict(availability=0.7, straggler_prob=0.2, seed=1)), ("none", None)):
        callbacks = [MosaicGossip(fragments=4, peers=2, seed=1)] + ([] if faults is None else [MosaicFaults(**faults)])
        full[name] = fit(root, callbacks, max_steps=12)[0].gossip_parameters.detach().clone()
        saver = ModelCheckpoint(dirpath=root / name, save_last=True, every_n_train_steps=6)
        callbacks = [MosaicGossip(fragments=4, peers=2, seed=1)] + ([] if faults is None else [MosaicFaults(**faults)])
        fit(root, [*callbacks, saver], max_steps=6)
        paths[name] = root / name / "last.ckpt"
        # as the older version wrote it: no MosaicFaults, its settings in the gossip's config and state key
        ckpt = torch.load(paths[name], weights_only=False)
        states = ckpt["callbacks"]
        (key,) = [k for k in states if k.startswith("MosaicGossip")]
        states.pop(next((k for k in states if k.startswith("MosaicFaults")), None), None)
        settings = {k: v for k, v in (faults or {"availability": 1.0, "straggler_prob": 0.0}).items() if k != "seed"}
        config = {**states[key]["config"], "availability": 1.0, "churn_trace": None, "straggler_prob": 0.0, **settings}
        states[f"MosaicGossip{config!r}"] = {**states.pop(key), "config": config}
        paths[f"{name}-old"] = root / f"{name}-old.ckpt"
        torch.save(ckpt, paths[f"{name}-old"])
    return paths, full


def test_old_checkpoint_format_key():
    """The older version's state key (as ``MosaicGossip(fragments=4, peers=2, seed=1, availability=0.7,
    straggler_prob=0.2)`` wrote it), which the fixture above rebuilds."""
    config = {
        "fragments": 4,
        "peers": 2,
        "topology": "el-local",
        "fragmentation": "random",
        "every_n_steps": 1,
        "seed": 1,
        "drop_prob": 0.0,
        "availability": 0.7,
        "churn_trace": None,
        "straggler_prob": 0.2,
    }
    assert f"MosaicGossip{config!r}" == (
        "MosaicGossip{'fragments': 4, 'peers': 2, 'topology': 'el-local', 'fragmentation': 'random', "
        "'every_n_steps': 1, 'seed': 1, 'drop_prob': 0.0, 'availability': 0.7, 'churn_trace': None, "
        "'straggler_prob': 0.2}"
    )
    assert set(MosaicGossip()._config()).isdisjoint({"availability", "churn_trace", "straggler_prob"})
    assert "availability" not in MosaicGossip().state_key


@pytest.mark.parametrize(
    ("checkpoint", "faults", "match"),
    [
        ("faults", dict(availability=0.8, straggler_prob=0.2, seed=1), r"other fault settings \(MosaicFaults\), so"),
        ("faults", dict(availability=0.7, straggler_prob=0.2, seed=2), r"seed=1 in the checkpoint, 2 here"),
        (
            "faults",
            None,
            r"with churn or stragglers, .*availability=0.7 in the checkpoint, 1.0 here; .*"
            r"straggler_prob=0.2 in the checkpoint, 0.0 here",
        ),
        ("faults", {}, r"availability=0.7 in the checkpoint, 1.0 here"),
        ("none", dict(churn_trace=None, straggler_prob=0.5), r"straggler_prob=0.0 in the checkpoint, 0.5 here"),
        ("faults-old", None, r"with churn or stragglers, .*availability=0.7 in the checkpoint, 1.0 here"),
        ("faults-old", dict(availability=0.7, straggler_prob=0.2, seed=0), r"seed=1 in the checkpoint, 0 here"),
        ("none-old", dict(availability=0.5, seed=1), r"availability=1.0 in the checkpoint, 0.5 here"),
    ],
)
def test_a_checkpoint_with_other_fault_settings_is_refused(tmp_path, checkpoints, checkpoint, faults, match):
    callbacks = [MosaicGossip(fragments=4, peers=2, seed=1)] + ([] if faults is None else [MosaicFaults(**faults)])
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, callbacks, max_steps=12, ckpt_path=checkpoints[0][checkpoint])


@pytest.mark.parametrize(
    ("checkpoint", "faults"),
    [
        ("none-old", None),
        ("none-old", {}),
        ("none-old", dict(seed=5)),
        ("none", {}),
        ("faults-old", dict(availability=0.7, straggler_prob=0.2, seed=1)),
    ],
)
def test_an_older_checkpoint_with_the_same_settings_resumes_exactly(tmp_path, checkpoints, checkpoint, faults):
    """Fault settings at their defaults in the gossip's config (or the same as this run's MosaicFaults): the
    gossip state (round counter, graph generator) comes back and the run continues bit for bit."""
    gossip = MosaicGossip(fragments=4, peers=2, seed=1)
    callbacks = [gossip] + ([] if faults is None else [MosaicFaults(**faults)])
    module, _ = fit(tmp_path, callbacks, max_steps=12, ckpt_path=checkpoints[0][checkpoint])
    assert gossip.rounds == 12
    expected = checkpoints[1]["faults" if checkpoint.startswith("faults") else "none"]
    assert torch.equal(module.gossip_parameters, expected)


def test_processes_with_other_fault_settings_are_refused(monkeypatch):
    """The gossip's one settings exchange across ranks carries the fault settings (``faults.*``)."""
    import lightning_mosaic.callbacks.gossip as gossip_module

    module = MosaicModule(MLP, 8)
    gossip = MosaicGossip(fragments=4, peers=2, seed=1)
    gossip.faults = MosaicFaults(availability=0.7, seed=1)

    def all_gather_object(everyone, mine, other=None):
        everyone[0] = mine
        everyone[1] = {**mine, **(other or {})}

    monkeypatch.setattr(gossip_module.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(gossip_module.dist, "all_gather_object", all_gather_object)
    gossip._check_same_settings_on_every_rank(module, 2)  # the same everywhere: accepted
    monkeypatch.setattr(
        gossip_module.dist, "all_gather_object", lambda e, m: all_gather_object(e, m, {"faults.availability": 0.9})
    )
    with pytest.raises(
        ValueError, match=r"different gossip settings.*faults.availability=0.9 on rank 1, 0.7 on rank 0"
    ):
        gossip._check_same_settings_on_every_rank(module, 2)
    calls = []
    monkeypatch.setattr(
        gossip_module.dist, "all_gather_object", lambda e, m: calls.append(m) or all_gather_object(e, m)
    )
    gossip.faults = MosaicFaults(seed=7)  # no fault: the same as none, whatever the seed
    gossip._check_same_settings_on_every_rank(module, 2)
    gossip.faults = None
    gossip._check_same_settings_on_every_rank(module, 2)
    assert len(calls) == 2 and calls[0] == calls[1]


def test_two_processes_draw_the_faults_of_one_process(tmp_path):
    """Every rank computes the same (stateless) schedule and freezes its own block of nodes: two processes train
    and gossip the nodes of the one-process run, with the same offline nodes in every round."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for world in (1, 2):
        save_dir = tmp_path / f"world{world}"
        command = [
            sys.executable,
            "-m",
            "lightning_mosaic.cli",
            "fit",
            "--config",
            "quickstart",
        ]
        command += ["--trainer.max_steps", "10", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar"]
        command += ["false", "--trainer.logger.init_args.save_dir", str(save_dir)]
        command += ["--faults.availability", "0.7", "--faults.straggler_prob", "0.2", "--faults.seed", "3"]
        if world > 1:
            command += ["--trainer.devices", str(world), "--trainer.strategy", "mosaic"]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        (run,) = (save_dir / "quickstart").glob("version_*")
        (ckpt,) = (run / "checkpoints").glob("*.ckpt")
        checkpoint = torch.load(ckpt, weights_only=False)
        states = checkpoint.get(RANK_STATES_KEY, {"states": [checkpoint]})["states"]
        rows = csv.DictReader((run / "metrics.csv").open())
        offline = {int(r["step"]): float(r["gossip/offline_nodes"]) for r in rows if r.get("gossip/offline_nodes")}
        runs[world] = torch.cat([s["state_dict"]["replicas.flat"] for s in states]), offline
    schedule = NodeFaults(16, availability=0.7, straggler_prob=0.2, seed=3)
    assert runs[2][1] == runs[1][1] == {r - 1: float(schedule.offline(r).sum()) for r in range(1, 11)}
    torch.testing.assert_close(runs[2][0], runs[1][0], rtol=1e-5, atol=1e-6)
