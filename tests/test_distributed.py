"""Multi-process Mosaic Learning on real gloo process groups over loopback (2 and 3 CPU processes).

The sharded runs must give the single-process parameters and metrics; the one-node-per-process example must gossip;
a rank that dies or hangs, or starts with other settings, must make the others fail with a clear error.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Only pure modules at import time: spawned workers re-import this file, and Lightning takes seconds to import.
from lightning_mosaic.distributed import ShardedMixer, node_bounds
from lightning_mosaic.gossip import FragmentGossip, mix_received_
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = RECIPES_DIR / "quickstart.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- pure parts ---------------------------------------------------------------------------------------------------


def test_node_bounds_are_balanced_blocks():
    assert node_bounds(16, 2) == [0, 8, 16]
    assert node_bounds(16, 3) == [0, 5, 10, 16]
    assert node_bounds(5, 5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"world_size must be an integer in \[1, 4\].*at least one of the num_nodes=4"):
        node_bounds(4, 5)


def test_the_strategy_says_which_nodes_a_process_holds():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from lightning_mosaic.distributed import local_nodes
    from lightning_mosaic.distributed.strategy import MosaicStrategy

    blocks = [MosaicStrategy.node_block(SimpleNamespace(world_size=3, global_rank=r), 16) for r in range(3)]
    assert blocks == [range(0, 5), range(5, 10), range(10, 16)]
    assert local_nodes(None, 7) == range(7)
    assert local_nodes(SimpleNamespace(world_size=1), 7) == range(7)
    mosaic = MosaicStrategy()
    assert local_nodes(SimpleNamespace(world_size=1, strategy=mosaic), 7) == range(7)
    ddp = SimpleNamespace(world_size=2, strategy=DDPStrategy())
    with pytest.raises(ValueError, match=r"7 nodes over 2 processes need Trainer\(strategy='mosaic'\).*DDPStrategy"):
        local_nodes(ddp, 7)


def test_the_trainer_is_checked_before_any_process_starts():
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, TorchElasticEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    from lightning_mosaic.distributed.strategy import MosaicStrategy, check_trainer, launches_the_processes

    def trainer(strategy, world=2):
        strategy.cluster_environment = LightningEnvironment()
        strategy.cluster_environment.set_world_size(world)  # what Trainer sets at construction
        return SimpleNamespace(world_size=world, global_rank=0, strategy=strategy)

    check_trainer(trainer(MosaicStrategy()), 16, use_distributed_sampler=False)
    check_trainer(SimpleNamespace(world_size=1, strategy=None), 16, use_distributed_sampler=True)
    with pytest.raises(ValueError, match=r"16 nodes over 2 processes need Trainer\(strategy='mosaic'\)"):
        check_trainer(trainer(DDPStrategy()), 16, use_distributed_sampler=False)
    with pytest.raises(ValueError, match=r"world_size must be an integer in \[1, 2\].*num_nodes=2"):
        check_trainer(trainer(MosaicStrategy(), world=3), 2, use_distributed_sampler=False)
    for world in (1, 2):  # one process too: Lightning wraps the loaders of any DDP-like strategy
        with pytest.raises(ValueError, match=r"needs Trainer\(use_distributed_sampler=False\)"):
            check_trainer(trainer(MosaicStrategy(), world), 16, use_distributed_sampler=True)

    assert launches_the_processes(SimpleNamespace(world_size=1, strategy=None))
    assert launches_the_processes(trainer(MosaicStrategy()))  # Lightning starts the others from this process
    elastic = SimpleNamespace(world_size=2, strategy=SimpleNamespace(cluster_environment=TorchElasticEnvironment()))
    assert not launches_the_processes(elastic)  # torchrun started every process


def test_a_multi_process_checkpoint_is_refused_in_one_process():
    from lightning_mosaic.distributed.strategy import RANK_STATES_KEY, check_single_process_checkpoint

    check_single_process_checkpoint({"state_dict": {}})
    with pytest.raises(ValueError, match=r"holds the nodes of 2 process\(es\), this run has 1"):
        check_single_process_checkpoint({RANK_STATES_KEY: {"world_size": 2, "states": []}})


def test_strategy_is_registered_and_validates_timeout():
    from lightning.pytorch.strategies import StrategyRegistry

    from lightning_mosaic.distributed.strategy import MosaicStrategy

    assert "mosaic" in StrategyRegistry and "mosaic_spawn" in StrategyRegistry
    assert MosaicStrategy(timeout=12).timeout_s == 12.0
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        MosaicStrategy(timeout=0)


def _mix_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    # (fragmentation, drop_prob, an isolated NaN node, n, d, K): the last is above the dense-draw limit (K n^2 > 2^22)
    cases = [
        ("random", 0.0, False, 10, 300, 4),
        ("contiguous", 0.3, False, 10, 300, 4),
        ("random", 0.2, True, 10, 300, 4),
        ("random", 0.1, True, 300, 256, 64),
    ]
    for fragmentation, drop_prob, with_offline, n, d, fragments in cases:
        peers = 3
        params = torch.randn(n, d, generator=torch.Generator().manual_seed(7))
        single = FragmentGossip([d], n, fragments, peers, fragmentation=fragmentation, seed=3, drop_prob=drop_prob)
        sharded = FragmentGossip([d], n, fragments, peers, fragmentation=fragmentation, seed=3, drop_prob=drop_prob)
        bounds = node_bounds(n, world)
        mixer = ShardedMixer(bounds, rank, sharded.fragmentation, peers)
        expected, local = params.clone(), params[bounds[rank] : bounds[rank + 1]].clone()
        stats = []
        for round_ in range(4):
            offline = None
            if with_offline and round_ == 1:  # node 1 holds a NaN and is isolated for this round
                offline = torch.zeros(n, dtype=torch.bool)
                offline[1] = True
                expected[1, 0] = float("nan")
                if bounds[rank] <= 1 < bounds[rank + 1]:
                    local[1 - bounds[rank], 0] = float("nan")
            single.round_(expected, offline)
            stats.append(mixer.mix_(local, sharded.next_graphs(offline), offline))
            if offline is not None:  # repair node 1 so later rounds stay finite, the same way everywhere
                expected[1, 0] = 0.0
                if bounds[rank] <= 1 < bounds[rank + 1]:
                    local[1 - bounds[rank], 0] = 0.0
        results[f"{fragmentation}-{drop_prob}-{with_offline}-{n}"] = {
            "local": local,
            "expected": expected[bounds[rank] : bounds[rank + 1]],
            "sent": [s.values_sent for s in stats],
            "ideal": [s.ideal_values_sent for s in stats],
        }
    results.update(_weighted_cases(rank, world))
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _bounded_weights(receivers: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random (K, n, s) float64 weights below 1 / (1 + the receiver's in-degree): every receiver's sum stays below 1."""
    k, n, s = receivers.shape
    flat = receivers.reshape(k, -1)
    in_degree = torch.zeros(k, n, dtype=torch.float64).scatter_add_(1, flat, torch.ones(k, n * s, dtype=torch.float64))
    return torch.rand(k, n, s, generator=generator, dtype=torch.float64) / (1 + in_degree.gather(1, flat).view(k, n, s))


def _weighted_cases(rank: int, world: int) -> dict:
    """Weighted rounds (D-PSGD): sharded ``ShardedMixer.mix_`` with ``graphs.weights`` against one process's
    weighted round (:func:`mix_received_` on all rows), on random graphs with drops and an isolated NaN node, and on
    a static irregular graph with Metropolis-Hastings weights and padding entries (delivered False, receiver =
    sender)."""
    n, d = 10, 300
    bounds = node_bounds(n, world)
    lo, hi = bounds[rank], bounds[rank + 1]
    results = {}
    # a path 0 - 1 - ... - 9 plus chords 0 - 5 and 2 - 7: degrees 2, 3, 3, 2, 2, 3, 2, 3, 2, 1
    edges = [(i, i + 1) for i in range(n - 1)] + [(0, 5), (2, 7)]
    nbrs = [sorted({b for a, b in edges if a == i} | {a for a, b in edges if b == i}) for i in range(n)]
    width = max(len(x) for x in nbrs)
    path_receivers = torch.arange(n).view(n, 1).repeat(1, width)
    path_weights = torch.zeros(n, width, dtype=torch.float64)
    for i in range(n):
        for r, j in enumerate(nbrs[i]):
            path_receivers[i, r] = j
            path_weights[i, r] = 1.0 / (1 + max(len(nbrs[i]), len(nbrs[j])))
    for case in ("random", "path"):
        fragments, peers = 4, 3
        params = torch.randn(n, d, generator=torch.Generator().manual_seed(7))
        single = FragmentGossip([d], n, fragments, peers, seed=3, drop_prob=0.2)
        sharded = FragmentGossip([d], n, fragments, peers, seed=3, drop_prob=0.2)
        mixer = ShardedMixer(bounds, rank, sharded.fragmentation, peers)
        expected, local, el = params.clone(), params[lo:hi].clone(), params.clone()
        for round_ in range(4):
            offline = None
            if case == "random" and round_ == 1:  # node 1 holds a NaN and is isolated for this round
                offline = torch.zeros(n, dtype=torch.bool)
                offline[1] = True
                expected[1, 0] = el[1, 0] = float("nan")
                if lo <= 1 < hi:
                    local[1 - lo, 0] = float("nan")
            graphs = [gossip.next_graphs(offline) for gossip in (single, sharded)]
            if case == "random":  # the same weights on every rank
                weights = _bounded_weights(graphs[0].receivers, torch.Generator().manual_seed(round_))
                graphs = [g._replace(weights=weights) for g in graphs]
            else:  # the static graph for every fragment; padding is never delivered, some edges are lost
                receivers = path_receivers.expand(fragments, n, width).clone()
                delivered = (receivers != torch.arange(n).view(1, n, 1)) & (
                    torch.rand(receivers.shape, generator=torch.Generator().manual_seed(round_)) >= 0.2
                )
                weights = path_weights.expand(fragments, n, width).clone()
                graphs = [graphs[0]._replace(receivers=receivers, delivered=delivered, weights=weights)] * 2
            receivers, delivered, weights = graphs[0]
            mix_received_(expected, receivers, delivered, single.fragmentation, backend="torch", weights=weights)
            mix_received_(el, receivers, delivered, single.fragmentation, backend="torch")  # the same graphs, EL
            mixer.mix_(local, graphs[1], offline)
            if offline is not None:  # repair node 1 so later rounds stay finite, the same way everywhere
                expected[1, 0] = el[1, 0] = 0.0
                if lo <= 1 < hi:
                    local[1 - lo, 0] = 0.0
        results[f"weighted-{case}"] = {"local": local, "expected": expected[lo:hi], "el": el[lo:hi]}
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_mixing_equals_single_process_mixing(tmp_path, world):
    mp.start_processes(_mix_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, start_method="spawn")
    for rank in range(world):
        for case, r in torch.load(tmp_path / f"rank{rank}.pt").items():
            assert torch.isfinite(r["local"]).all(), case  # the isolated NaN never reached anyone
            torch.testing.assert_close(r["local"], r["expected"], rtol=1e-6, atol=1e-6, msg=case)
            if case.startswith("weighted"):  # a weighted round is not the EL round of the same graphs
                assert not torch.allclose(r["local"], r["el"], rtol=1e-3, atol=1e-3), case
                continue
            assert all(0 < s <= i for s, i in zip(r["sent"], r["ideal"])), (case, r["sent"], r["ideal"])


# -- the CLI's main job over 1, 2 and 3 processes --------------------------------------------------------------------


CHECKPOINT_EVERY_20_STEPS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        every_n_train_steps: 20
        save_top_k: -1
"""


def _fit_args(save_dir: Path, steps: int) -> list[str]:
    extra = save_dir.parent / f"{save_dir.name}-checkpoints.yaml"
    extra.write_text(CHECKPOINT_EVERY_20_STEPS)
    return [
        "fit",
        "--config",
        str(QUICKSTART),
        "--config",
        str(extra),
        "--trainer.max_steps",
        str(steps),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.enable_progress_bar",
        "false",
    ]


def _run_processes(args: list[str], world: int, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_mosaic.cli", *args]
    if world > 1:
        command += ["--trainer.devices", str(world), "--trainer.strategy", "mosaic"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def _run_dir(save_dir: Path) -> Path:
    (run,) = sorted((save_dir / "quickstart").glob("version_*"))
    return run


def _checkpoint(run: Path, step: int) -> Path:
    (path,) = (run / "checkpoints").glob(f"*step={step}.ckpt")
    return path


def _parameters(run: Path, step: int) -> torch.Tensor:
    """All n nodes' parameters in the checkpoint of ``step`` (assembled from every process's part)."""
    from lightning_mosaic.distributed.strategy import RANK_STATES_KEY

    checkpoint = torch.load(_checkpoint(run, step), weights_only=False)
    if RANK_STATES_KEY not in checkpoint:
        return checkpoint["state_dict"]["replicas.flat"]
    states = checkpoint[RANK_STATES_KEY]["states"]
    return torch.cat([s["state_dict"]["replicas.flat"] for s in states])


def _logged(run: Path, name: str) -> dict[int, float]:
    """``name``'s value at every logged training step of the run's ``metrics.csv`` (rank 0's logger)."""
    rows = csv.DictReader((run / "metrics.csv").open())
    return {int(r["step"]): float(r[name]) for r in rows if r.get("gossip/round")}


SUMMARY_KEYS = ("node_acc_mean", "node_acc_std", "avg_model_acc", "val_loss", "consensus_distance", "rounds")


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """The reference: 40 quickstart rounds in one process, checkpointed at rounds 20 and 40."""
    from lightning_mosaic.cli import main

    save_dir = tmp_path_factory.mktemp("single") / "runs"
    main(_fit_args(save_dir, 40))
    return _run_dir(save_dir)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_run_equals_single_process_run(tmp_path, world, single_process_run):
    steps = 40 if world == 2 else 20
    result = _run_processes(_fit_args(tmp_path / "runs", steps), world, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    run = _run_dir(tmp_path / "runs")
    for step in (20, steps):
        torch.testing.assert_close(_parameters(run, step), _parameters(single_process_run, step), rtol=1e-5, atol=1e-6)
    # what rank 0 logs is over all n nodes: the single-process values, the training loss included (with 3
    # processes the blocks hold 5, 5 and 6 nodes, so a mean of the processes' means would differ)
    for name in ("gossip/consensus_distance", "train/loss"):
        logged, expected_log = _logged(run, name), _logged(single_process_run, name)
        assert len(logged) == steps // 10 and all(step in expected_log for step in logged), name
        for step, value in logged.items():
            assert value == pytest.approx(expected_log[step], rel=1e-5), (name, step)
    if world == 2:
        summary = json.loads((run / "summary.json").read_text())
        expected = json.loads((single_process_run / "summary.json").read_text())
        for key in SUMMARY_KEYS:
            assert summary[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
        assert not list(tmp_path.rglob("*.tmp"))

        # resume mid-epoch (the digits epoch is 50 steps) with the same world size: bit for bit the same run
        resume = [*_fit_args(tmp_path / "resumed", 40), "--ckpt_path", str(_checkpoint(run, 20))]
        result = _run_processes(resume, world, tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        assert torch.equal(_parameters(_run_dir(tmp_path / "resumed"), 40), _parameters(run, 40))

        # another number of processes cannot continue it (each process's nodes differ)
        other = [*_fit_args(tmp_path / "other", 40), "--ckpt_path", str(_checkpoint(run, 20))]
        result = _run_processes(other, 1, tmp_path)
        assert result.returncode != 0
        assert "holds the nodes of 2 process(es), this run has 1" in result.stderr


# -- a plain LightningModule, one node per process (the shipped example) -------------------------------------------


def test_one_node_per_process_example_gossips(tmp_path):
    command = [sys.executable, str(ROOT / "examples" / "one_node_per_process.py")]
    command += ["--devices", "2", "--max-steps", "100", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (metrics_file,) = tmp_path.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    gossip = [r for r in rows if r.get("gossip/round")]
    assert max(float(r["gossip/round"]) for r in gossip) == 100
    d = 64 * 128 + 128 + 128 * 10 + 10
    # n = 2, s = 1: each process sends every fragment once to the other, d float32 values per round in all
    assert {float(r["gossip/bytes_sent_per_rank"]) for r in gossip} == {4.0 * d}
    assert {float(r["gossip/values_sent_per_node"]) for r in gossip} == {float(d)}
    # ... and both nodes then hold the average of the two: consensus after every round, although they train apart
    assert max(float(r["gossip/consensus_distance"]) for r in gossip) < 1e-10
    accuracy = [float(r["val/node_acc_mean"]) for r in rows if r.get("val/node_acc_mean")]
    assert len(accuracy) == 2 and accuracy[-1] > 0.6  # validation at steps 50 and 100; chance is 0.1


# -- failures -----------------------------------------------------------------------------------------------------


def _launch_worker(*args: str, timeout: float) -> list[subprocess.CompletedProcess]:
    """Start the 2 ranks of tests/distributed_worker.py the way torchrun does (environment variables)."""
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
        command = [sys.executable, str(ROOT / "tests" / "distributed_worker.py"), *args]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for rank, process in enumerate(processes):
        try:  # rank 0 must end by itself; the others get a few seconds more (a rank told to hang never ends)
            out, err = process.communicate(timeout=timeout if rank == 0 else 15)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_rank_that_dies_or_hangs_fails_the_others_naming_it_and_the_round(fault):
    rank0, rank1 = _launch_worker("--fault", fault, "--fault-step", "5", "--timeout", "5", timeout=240)
    assert rank0.returncode != 0
    # rank 0's next collective after rank 1 stopped in step 5: the all-reduce of train/loss in step 6's training step
    # (before that step's gossip round)
    assert (
        "CommunicationError: rank 0 of 2: the all-reduce of train/loss at global step 5 failed: rank(s) [1] did not"
        in rank0.stderr
    ), rank0.stderr[-3000:]
    if fault == "die":
        assert rank1.returncode == 3


def test_lightning_may_not_inject_a_distributed_sampler():
    for result in _launch_worker("--use-distributed-sampler", timeout=240):
        assert result.returncode != 0
        assert "ValueError: Trainer(strategy='mosaic') needs Trainer(use_distributed_sampler=False)" in result.stderr


def test_ranks_started_with_different_settings_are_refused():
    results = _launch_worker("--fragments", "4", "--fragments-on-rank-1", "2", timeout=240)
    for result in results:
        assert result.returncode != 0
        assert "started with different gossip settings" in result.stderr
        assert "fragments=2 on rank 1, 4 on rank 0" in result.stderr


# -- a user's LightningModule as the nodes, spread over processes ----------------------------------------------------


def test_a_lightning_module_as_nodes_over_two_processes_equals_one_process(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", ROOT / "tests" / "distributed_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = tmp_path / "single"
    single.mkdir()
    expected = worker.lightning_module_run(1, single)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    results = _launch_worker("--lightning-module", str(sharded), timeout=240)
    for result in results:
        assert result.returncode == 0, result.stderr[-4000:]
    rows = torch.cat([torch.load(sharded / f"rows{rank}.pt") for rank in range(2)])
    torch.testing.assert_close(rows, torch.load(single / "rows0.pt"), rtol=1e-5, atol=1e-6)
    assert {"val_acc", "val_acc/node_std", "val_acc/avg_model", "val_loss/node_std"} <= set(expected)
    # the last training step's values are over all 4 nodes too (not over the 2 of a process)
    assert {"fit/train/loss", "fit/train_loss", "fit/train_loss/node_std"} <= set(expected)
    for rank in range(2):
        metrics = torch.load(sharded / f"metrics{rank}.pt")
        assert set(metrics) == set(expected)
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (rank, name)


# -- the backward per node in a multi-process run --------------------------------------------------------------------


def test_per_node_backward_over_two_processes_gives_the_joint_backward_gradients(tmp_path):
    """2 gloo processes, loop path, accumulation and clipping: on every rank the per-node backward
    (``backward_chunk="auto"``) gives the joint backward's gradients bit for bit at every step, and both equal one
    process's to float rounding (as before: the rounds' sums run in another order over processes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", ROOT / "tests" / "distributed_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    worker.gradient_run(1, tmp_path, "all")
    expected = torch.load(tmp_path / "grads_all0.pt")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for result in _launch_worker("--gradients", str(sharded), timeout=240):
        assert result.returncode == 0, result.stderr[-4000:]
    for rank in range(2):
        joint, per_node = (torch.load(sharded / f"grads_{chunk}{rank}.pt") for chunk in ("all", "auto"))
        assert len(joint) == len(per_node) == 4
        assert all(torch.equal(a, b) for a, b in zip(joint, per_node)), rank
    parts = [torch.load(sharded / f"grads_auto{rank}.pt") for rank in range(2)]
    assert len(expected) == 4
    for step, want in enumerate(expected):
        assert want.abs().sum() > 0
        got = torch.cat([part[step] for part in parts])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"step {step}")


# -- fixed graphs: sampled neighbours, and D-PSGD with Metropolis-Hastings weights on an irregular graph ---------------


@pytest.mark.parametrize("case", ["mosaic over a regular graph", "dpsgd on an irregular file graph"])
def test_a_fixed_graph_run_over_two_processes_equals_one_process_and_resumes(tmp_path, case):
    from lightning_mosaic.cli import main

    if case == "mosaic over a regular graph":
        gossip = ["--config", str(CONFIGS_DIR / "gossip" / "mosaic_k8_regular8.yaml"), "--gossip.drop_prob", "0.1"]
    else:  # 16 nodes: a ring with three chords, degrees 2 to 4
        edges = tmp_path / "edges.txt"
        edges.write_text("# ring\n" + "".join(f"{i} {(i + 1) % 16}\n" for i in range(16)) + "0 8\n3 11\n5 12\n")
        gossip = ["--gossip.topology", "file", "--gossip.graph", str(edges), "--gossip.peers", "all"]
    main([*_fit_args(tmp_path / "single", 40), *gossip])
    single = _run_dir(tmp_path / "single")
    result = _run_processes([*_fit_args(tmp_path / "two", 20), *gossip], 2, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    torch.testing.assert_close(
        _parameters(_run_dir(tmp_path / "two"), 20), _parameters(single, 20), rtol=1e-5, atol=1e-6
    )
    summary = json.loads((single / "summary.json").read_text())
    assert summary["graph"]["weights"] == ("el" if case.startswith("mosaic") else "metropolis-hastings")
    assert 0 < summary["spectral_gap"] < 1
    # resume from round 20 in one process: bit for bit the same 40 rounds
    main([*_fit_args(tmp_path / "resumed", 40), *gossip, "--ckpt_path", str(_checkpoint(single, 20))])
    assert torch.equal(_parameters(_run_dir(tmp_path / "resumed"), 40), _parameters(single, 40))
