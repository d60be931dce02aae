"""The first run after install: the quickstart never imports numba (its mixing is below the fused backend's
threshold), and the fused kernels still load where numba finds no writable cache folder, silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CLI_DRIVER = """
import sys
from lightning_mosaic.cli import main
main(sys.argv[1:])
print("numba imported:", "numba" in sys.modules)
"""

_KERNEL_DRIVER = """
import numpy as np
from lightning_mosaic.gossip import fused
assert fused.available()
receivers = np.array([[[1], [0], [0]]], np.int64)
indptr, senders, _ = fused._kernels().in_lists(receivers, np.ones(receivers.shape, np.bool_), 3)
print(indptr.tolist(), senders.tolist())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_")}
    return {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def test_quickstart_does_not_import_numba(tmp_path):
    """Three rounds of the README quickstart through the CLI, in a fresh process: numba is never imported, so
    nothing is compiled on the first run after install."""
    command = [sys.executable, "-c", _CLI_DRIVER, "fit", "--config", "quickstart"]
    command += ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false"]
    command += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "numba imported: False" in result.stdout, result.stdout[-2000:]
    rounds = next(line for line in result.stdout.splitlines() if line.startswith("rounds "))
    assert rounds.split("|")[1].strip() == "3"  # the gossip ran (three rounds on the auto backend)


def test_kernels_load_without_a_writable_numba_cache(tmp_path):
    """A read-only install with no writable cache folder either (numba has no place to cache: simulated by letting
    it look only where a plain module never is): the kernels compile in the process, nothing is printed on stderr and
    nothing is written."""
    env = _env(NUMBA_CACHE_LOCATOR_CLASSES="IPythonCacheLocator", HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", _KERNEL_DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split("\n")[0] == "[0, 2, 3, 3] [1, 2, 0]"
    assert result.stderr == ""
    assert not list(tmp_path.iterdir())
