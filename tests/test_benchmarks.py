"""Smoke test of the benchmark suite (``python -m benchmarks.run --tiny``): it runs end to end and writes the JSON
table. No timing is asserted: only that every section produced its keys and finite, positive ratios."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks import run as suite
from benchmarks import scale as scale_bench


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One tiny run of the whole suite (``--threads 1`` sets torch's threads and ``OMP_NUM_THREADS``: restored)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
        try:
            assert suite.main(["--tiny", "--threads", "1", "--out", str(out)]) == 0
        finally:
            torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_suite_writes_machine_and_table(smoke):
    assert smoke["tiny"] is True
    for key in ("platform", "cpu", "cores", "torch", "torch_threads"):
        assert key in smoke["machine"]
    assert smoke["table"] and all({"quantity", "measured", "unit", "target"} <= set(r) for r in smoke["table"])
    assert set(smoke["results"]) >= set(suite.SECTIONS)


def test_every_ratio_is_finite_and_positive(smoke):
    res = smoke["results"]
    assert {r["model"] for r in res["overhead"]["rows"]} == {"gnlenet", "mlp", "mf"}
    for r in res["overhead"]["rows"]:
        for key in ("lightning_over_bare", "lightning_over_bare_nomix", "bare_over_bare_nomix"):
            assert _positive(r[key]), (r["model"], key, r[key])
    assert len(res["mixing"]) == 4
    for r in res["mixing"]:
        assert r["rule_picks"] in ("dense", "index")
        assert r["picked_way"] in ("dense", "index_torch", "fused_tiles", "fused_sorted")
        ways = ("index_torch", "fused_tiles", "fused_sorted", "fused_contiguous", "dense", "picked")
        for key in [f"{way}_over_floor" for way in ways]:
            assert _positive(r[key]), (r["n"], r["K"], key, r[key])
    backend = res["backend"]
    assert {(r["n"], r["K"]) for r in backend["rows"]} == {(4, 1), (4, 2)}
    assert all(_positive(r["torch_over_fused"]) and r["auto_picks"] == "torch" for r in backend["rows"])
    assert backend["threshold_values"] in (None, 256, 1024)
    assert {r["model"] for r in res["execution"]} == {"gnlenet", "mlp"}
    assert all(_positive(r["loop_over_vmap"]) and r["default"] in ("vmap", "loop") for r in res["execution"])
    (scale,) = res["scale"]["rows"]
    for key in ("rounds_per_s", "startup_s", "ideal_per_node_mib", "peak_rss_mib"):
        assert _positive(scale[key]), key
    # In-process tiny run: the 4 nodes' few hundred KB can fit in memory the earlier sections freed, and Linux's RSS
    # counters are batched per thread, so the difference of two RSS readings is only known to about +-0.5 MiB.
    assert math.isfinite(scale["per_node_mib"]) and scale["per_node_mib"] * scale["n"] > -1
    # it trains: one finite node loss per round, first and last reported (as the matrix-factorization rows)
    assert len(scale["node_losses"]) == scale["rounds"] and all(_positive(loss) for loss in scale["node_losses"])
    assert (scale["loss_first"], scale["loss_last"]) == (scale["node_losses"][0], scale["node_losses"][-1])
    assert scale["lr"] == scale_bench.GNLENET_LR == 0.01  # the rows say which lr trained them (see GNLENET_LR)
    soak = res["soak"]
    assert soak["last_round"] == 40 and _positive(soak["rss_mib_at_last_round"])
    assert math.isfinite(soak["growth_mib_per_1000_rounds"])
    assert [r["n"] for r in res["gpu"]] == [2, 4]
    assert all(_positive(r["vmap_over_single"]) and _positive(r["loop_over_single"]) for r in res["gpu"])


def test_scale_section_trains_matrix_factorization(smoke):
    (mf,) = smoke["results"]["scale"]["matrix_factorization"]
    assert mf["model"] == "MatrixFactorization" and mf["n"] == 4 and mf["users_per_node_min"] >= 1
    for key in ("rounds_per_s", "startup_s", "ideal_per_node_mib", "peak_rss_mib"):
        assert _positive(mf[key]), key
    assert math.isfinite(mf["per_node_mib"]) and mf["per_node_mib"] * mf["n"] > -1  # see above
    assert mf["ideal_per_node_mib"] == 2 * 4 * mf["d"] / 2**20
    # it trains: one finite node loss per round (first and last reported); the tiny run is too short to ask for a drop
    assert len(mf["node_losses"]) == mf["rounds"] and all(_positive(loss) for loss in mf["node_losses"])
    assert (mf["loss_first"], mf["loss_last"]) == (mf["node_losses"][0], mf["node_losses"][-1])
    assert mf["lr"] == scale_bench.MF_LR
