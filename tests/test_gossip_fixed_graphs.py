"""D-PSGD and Mosaic Learning over fixed graphs through the protocol, the callback, the CLI and a resumed run.

The graphs themselves (neighbour tables, weights, spectral gaps, edge-list errors) are tested in
``tests/test_gossip_graphs.py``; the weighted kernels in ``tests/test_mixing_weighted.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_mosaic.callbacks import MosaicGossip
from lightning_mosaic.cli import run_lightning
from lightning_mosaic.gossip import FragmentGossip
from lightning_mosaic.recipes import CONFIGS_DIR, RECIPES_DIR

QUICKSTART = str(RECIPES_DIR / "quickstart.yaml")


def metropolis_hastings(edges: list[tuple[int, int]], n: int) -> torch.Tensor:
    """The Metropolis-Hastings matrix of an undirected graph, by hand: w_ij = 1 / (1 + max(deg_i, deg_j))."""
    degree = [0] * n
    for u, v in edges:
        degree[u] += 1
        degree[v] += 1
    w = torch.zeros(n, n, dtype=torch.float64)
    for u, v in edges:
        w[u, v] = w[v, u] = 1.0 / (1 + max(degree[u], degree[v]))
    w += torch.diag(1.0 - w.sum(dim=1))
    return w


@pytest.mark.parametrize("kernel", ["index", "dense"])
def test_dpsgd_on_a_ring_is_the_metropolis_hastings_product(kernel):
    n, d = 7, 5
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gossip = FragmentGossip([d], n, 1, "all", "ring", kernel=kernel)
    w = metropolis_hastings([(i, (i + 1) % n) for i in range(n)], n)
    expected = x.clone()
    for _ in range(3):
        expected = w @ expected
        gossip.round_(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)
    assert gossip.weights_name == "metropolis-hastings" and not gossip.sampled


def test_dpsgd_on_an_irregular_file_graph_keeps_the_node_average(tmp_path):
    edges = [(0, 1), (1, 2), (2, 3), (1, 3), (3, 4)]
    path = tmp_path / "graph.txt"
    path.write_text("# a path with a chord\n" + "".join(f"{u} {v}\n" for u, v in edges))
    x = torch.randn(5, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean = x.mean(dim=0)
    gossip = FragmentGossip([40], 5, 4, "all", "file", graph=path)
    expected = metropolis_hastings(edges, 5) @ x
    gossip.round_(x)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)  # each fragment mixed by the same W
    torch.testing.assert_close(x.mean(dim=0), mean, rtol=0, atol=1e-12)


def test_a_static_graph_draws_nothing_and_sampled_peers_are_graph_neighbours():
    static = FragmentGossip([50], 16, 4, "all", "regular", degree=4, seed=3)
    before = static.generator.get_state()
    x = torch.randn(16, 50)
    for _ in range(3):
        static.round_(x)
    assert torch.equal(static.generator.get_state(), before)

    sampled = FragmentGossip([50], 32, 8, 3, "regular", degree=8, seed=3)
    neighbours = sampled.graph.neighbours
    for _ in range(4):
        graphs = sampled.next_graphs()
        assert graphs.receivers.shape == (8, 32, 3) and graphs.weights is None
        for k in range(8):
            for i in range(32):
                chosen = graphs.receivers[k, i].tolist()
                assert len(set(chosen)) == 3 and set(chosen) <= set(neighbours[i].tolist()), (k, i)
    assert sampled.sampled and sampled.weights_name == "el"
    assert sampled.messages_per_node == 3.0 and static.messages_per_node == 4.0


def test_the_fixed_graph_protocol_resumes_exactly():
    def run(rounds: int) -> tuple[torch.Tensor, dict]:
        gossip = FragmentGossip([30], 12, 4, 1, "ring", seed=5, drop_prob=0.2)
        x = torch.arange(12 * 30, dtype=torch.float32).view(12, 30)
        for _ in range(rounds):
            gossip.round_(x)
        return x, gossip.state_dict()

    straight, _ = run(6)
    first, state = run(3)
    resumed = FragmentGossip([30], 12, 4, 1, "ring", seed=5, drop_prob=0.2)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.round_(first)
    assert torch.equal(first, straight)


def test_the_one_peer_exponential_graph_cycles_through_the_powers_of_two():
    gossip = FragmentGossip([8], 8, 2, 1, "one-peer-exponential")
    for t in range(6):
        graphs = gossip.next_graphs()
        assert torch.equal(graphs.receivers[:, :, 0], ((torch.arange(8) + 2 ** (t % 3)) % 8).expand(2, 8))
    x = torch.eye(8, dtype=torch.float64)
    fresh = FragmentGossip([8], 8, 1, 1, "one-peer-exponential")
    for _ in range(3):  # tau = 3 rounds average n = 2^tau nodes exactly
        fresh.round_(x)
    torch.testing.assert_close(x, torch.full((8, 8), 1 / 8, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topology": "el-local", "peers": "all"}, "peers='all' (every neighbour) needs a fixed graph topology"),
        ({"topology": "ring", "peers": 3}, "peers (s) = 3 is above the degree of node 0 (2 neighbours)"),
        (
            {"topology": "regular", "degree": 4, "peers": 2, "weights": "metropolis-hastings"},
            "weights='metropolis-hastings' applies when every neighbour is used",
        ),
        ({"topology": "torus", "peers": "all", "shape": (3, 5)}, "16"),
        ({"topology": "el-local", "peers": 2, "degree": 4}, "degree=4 applies to fixed graph topologies"),
        ({"topology": "regular", "peers": "all"}, "topology='regular' with peers='all' needs degree"),
    ],
)
def test_bad_fixed_graph_settings_are_refused_at_attach(kwargs, message):
    from lightning_mosaic import MosaicModule
    from lightning_mosaic.models import MLP

    module = MosaicModule(MLP(), num_nodes=16)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MosaicGossip(fragments=2, **kwargs).attach(module)


def test_the_complete_graph_is_refused_above_the_dense_limit():
    with pytest.raises(ValueError, match=r"topology='complete' on num_nodes \(n\) = 2049 nodes needs an \(n, n - 1\)"):
        FragmentGossip([10], 2049, 1, "all", "complete")


def test_a_disconnected_graph_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("0 1\n1 2\n2 0\n3 4\n4 5\n5 3\n")
    with pytest.raises(ValueError, match="disconnected: 2 components, the largest has 3 nodes"):
        FragmentGossip([10], 6, 1, "all", "file", graph=path)
    gossip = FragmentGossip([10], 6, 1, "all", "file", graph=path, allow_disconnected=True)
    x = torch.cat([torch.zeros(3, 10), torch.ones(3, 10)])
    gossip.round_(x)
    assert torch.equal(x, torch.cat([torch.zeros(3, 10), torch.ones(3, 10)]))  # the components never mix


def _fit(tmp_path: Path, *extra: str) -> Path:
    run_lightning(
        [
            "fit",
            "--config",
            QUICKSTART,
            *extra,
            "--trainer.max_steps",
            "20",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    (run,) = (tmp_path / "runs" / "quickstart").glob("version_*")
    return run


def test_dpsgd_ring_recipe_records_the_spectral_gap_and_communication(tmp_path):
    run = _fit(tmp_path, "--config", str(CONFIGS_DIR / "gossip" / "dpsgd_ring.yaml"))
    summary = json.loads((run / "summary.json").read_text())
    n = summary["nodes"]
    second = (1 + 2 * math.cos(2 * math.pi / n)) / 3  # the ring's MH eigenvalues (1 + 2 cos(2 pi k / n)) / 3
    assert summary["spectral_gap"] == pytest.approx(1 - max(second, 1 / 3), abs=1e-9)
    assert summary["topology"] == "ring" and summary["fragments"] == 1 and summary["peers"] == "all"
    assert summary["graph"]["weights"] == "metropolis-hastings" and summary["graph"]["max_degree"] == 2
    assert summary["values_sent_per_node_per_round"] == 2 * summary["parameters_per_node"]
    logged = (run / "metrics.csv").read_text()
    assert "gossip/spectral_gap" in logged.splitlines()[0]


def _checkpoint_of(gossip: MosaicGossip) -> dict:
    return {"callbacks": {gossip.state_key: gossip.state_dict()}}


def _attached(module, **kwargs) -> MosaicGossip:
    gossip = MosaicGossip(fragments=2, **kwargs)
    gossip.attach(module)
    return gossip


def test_a_checkpoint_of_another_graph_or_weights_is_refused_and_the_same_graph_anywhere_accepted(
    tmp_path, monkeypatch
):
    from lightning_mosaic import MosaicModule
    from lightning_mosaic.models import MLP

    module = MosaicModule(MLP(), num_nodes=16)
    # the degree defaults to peers: a 4-regular checkpoint cannot continue as a 2-regular run
    saved = _checkpoint_of(_attached(module, topology="regular", degree=4, peers=2))
    with pytest.raises(ValueError, match=r"degree=4 in the checkpoint, 2 here"):
        _attached(module, topology="regular", peers=2).on_load_checkpoint(None, module, saved)
    # Metropolis-Hastings is the default on a graph used whole: giving it is the same run; uniform is not
    ring = _checkpoint_of(_attached(module, topology="ring", peers="all"))
    _attached(module, topology="ring", peers="all", weights="metropolis-hastings").on_load_checkpoint(
        None, module, ring
    )
    with pytest.raises(ValueError, match=r"weights='metropolis-hastings' in the checkpoint, 'uniform' here"):
        _attached(module, topology="ring", peers="all", weights="uniform").on_load_checkpoint(None, module, ring)
    # an edge list: the same file by another path is the same graph; an edited file is refused
    edges = tmp_path / "edges.txt"
    edges.write_text("".join(f"{i} {(i + 1) % 16}\n" for i in range(16)) + "0 8\n")
    monkeypatch.chdir(tmp_path)
    saved = _checkpoint_of(_attached(module, topology="file", graph="edges.txt", peers="all"))
    resumed = _attached(module, topology="file", graph=str(edges), peers="all")
    resumed.on_load_checkpoint(None, module, saved)
    assert resumed._latest_step == 0
    edges.write_text("".join(f"{i} {(i + 1) % 16}\n" for i in range(16)) + "0 9\n")
    with pytest.raises(ValueError, match=r"the file graph itself differs"):
        _attached(module, topology="file", graph="edges.txt", peers="all").on_load_checkpoint(None, module, saved)
    directed = _checkpoint_of(_attached(module, topology="file", graph="edges.txt", peers="all", directed=True))
    with pytest.raises(ValueError, match=r"directed=True in the checkpoint, False here"):
        _attached(module, topology="file", graph="edges.txt", peers="all").on_load_checkpoint(None, module, directed)
