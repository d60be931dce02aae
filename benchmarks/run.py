"""The benchmark suite of issue 7 (speed and scale) in one command.

    python -m benchmarks.run --out benchmarks/results.json        # full suite, about 15 minutes on 2 CPU cores
    python -m benchmarks.run --tiny --out /tmp/smoke.json         # smoke test (seconds; numbers meaningless)

Sections (``--sections`` to choose): ``overhead`` (Lightning vs bare PyTorch loop, with and without mixing),
``mixing`` (dense and index kernels vs the copy floor), ``backend`` (torch vs fused index backend per gossip round
over (n, d, K): the size from which ``backend="auto"`` picks the fused one, and numba's compile time), ``execution``
(vmap vs per-node loop), ``scale`` (largest n of
GN-LeNet on real CIFAR-10, and matrix factorization on MovieLens 100K up to one node per user: rounds per second,
start-up, memory per node), ``soak`` (quickstart memory after 1,000 and
10,000 rounds), ``gpu`` (only with CUDA). Prints a table of ratios measured in the same run, with the machine, and
writes everything to ``--out`` as JSON (atomically). No number is compared against a threshold here: the table
shows each target of issue 7 next to the measured value.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch

from benchmarks import backend, execution_paths, gpu, mixing, overhead, scale, soak
from benchmarks.common import machine, write_json_atomic

SECTIONS = ("overhead", "mixing", "backend", "execution", "scale", "soak", "gpu")


def run_sections(
    sections: list[str], tiny: bool, scale_nodes: list[int], soak_rounds: int, scale_rounds: int = 2
) -> dict[str, Any]:
    """Run the chosen sections; returns ``{section: rows or result}`` (``None`` for a skipped GPU section)."""
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in sections:
        start = time.perf_counter()
        print(f"[{name}]", flush=True)
        if name == "overhead":
            results[name] = {"rows": overhead.run(tiny)}
        elif name == "mixing":
            results[name] = mixing.run(tiny)
        elif name == "backend":
            results[name] = backend.run(tiny)
        elif name == "execution":
            results[name] = execution_paths.run(tiny=tiny)
        elif name == "scale":
            if tiny:
                rows = scale.run([4], batch=4, rounds=2, fragments=2, peers=1, tiny=True)
                mf_rows = scale.run_mf([4], batch=8, rounds=2, fragments=2, peers=1, tiny=True)
            else:
                rows = scale.run(scale_nodes, batch=8, rounds=scale_rounds, fragments=8, peers=3)
                mf_rounds = max(scale_rounds, scale.MF_MIN_ROUNDS)
                mf_rows = scale.run_mf(list(scale.MF_SIZES), batch=256, rounds=mf_rounds, fragments=8, peers=3)
            results[name] = {"rows": rows, "matrix_factorization": mf_rows}
        elif name == "soak":
            results[name] = soak.run(40 if tiny else soak_rounds, 20 if tiny else 500, in_process=tiny)
        elif name == "gpu":
            results[name] = gpu.run("cpu" if tiny else None, tiny)
        timings[name] = time.perf_counter() - start
    results["section_seconds"] = timings
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{quantity, measured, target}`` for the table: the ratios and the issue's targets."""
    rows: list[dict[str, Any]] = []

    def add(quantity: str, measured: float | None, target: str, unit: str = "x") -> None:
        rows.append({"quantity": quantity, "measured": measured, "unit": unit, "target": target})

    for r in results.get("overhead", {}).get("rows", []):
        target = "<= 1.05" if r["model"] == "gnlenet" else "<= 1.25"
        add(
            f"round time {r['model']} n={r['n']} B={r['B']} K={r['K']}: lightning / bare loop",
            r["lightning_over_bare"],
            target,
        )
        add(f"round time {r['model']}: lightning / bare loop without mixing", r["lightning_over_bare_nomix"], "-")
        add(f"round time {r['model']}: bare loop / bare loop without mixing", r["bare_over_bare_nomix"], "-")
        if "lightning_loop_over_bare" in r:
            add(
                f"round time {r['model']}: lightning (execution=loop) / bare loop",
                r["lightning_loop_over_bare"],
                target,
            )
    mix_rows = results.get("mixing", [])
    for r in mix_rows:
        dense = r["dense_over_floor"]
        add(
            f"mixing n={r['n']} d={r['d']} K={r['K']}: picked ({r['picked_way']}) / copy floor"
            f" [index_torch {r['index_torch_over_floor']:.1f}, dense {'-' if dense is None else f'{dense:.1f}'}]",
            r["picked_over_floor"],
            "<= 3",
        )
    if "backend" in results:
        b = results["backend"]
        add(
            f"backend: fewest n*d from which torch round / fused round >= {b['margin']:.2f} at every (n, K)",
            b["threshold_values"],
            "-",
            "vals",
        )
        for key, value in b.get("compile", {}).items():
            add(f"backend: numba {key.replace('_', ' ')}", value, "-", "s")
    for r in results.get("execution", []):
        add(
            f"execution {r['model']} n={r['n']} B={r['B']} {r['device']}: loop / vmap (default {r['default']})",
            r["loop_over_vmap"],
            "-",
        )
    for r in results.get("scale", {}).get("rows", []):
        if "error" in r:
            add(f"scale n={r['n']}: FAILED", None, "trains")
            continue
        tag = f"scale {r['model']} {r['data']} n={r['n']} B={r['B']}"
        add(f"{tag}: rounds per second", r["rounds_per_s"], "-", "1/s")
        add(f"{tag}: memory per node beyond shared data", r["per_node_mib"], "<= 10 (GN-LeNet)", "MiB")
        add(f"{tag}: ideal per node (params + grads + SGD state)", r["ideal_per_node_mib"], "-", "MiB")
        add(f"{tag}: start-up to first round", r["startup_s"], "< 3 (n = 16)", "s")
        add(f"{tag}: start-up without data decode", r["startup_without_data_s"], "-", "s")
    for r in results.get("scale", {}).get("matrix_factorization", []):
        if "error" in r:
            add(f"scale matrix factorization n={r['n']}: FAILED", None, "trains")
            continue
        tag = f"scale {r['model']} {r['data']} n={r['n']} B={r['B']}"
        add(f"{tag}: rounds per second", r["rounds_per_s"], ">= 1 (n = 943)", "1/s")
        add(f"{tag}: node training loss, first round", r["loss_first"], "-", "MSE")
        add(f"{tag}: node training loss, last round", r["loss_last"], "< first round", "MSE")
        add(f"{tag}: start-up to first round", r["startup_s"], "-", "s")
        add(f"{tag}: peak RSS", r["peak_rss_mib"], "-", "MiB")
        add(f"{tag}: memory per node beyond the data", r["per_node_mib"], "-", "MiB")
        add(f"{tag}: ideal per node (params + grads + SGD state)", r["ideal_per_node_mib"], "-", "MiB")
    if "soak" in results:
        s = results["soak"]
        add(f"soak quickstart: RSS at round {s['mark_1000_round']}", s["rss_mib_at_round_1000"], "-", "MiB")
        add(f"soak quickstart: RSS at round {s['last_round']}", s["rss_mib_at_last_round"], "no growth", "MiB")
        add("soak quickstart: growth per 1,000 rounds", s["growth_mib_per_1000_rounds"], "~0", "MiB")
    for r in results.get("gpu") or []:
        add(f"gpu n={r['n']} B={r['B']} {r['device']}: vmap / one model with batch n*B", r["vmap_over_single"], "-")
        add(f"gpu n={r['n']} B={r['B']} {r['device']}: loop / one model with batch n*B", r["loop_over_single"], "-")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["quantity"]) for r in rows) if rows else 10
    lines = [f"{'quantity':{width}s} | {'measured':>10s} | unit | target", "-" * (width + 36)]
    for r in rows:
        value = "-" if r["measured"] is None else f"{r['measured']:10.3f}"
        lines.append(f"{r['quantity']:{width}s} | {value:>10s} | {r['unit']:4s} | {r['target']}")
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` so that the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results.json", help="JSON file to write (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; numbers are not meaningful)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--scale-nodes", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--soak-rounds", type=int, default=10_000)
    parser.add_argument("--scale-rounds", type=int, default=2, help="rounds per scale run; the first is start-up")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for every section and subprocess (default: torch's default, one per core). "
        "On cores shared with other busy processes, 1 avoids OpenMP's oversubscription stalls",
    )
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.scale_nodes):
        parser.error(f"--scale-nodes must all be >= 2, got {args.scale_nodes}")
    if args.scale_rounds < 2:
        parser.error(f"--scale-rounds must be >= 2 (the first round is start-up), got {args.scale_rounds}")
    if args.soak_rounds < 1000 and not args.tiny:
        parser.error(f"--soak-rounds must be >= 1000 (memory is reported at round 1,000), got {args.soak_rounds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the scale and soak subprocesses
    info = machine()
    print(
        f"machine: {info['cpu']} ({info['machine']}), {info['cores']} cores, {info['memory_gib']} GiB, "
        f"torch {info['torch']} ({info['torch_threads']} threads), {info['platform']}; load average "
        f"{info['load_average_at_start']}",
        flush=True,
    )
    start = time.perf_counter()
    results = run_sections(args.sections, args.tiny, args.scale_nodes, args.soak_rounds, args.scale_rounds)
    table = summary(results)
    payload = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "tiny": args.tiny,
        "machine": info,
        "load_average_at_end": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - start,
        "table": table,
        "results": results,
    }
    write_json_atomic(args.out, _finite(payload))
    print(format_table(table))
    print(f"written {args.out} ({payload['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
