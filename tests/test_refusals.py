"""A refused run writes nothing: the real ``mosaic`` entry point, started from an empty folder, exits with status 2
and one error, and leaves the folder empty (no run folder, no config, no data folder, no process started).

Downloads fail without touching the network: the download code honours the standard proxy variables, which point
here at a closed local port (``http://127.0.0.1:9``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_mosaic.data.download import TEMPORARY_PREFIX, download_into
from lightning_mosaic.recipes import RECIPES_DIR

ROOT = Path(__file__).resolve().parents[1]
RECIPES = RECIPES_DIR
NO_NETWORK = "http://127.0.0.1:9"

QUICKSTART = ["--config", str(RECIPES / "quickstart.yaml")]
CIFAR10 = ["--config", str(RECIPES / "cifar10_mosaic.yaml"), "--trainer.accelerator", "cpu"]
TWO_PROCESSES = ["--trainer.strategy", "mosaic", "--trainer.devices", "2"]

#: case -> (arguments after ``mosaic fit``, a part of the error message)
CASES = {
    "several processes without the mosaic strategy": (
        [*QUICKSTART, "--trainer.devices", "2"],
        "16 nodes over 2 processes need Trainer(strategy='mosaic')",
    ),
    "the mosaic strategy with a DistributedSampler": (
        [*QUICKSTART, *TWO_PROCESSES, "--trainer.use_distributed_sampler", "true"],
        "Trainer(strategy='mosaic') needs Trainer(use_distributed_sampler=False)",
    ),
    "no data in a multi-process run": (
        [*CIFAR10, *TWO_PROCESSES, "--data.init_args.download", "false"],
        "CIFAR-10 not found under data/cifar10",
    ),
    "a download without network": (
        CIFAR10,  # the recipe downloads into data/cifar10
        "the torchvision download failed",
    ),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case run at once (they only start and refuse), each from its own empty folder."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(PYTHONPATH=str(ROOT), http_proxy=NO_NETWORK, https_proxy=NO_NETWORK, MOSAIC_TRACEBACK="0")
    env.update(HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK)
    started = {}
    for index, (case, (args, _)) in enumerate(CASES.items()):
        cwd = tmp_path_factory.mktemp(f"case{index}")
        command = [sys.executable, "-m", "lightning_mosaic.cli", "fit", *args]
        started[case] = (
            subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            cwd,
        )
    results = {}
    for case, (process, cwd) in started.items():
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results[case] = (subprocess.CompletedProcess(process.args, process.returncode, out, err), cwd)
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_run_exits_2_with_one_error_and_writes_nothing(refused, case):
    result, cwd = refused[case]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mosaic: error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and CASES[case][1] in errors[0], result.stderr[-3000:]  # one process, one error
    assert "Traceback" not in result.stderr
    assert sorted(p.relative_to(cwd).as_posix() for p in cwd.rglob("*")) == []


# -- downloads: to a temporary name, moved into place only when complete ------------------------------------------


def _leftovers(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_failed_download_leaves_nothing_and_creates_no_folder(tmp_path):
    def fetch(folder: Path) -> None:
        (folder / "archive.tar.gz").write_bytes(b"partial")  # half a download, then the network goes
        raise OSError("network is unreachable")

    with pytest.raises(OSError, match="network is unreachable"):
        download_into(tmp_path / "data" / "cifar10", fetch)
    assert _leftovers(tmp_path) == []

    existing = tmp_path / "mine"
    (existing / "notes.txt").parent.mkdir()
    (existing / "notes.txt").write_text("kept")
    with pytest.raises(OSError):
        download_into(existing, fetch)
    assert _leftovers(tmp_path) == ["mine", "mine/notes.txt"]


def test_a_complete_download_is_moved_into_place_whole(tmp_path):
    seen = []

    def fetch(folder: Path) -> None:
        seen.append(folder)
        assert folder.name.startswith(TEMPORARY_PREFIX) and folder.parent == tmp_path  # next to the missing folders
        assert not (tmp_path / "data").exists()  # nothing created before the download completed
        (folder / "cifar-10-batches-py").mkdir()
        (folder / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
        (folder / "archive.tar.gz").write_bytes(b"y")

    download_into(tmp_path / "data" / "cifar10", fetch)
    assert _leftovers(tmp_path) == [
        "data",
        "data/cifar10",
        "data/cifar10/archive.tar.gz",
        "data/cifar10/cifar-10-batches-py",
        "data/cifar10/cifar-10-batches-py/data_batch_1",
    ]
    assert not seen[0].exists()

    def another(folder: Path) -> None:  # an entry that appeared meanwhile is kept, the new copy dropped
        (folder / "archive.tar.gz").write_bytes(b"z")

    download_into(tmp_path / "data" / "cifar10", another)
    assert (tmp_path / "data" / "cifar10" / "archive.tar.gz").read_bytes() == b"y"
    assert not [p for p in tmp_path.rglob(TEMPORARY_PREFIX + "*")]


def test_the_data_modules_download_through_a_temporary_folder(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.utils as tv_utils

    from lightning_mosaic.data import CIFAR10DataModule, MovieLensDataModule

    class _HalfDownload:
        def __init__(self, root, train=True, download=False):
            (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _HalfDownload)
    with pytest.raises(FileNotFoundError, match="download failed"):
        CIFAR10DataModule(tmp_path / "data" / "cifar10", num_nodes=2, download=True).prepare_data()

    def half_archive(url, download_root, md5=None, remove_finished=False):
        (Path(download_root) / "ml-100k.zip").write_bytes(b"partial")
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", half_archive)
    with pytest.raises(FileNotFoundError, match="download of .*ml-100k.zip failed"):
        MovieLensDataModule(tmp_path / "data" / "movielens", num_nodes=2, download=True).prepare_data()
    assert _leftovers(tmp_path) == []


# -- a resume of other gossip settings: refused before the run folder exists -----------------------------------------


def test_a_checkpoint_of_other_gossip_settings_is_refused_before_any_write(tmp_path, monkeypatch, capsys):
    from lightning_mosaic.cli import main

    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "ckpt.yaml"
    checkpoint.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args:\n        every_n_train_steps: 10\n        save_top_k: -1\n"
    )
    common = ["fit", *QUICKSTART, "--config", str(checkpoint), "--trainer.max_steps", "10"]
    common += ["--trainer.enable_progress_bar", "false"]
    main(common)
    (saved,) = (tmp_path / "runs" / "quickstart" / "version_0" / "checkpoints").glob("*.ckpt")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    capsys.readouterr()
    for other, difference in [
        (["--gossip.fragments", "4"], "fragments=8 in the checkpoint, 4 here"),
        (["--gossip.topology", "ring", "--gossip.peers", "all"], "topology='el-local' in the checkpoint, 'ring' here"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *other, "--trainer.max_steps", "20", "--ckpt_path", str(saved)])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mosaic: error:")]
        assert exit_info.value.code == 2 and len(errors) == 1 and difference in errors[0], errors
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # no version_1
