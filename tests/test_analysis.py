"""The analysis toolkit on cases with known answers, and ``mosaic analyze`` end to end."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_mosaic.analysis import (
    SystemSpec,
    consensus_curves,
    disagreement_basis,
    exact_alpha,
    gram_spectrum,
    make_system,
    mean_confidence_interval,
    mean_decay_rate,
    mixing_moments,
    moments_from_matrices,
    read_consensus_log,
    second_moment_operator,
    second_moment_operator_dense,
    second_moment_radius,
    spectral_radius,
)
from lightning_mosaic.analysis.cli import analyze
from lightning_mosaic.analysis.spectra import MixingMoments, mean_gram_largest
from lightning_mosaic.analysis.systems import mixing_operator
from lightning_mosaic.cli import main
from lightning_mosaic.gossip import FragmentGossip, make_fragmentation, mix, mixing_matrices_from_adjacency


def vec(x: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec of an (n, d) matrix: index c * n + i."""
    return x.T.reshape(-1)


def el_local_distribution(n: int) -> torch.Tensor:
    """Every EL-Local mixing matrix with s = 1 (each node sends to one of the n - 1 others), all equally likely."""
    out = []
    for choice in itertools.product(*[[j for j in range(n) if j != i] for i in range(n)]):
        adjacency = torch.zeros(1, n, n, dtype=torch.float64)
        for sender, receiver in enumerate(choice):
            adjacency[0, receiver, sender] = 1.0
        out.append(mixing_matrices_from_adjacency(adjacency)[0])
    return torch.stack(out)


def test_disagreement_basis_is_orthonormal_complement_of_ones():
    u = disagreement_basis(7)
    assert torch.allclose(u.T @ u, torch.eye(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(u @ u.T, torch.eye(7, dtype=torch.float64) - 1 / 7, atol=1e-12)


@pytest.mark.parametrize("curvature", ["equicorrelated", "random-per-node"])
def test_round_operator_is_the_library_round(curvature):
    """M_t vec(X) equals a gradient step followed by the library's fragment-wise mix (optima 0: no affine part)."""
    system = make_system(6, 5, 0.6, curvature, step_size=0.7)
    gossip = FragmentGossip([5], 6, fragments=3, peers=2, seed=4)
    matrices = gossip.next_matrices(torch.float64)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = mix(system.local_step(x), matrices, gossip.fragmentation)
    assert torch.allclose(system.round_operator(matrices, gossip.fragmentation) @ vec(x), vec(expected), atol=1e-12)


def test_k1_is_the_plain_el_operator():
    """K = 1: M_t = B kron W (one EL mixing matrix for every coordinate), and the second moment is beta rho(B)^2."""
    system = make_system(5, 4, 0.7, "random", step_size=0.5)
    gossip = FragmentGossip([4], 5, fragments=1, peers=2, seed=1)
    (w,) = matrices = gossip.next_matrices(torch.float64)
    b = system.contraction()[0]
    assert torch.allclose(system.round_operator(matrices, gossip.fragmentation), torch.kron(b, w), atol=1e-12)
    u = disagreement_basis(5)
    assert torch.allclose(
        system.disagreement_operator(matrices, gossip.fragmentation), torch.kron(b, u.T @ w @ u), atol=1e-12
    )
    moments = MixingMoments(alpha=0.3, beta=0.4)
    radius, _, _ = second_moment_radius(system, gossip.fragmentation, moments)
    assert radius == pytest.approx(0.4 * float(torch.linalg.eigvalsh(b).abs().max()) ** 2, rel=1e-10)


def test_n2_deterministic_matrices_by_hand():
    """n = 2, W_k = [[1 - a_k, a_k], [b_k, 1 - b_k]]: on the disagreement W~_k = 1 - a_k - b_k, so with A = I
    (B = (1 - eta) I) and K = d = 2, lambda_max(M^T M) = (1 - eta)^2 max_k (1 - a_k - b_k)^2, and the second-moment
    operator of this deterministic round has spectral radius rho(M~)^2, the same number."""
    eta = 0.4
    system = make_system(2, 2, 0.0, step_size=eta)
    fragmentation = make_fragmentation([2], 2, "contiguous")
    matrices = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]]], dtype=torch.float64)
    m = system.disagreement_operator(matrices, fragmentation)
    assert torch.allclose(m, torch.diag(torch.tensor([0.6 * 0.7, 0.6 * -0.1], dtype=torch.float64)), atol=1e-12)
    assert float(torch.linalg.matrix_norm(m, ord=2)) ** 2 == pytest.approx((0.6 * 0.7) ** 2)
    dense = second_moment_operator_dense(system, fragmentation, matrices[None])
    assert spectral_radius(dense) == pytest.approx((0.6 * 0.7) ** 2)


def test_el_oracle_has_spectral_radius_one_on_the_consensus_subspace():
    """Doubly stochastic mixing: the consensus block of the mixing operator is the identity (radius 1) and no
    consensus mass leaks to or from the disagreement; EL-Local (row-stochastic only) does move the node average."""
    n, d = 6, 4
    ones = torch.kron(torch.eye(d, dtype=torch.float64), torch.ones(n, 1, dtype=torch.float64) / math.sqrt(n))
    q = torch.kron(torch.eye(d, dtype=torch.float64), disagreement_basis(n))
    for seed in range(3):
        gossip = FragmentGossip([d], n, fragments=2, peers=2, topology="el-oracle", seed=seed)
        mixing = mixing_operator(gossip.next_matrices(torch.float64), gossip.fragmentation)
        assert torch.allclose(ones.T @ mixing @ ones, torch.eye(d, dtype=torch.float64), atol=1e-12)
        assert spectral_radius(ones.T @ mixing @ ones) == pytest.approx(1.0)
        assert torch.allclose(ones.T @ mixing @ q, torch.zeros(d, d * (n - 1), dtype=torch.float64), atol=1e-12)
    local = FragmentGossip([d], n, fragments=2, peers=1, topology="el-local", seed=0)
    mixing = mixing_operator(local.next_matrices(torch.float64), local.fragmentation)
    assert torch.allclose(ones.T @ mixing @ ones, torch.eye(d, dtype=torch.float64), atol=1e-12)  # W 1 = 1 still
    assert not torch.allclose(ones.T @ mixing @ q, torch.zeros(d, d * (n - 1), dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize(
    ("curvature", "correlation"), [("equicorrelated", 0.0), ("equicorrelated", 0.6), ("random", 0.8)]
)
@pytest.mark.parametrize("fragments", [1, 2, 4])
def test_reduced_second_moment_equals_brute_force(curvature, correlation, fragments):
    """The d^2 x d^2 reduced operator has the spectral radius of the exact (d (n - 1))^2 operator E[M~ kron M~],
    computed over the whole EL-Local distribution (n = 3, s = 1: 8 graphs per fragment, independent fragments)."""
    n, d = 3, 4
    system = make_system(n, d, correlation, curvature, step_size=0.7, seed=2)
    fragmentation = make_fragmentation([d], fragments, "random", seed=3)
    single = el_local_distribution(n)
    alpha, beta, _ = moments_from_matrices(single, torch.full((len(single),), 1.0 / len(single), dtype=torch.float64))
    assert alpha == pytest.approx(exact_alpha("el-local", n, 1), abs=1e-12)
    rounds = torch.stack([single[list(c)] for c in itertools.product(range(len(single)), repeat=fragments)])
    dense = second_moment_operator_dense(system, fragmentation, rounds)
    reduced = second_moment_operator(system.contraction()[0], fragmentation.assignment, alpha, beta)
    assert spectral_radius(reduced) == pytest.approx(spectral_radius(dense), rel=1e-9)
    radius, low, high = second_moment_radius(system, fragmentation, MixingMoments(alpha, beta))
    assert radius == low == high == pytest.approx(spectral_radius(dense), rel=1e-9)
    m = system.disagreement_operator(rounds, fragmentation)
    mean_gram = torch.einsum("rab,rac->bc", m, m) / len(rounds)
    exact = mean_gram_largest(system, MixingMoments(alpha, beta))
    assert float(torch.linalg.eigvalsh(mean_gram)[-1]) == pytest.approx(exact, rel=1e-9)


def test_uncorrelated_parameters_make_the_second_moment_independent_of_k():
    system = make_system(10, 8, 0.0, step_size=0.5)
    moments = MixingMoments(alpha=0.3, beta=0.32)
    radii = [
        second_moment_radius(system, make_fragmentation([8], k, "random", seed=k), moments)[0] for k in (1, 2, 4, 8)
    ]
    assert radii == pytest.approx([0.32 * 0.25] * 4, rel=1e-10)


def test_moments_alpha_closed_form_and_oracle_beta_equals_alpha():
    local = mixing_moments("el-local", 12, 3, draws=4000, seed=0)
    sampled = torch.stack([FragmentGossip([1], 12, 1, 3, seed=s).next_matrices(torch.float64)[0] for s in range(400)])
    alpha_hat, _, _ = moments_from_matrices(sampled)
    assert abs(alpha_hat - local.alpha) < 0.02  # 400 draws; exact value 0.2545...
    low, high = local.beta_interval(0.999)
    assert low < local.beta < high and local.draws == 4000
    oracle = [FragmentGossip([1], 8, 1, 3, "el-oracle", seed=s).next_matrices(torch.float64)[0] for s in range(20)]
    alpha, beta, _ = moments_from_matrices(torch.stack(oracle), torch.full((20,), 1 / 20, dtype=torch.float64))
    assert alpha == pytest.approx(exact_alpha("el-oracle", 8, 3)) and beta == pytest.approx(alpha)
    assert mixing_moments("el-oracle", 8, 3) == MixingMoments(
        exact_alpha("el-oracle", 8, 3), exact_alpha("el-oracle", 8, 3)
    )


def test_gram_spectrum_matches_dense_svd():
    system = make_system(5, 4, 0.5, "random-per-node", step_size=0.7, heterogeneity=1.0)
    gossips = [FragmentGossip([4], 5, fragments=2, peers=2, seed=1), FragmentGossip([4], 5, 2, 2, seed=2)]
    spectrum = gram_spectrum(system, gossips, 3)
    replay = [FragmentGossip([4], 5, fragments=2, peers=2, seed=1), FragmentGossip([4], 5, 2, 2, seed=2)]
    grams = []
    for gossip in replay:
        for _ in range(3):
            m = system.disagreement_operator(gossip.next_matrices(torch.float64), gossip.fragmentation)
            grams.append(m.T @ m)
    dense = [float(torch.linalg.eigvalsh(g)[-1]) for g in grams]
    assert spectrum.largest == pytest.approx(dense, rel=1e-8)
    assert spectrum.largest_of_mean == pytest.approx(float(torch.linalg.eigvalsh(torch.stack(grams).mean(0))[-1]))


def test_reduced_radius_matches_monte_carlo_operator_of_library_draws():
    """At n = 5 (not enumerated) the reduced radius agrees with the dense operator averaged over the library's
    own EL-Local draws (Monte Carlo, 3,000 rounds; measured 0.1859 against 0.1856)."""
    system = make_system(5, 4, 0.8, "random", step_size=0.5, seed=1)
    gossip = FragmentGossip([4], 5, fragments=2, peers=2, seed=0)
    rounds = torch.stack([gossip.next_matrices(torch.float64) for _ in range(3000)])
    dense = spectral_radius(second_moment_operator_dense(system, gossip.fragmentation, rounds))
    radius, _, _ = second_moment_radius(system, gossip.fragmentation, mixing_moments("el-local", 5, 2, draws=20000))
    assert radius == pytest.approx(dense, rel=0.02)


def test_consensus_decay_matches_second_moment_radius_and_is_deterministic():
    """With one shared optimum the mean consensus distance decays at the second-moment spectral radius."""
    system = make_system(16, 4, 0.8, "random", step_size=0.5, seed=1)
    seeds = range(32)
    curves = consensus_curves(system, 2, 20, seeds, peers=3)
    assert np.array_equal(curves[:3], consensus_curves(system, 2, 20, range(3), peers=3))
    moments = mixing_moments("el-local", 16, 3, draws=2000)
    radii = [
        second_moment_radius(system, FragmentGossip([4], 16, 2, 3, seed=s).fragmentation, moments)[0] for s in seeds
    ]
    rate, low, high = mean_decay_rate(curves, 10, 20)
    assert low <= rate <= high
    assert min(radii) * 0.9 <= rate <= max(radii) * 1.1


def test_mean_confidence_interval_known_answer():
    mean, low, high = mean_confidence_interval(np.array([[1.0], [2.0], [3.0]]))
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(3), s = 1
    assert (mean[0], low[0], high[0]) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    with pytest.raises(ValueError, match="at least 2 runs"):
        mean_confidence_interval(np.array([[1.0]]))


HEADER = "epoch,gossip/consensus_distance,gossip/round,gossip/values_sent_per_node,step,train/loss"


def write_log(path, values):
    lines = [HEADER] + [f"0,{v},{t + 1}.0,14430.0,{t},2.0" for t, v in enumerate(values)]
    lines += ["0,,,,5,", f"0,{values[-1]},,,{len(values) - 1},"]  # a row of other metrics; a validation row
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_consensus_log_and_its_errors(tmp_path):
    rounds, values = read_consensus_log(write_log(tmp_path / "a" / "metrics.csv", [0.5, 0.25]))
    assert rounds.tolist() == [1.0, 2.0] and values.tolist() == [0.5, 0.25]
    bad = tmp_path / "bad.csv"
    bad.write_text("step,train/loss\n0,1.0\n")
    with pytest.raises(ValueError, match="bad.csv has no column 'gossip/consensus_distance'"):
        read_consensus_log(bad)
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        read_consensus_log(tmp_path / "missing.csv")


def test_mosaic_analyze_end_to_end_writes_png_and_csv(tmp_path, capsys):
    out = tmp_path / "out"
    logs = {
        f"K={k}": [
            str(write_log(tmp_path / f"k{k}s{s}" / "metrics.csv", [1.0 / (k + s + t) for t in range(6)]))
            for s in range(2)
        ]
        for k in (1, 2)
    }
    config = tmp_path / "analysis.yaml"
    config.write_text(
        "num_nodes: 6\ndim: 4\npeers: 2\nfragments: [1, 4]\n"
        "systems:\n  - {curvature: equicorrelated, correlation: 0.0}\n  - {curvature: random, correlation: 0.9}\n"
        "draws: 3\nseeds: 3\nrounds: 6\nmoment_draws: 200\n"
    )
    main(["analyze", "--config", str(config), "--output_dir", str(out), "--training_logs", str(logs).replace("'", '"')])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "fig2_spectra.png",
            "fig3_consensus.png",
            "eigenvalues.csv",
            "spectra_summary.csv",
            "consensus.csv",
            "mixing_moments.json",
            "training_consensus.png",
            "training_consensus.csv",
        ]
    )
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "eigenvalues.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 3 and all(float(r["lambda_max"]) > 0 for r in rows)
    with (out / "spectra_summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    uncorrelated = [float(r["second_moment_radius"]) for r in summary if r["correlation"] == "0.0"]
    assert uncorrelated[0] == pytest.approx(uncorrelated[1])  # A = I: K-independent (exact)
    with (out / "consensus.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 2 * 7
    with (out / "training_consensus.csv").open() as handle:
        training = list(csv.DictReader(handle))
    assert len(training) == 2 * 6 and {r["runs"] for r in training} == {"2"}
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fragments", "[1, 9]", "--dim", "4"], "fragments (K) must be an integer in [1, 4] (at most d = 4), got 9"),
        (["--draws", "many"], "draws"),
        (["--pears", "3"], "unrecognized arguments: --pears 3"),
        (["--training_logs", '{"K=1": ["/nonexistent/metrics.csv"]}', "--systems", "[]"], "/nonexistent/metrics.csv"),
    ],
)
def test_bad_argument_is_one_line_before_any_write(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--output_dir", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mosaic: error: ") and message in err[0]
    assert not out.exists()


def test_shipped_analysis_config_parses():

    from lightning_mosaic.analysis.cli import build_parser
    from lightning_mosaic.recipes import CONFIGS_DIR

    (config,) = sorted((CONFIGS_DIR / "analysis").glob("*.yaml"))
    parsed = build_parser().parse_args(["--config", str(config)])
    assert (parsed.num_nodes, parsed.dim, parsed.fragments) == (50, 16, [1, 2, 4, 8, 16])
    assert len(parsed.systems) == 4


def test_mosaic_analyze_on_a_ring_gives_the_exact_radius_of_its_metropolis_hastings_round(tmp_path, capsys):
    """D-PSGD on a ring (``--topology ring --peers all``): the rounds draw nothing, so the mean-square rate is
    rho(M~)^2 with M~ = B kron W~, W the ring's Metropolis-Hastings matrix (1/3 on the diagonal and both
    neighbours), built here by hand; lambda_max(E[M^T M]) = lambda_max(M~^T M~) = the same number (M~ symmetric)."""
    n, d, eta, rho = 12, 4, 0.5, 0.6
    out = tmp_path / "ring"
    main(
        ["analyze", "--topology", "ring", "--peers", "all", "--num_nodes", str(n), "--dim", str(d),
         "--fragments", "[1, 2, 4]", "--systems", f'[{{"curvature": "equicorrelated", "correlation": {rho}}}]',
         "--step_size", str(eta), "--draws", "2", "--seeds", "2", "--rounds", "4", "--output_dir", str(out)]
    )  # fmt: skip
    assert {p.name for p in out.iterdir()} >= {"spectra_summary.csv", "mixing_moments.json", "fig2_spectra.png"}
    w = np.eye(n) / 3
    for i in range(n):
        w[i, (i + 1) % n] = w[i, (i - 1) % n] = 1 / 3
    b = np.eye(d) - eta * make_system(n, d, rho, step_size=eta).curvature[0].numpy()
    expected = float(np.abs(np.linalg.eigvals(np.kron(b, w - 1 / n))).max()) ** 2  # W - 11^T / n: W on 1^perp
    assert expected == pytest.approx(
        (np.abs(np.linalg.eigvalsh(b)).max() * (1 + 2 * math.cos(2 * math.pi / n)) / 3) ** 2
    )
    with (out / "spectra_summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert [int(r["fragments"]) for r in summary] == [1, 2, 4]
    for r in summary:
        assert r["second_moment_radius_method"] == r["lambda_max_of_mean_gram_method"] == "exact-deterministic"
        assert float(r["second_moment_radius"]) == pytest.approx(expected, rel=1e-9)
        assert float(r["second_moment_radius_low"]) == pytest.approx(float(r["second_moment_radius_high"]), rel=1e-12)
        assert float(r["lambda_max_of_mean_gram"]) == pytest.approx(expected, rel=1e-9)
        assert float(r["lambda_max_mean"]) == pytest.approx(expected, rel=1e-8)  # every draw is the same round
        assert r["not_available_reason"] == ""
    moments = json.loads((out / "mixing_moments.json").read_text())
    assert moments["topology"] == "ring" and moments["peers"] == "all" and moments["sampled"] is False
    assert moments["weights_name"] == "metropolis-hastings" and moments["alpha"] is None
    assert moments["spectral_gap"] == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3, abs=1e-9)
    assert moments["methods"]["second_moment_radius"] == "exact-deterministic"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("limit", [0, 10**6])
@pytest.mark.parametrize(("topology", "peers"), [("one-peer-exponential", 1), ("exponential", "all")])
def test_deterministic_moments_dense_and_arpack_agree_with_the_brute_force(monkeypatch, limit, topology, peers):
    """The exact rate of a fixed round sequence: rho of one period's product M~_{P-1} ... M~_0, to the power 2 / P
    (P = tau = 3 for one-peer exponential on 6 nodes), equal to the spectral radius of the dense second-moment
    operator of the period (E over its rounds of the product's kron square) to the 1 / P; both solvers."""
    from lightning_mosaic.analysis import spectra

    monkeypatch.setattr(spectra, "DENSE_ROUND_LIMIT", limit)
    system = make_system(6, 3, 0.7, "random", step_size=0.5, seed=1)
    gossip = FragmentGossip([3], 6, 2, peers, topology, seed=0)
    rounds = spectra.deterministic_rounds(gossip)
    assert gossip.rounds == 0 and rounds.shape[0] == (3 if topology == "one-peer-exponential" else 1)
    operators = system.disagreement_operator(rounds, gossip.fragmentation)
    product = operators[0]
    for operator in operators[1:]:
        product = operator @ product
    first = second_moment_operator_dense(system, gossip.fragmentation, rounds[:1])  # one round: E = the round
    assert torch.allclose(first, torch.kron(operators[0], operators[0]), atol=1e-14)
    period = torch.kron(product, product)  # E[M kron M] of the deterministic period
    radius, mean_gram = spectra.deterministic_moments(system, gossip)
    assert radius == pytest.approx(spectral_radius(period) ** (1 / rounds.shape[0]), rel=1e-8)
    gram = torch.einsum("rab,rac->bc", operators, operators) / rounds.shape[0]
    assert mean_gram == pytest.approx(float(torch.linalg.eigvalsh(gram)[-1]), rel=1e-8)


def regular_round_distribution(gossip: FragmentGossip) -> torch.Tensor:
    """Every EL-rule mixing matrix of one round with s = 1 over ``gossip.graph`` (each node sends to one of its
    neighbours, all equally likely)."""
    graph = gossip.graph
    choices = [graph.neighbours[i, : int(graph.degrees[i])].tolist() for i in range(graph.num_nodes)]
    adjacency = torch.zeros(math.prod(map(len, choices)), graph.num_nodes, graph.num_nodes, dtype=torch.float64)
    for r, choice in enumerate(itertools.product(*choices)):
        for sender, receiver in enumerate(choice):
            adjacency[r, receiver, sender] = 1.0
    return mixing_matrices_from_adjacency(adjacency)


def test_sampled_regular_graph_gives_a_monte_carlo_mean_gram_within_its_interval_and_no_radius(tmp_path):
    """Peers sampled on a 3-regular graph (s = 1): no exact reduction, so the radius is NaN with the reason, and
    lambda_max(E[M^T M]) = lambda_max(B^T B) lambda_max(E[W~^T W~]) is a Monte Carlo estimate; the brute force
    enumerates all 3^6 rounds of each seed's graph."""
    n, d, seed, seeds = 6, 2, 3, 2
    out = tmp_path / "regular"
    result = analyze(
        output_dir=str(out), systems=[SystemSpec("random", 0.5)], fragments=[1, 2], num_nodes=n, dim=d, peers=1,
        topology="regular", degree=3, draws=2, seeds=seeds, rounds=4, moment_draws=4000, seed=seed,
    )  # fmt: skip
    basis = disagreement_basis(n)
    grams = []
    for s in range(seed, seed + seeds):
        single = basis.T @ regular_round_distribution(FragmentGossip([d], n, 1, 1, "regular", degree=3, seed=s)) @ basis
        grams.append(torch.einsum("rab,rac->bc", single, single) / len(single))
    b = make_system(n, d, 0.5, "random", step_size=0.5, seed=seed).contraction()[0]
    exact = float(torch.linalg.eigvalsh(b.T @ b)[-1]) * float(torch.linalg.eigvalsh(torch.stack(grams).mean(0))[-1])
    with open(result["summary_csv"]) as handle:
        summary = list(csv.DictReader(handle))
    for r in summary:
        assert r["lambda_max_of_mean_gram_method"] == "monte-carlo"
        value, stderr = float(r["lambda_max_of_mean_gram"]), float(r["lambda_max_of_mean_gram_stderr"])
        assert 0 < stderr < 0.05 * value and abs(value - exact) <= 4 * stderr
        assert r["second_moment_radius_method"] == "not-available" and math.isnan(float(r["second_moment_radius"]))
        assert "not node-exchangeable" in r["not_available_reason"]
    moments = json.loads(Path(result["moments_json"]).read_text())
    assert moments["methods"] == {**moments["methods"], "lambda_max_of_mean_gram": "monte-carlo",
                                  "second_moment_radius": "not-available"}  # fmt: skip
    assert moments["gram_largest_draws"] == 4000 and moments["sampled"] is True and moments["weights_name"] == "el"
    gaps = [FragmentGossip([d], n, 1, 1, "regular", degree=3, seed=s).spectral_gap() for s in range(seed, seed + 2)]
    assert moments["spectral_gap"] == pytest.approx(gaps[0]) and moments["spectral_gap_max"] == pytest.approx(max(gaps))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topology", "hypercube"], "topology must be one of ('el-local', 'el-oracle', 'ring'"),
        (["--topology", "ring", "--peers", "3"], "peers (s) = 3 is above the degree of node 0 (2 neighbours)"),
        (["--topology", "torus", "--peers", "all", "--num_nodes", "12", "--shape", "[3, 5]"], "shape (3, 5) gives"),
        (["--topology", "regular", "--peers", "all"], "topology='regular' with peers='all' needs degree"),
        (["--topology", "el-local", "--peers", "all"], "peers='all' (every neighbour) needs a fixed graph topology"),
        (["--topology", "el-local", "--degree", "3"], "degree=3 applies to fixed graph topologies"),
        (["--topology", "ring", "--peers", "all", "--weights", "mean"], "weights must be one of"),
        (["--topology", "ring", "--peers", "1", "--weights", "metropolis-hastings"], "pass weights=None"),
        (["--topology", "file", "--peers", "all", "--graph", "TWO_COMPONENTS"], "disconnected: 2 components"),
        (["--topology", "file", "--peers", "all", "--graph", "/nonexistent/edges.txt"], "cannot read the edge-list"),
    ],
)
def test_bad_topology_options_are_refused_before_any_write(tmp_path, capsys, args, message):
    edges = tmp_path / "two.txt"
    edges.write_text("0 1\n1 2\n2 0\n3 4\n4 5\n5 3\n")
    args = [str(edges) if a == "TWO_COMPONENTS" else a for a in args]
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--output_dir", str(out), "--num_nodes", "6", "--dim", "4", "--fragments", "[1]", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mosaic: error: ") and message in err[0]
    assert not out.exists()
