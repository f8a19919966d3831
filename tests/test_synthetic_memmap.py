"""Synthetic sets larger than memory: .npy shard pairs that load_synthetic memory-maps, RowStack's row
reads, and TRADES drawing its synthetic batches from the map without reading the whole set."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.data import load_synthetic
from core.data.dataset import RowStack

ROOT = Path(__file__).resolve().parents[1]


def write_pairs(folder: Path, sizes: list[int], *, shape: tuple[int, int, int] = (8, 8, 1),
                seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(sizes):
        np.save(folder / f"{k}.images.npy", rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
        np.save(folder / f"{k}.labels.npy", rng.integers(0, 10, size=n).astype(np.int64))


def test_npy_pairs_are_memory_mapped_and_read_like_the_npz_they_mirror(tmp_path: Path) -> None:
    write_pairs(tmp_path / "job" / "shards", [5, 7, 3])
    for k in range(3):  # the npz beside them, as a generation job writes both
        images = np.load(tmp_path / "job" / "shards" / f"{k}.images.npy")
        labels = np.load(tmp_path / "job" / "shards" / f"{k}.labels.npy")
        np.savez(tmp_path / "job" / "shards" / f"{k}.npz", image=images, label=labels)
    mapped = load_synthetic([tmp_path / "job"], num_classes=10)
    assert isinstance(mapped.images, RowStack) and len(mapped) == 15
    whole = np.concatenate([np.load(tmp_path / "job" / "shards" / f"{k}.images.npy") for k in range(3)])
    rows = np.array([14, 0, 5, 4, 12, 5])  # unsorted, repeated, across all three shards
    np.testing.assert_array_equal(mapped.images[rows], whole[rows])
    np.testing.assert_array_equal(mapped.images[3:9], whole[3:9])
    np.testing.assert_array_equal(mapped.images[-1], whole[-1])
    np.testing.assert_array_equal(np.asarray(mapped.images), whole)
    for file in (tmp_path / "job" / "shards").glob("*.npy"):
        file.unlink()  # the npz alone: the ecosystem's format, read into memory, the same set
    from_npz = load_synthetic([tmp_path / "job"], num_classes=10)
    np.testing.assert_array_equal(from_npz.images, whole)
    np.testing.assert_array_equal(from_npz.labels, mapped.labels)


def test_one_pair_is_a_plain_read_only_memory_map(tmp_path: Path) -> None:
    write_pairs(tmp_path, [6])
    data = load_synthetic([tmp_path])
    assert isinstance(data.images, np.memmap) and not data.images.flags.writeable


def test_broken_pairs_are_named(tmp_path: Path) -> None:
    write_pairs(tmp_path, [4])
    (tmp_path / "0.labels.npy").unlink()
    with pytest.raises(ValueError, match=r"0\.images\.npy.*labels file 0\.labels\.npy is missing"):
        load_synthetic([tmp_path])
    np.save(tmp_path / "0.labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        load_synthetic([tmp_path])
    with pytest.raises(IndexError, match="out of range"):
        RowStack([np.zeros((2, 4, 4, 1), np.uint8), np.zeros((3, 4, 4, 1), np.uint8)])[np.array([5])]


MEASURE = textwrap.dedent('''
    import json, sys
    import numpy as np
    import torch
    from core.data import ImageDataset, load_synthetic
    from core.data.dataset import DatasetInfo
    from core.training.trades import TradesConfig, train_trades

    def rss_mb(field="VmRSS"):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    info = DatasetInfo("real", num_classes=10, image_size=32, channels=3)
    real = ImageDataset(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 10, info)
    config = TradesConfig(epochs=1, steps_per_epoch=4, batch_size=16, steps=1, eval_max=16, eval_steps=1,
                          arch_options={"width": 4, "feature_dim": 16})
    train_trades(real, real, config=config, out_dir=sys.argv[2] + "/warm", seed=0)  # torch warmed up
    before, anon_before = rss_mb(), rss_mb("RssAnon")
    synthetic = load_synthetic([sys.argv[1]], num_classes=10)
    metrics = train_trades(real, real, synthetic=synthetic, config=config, out_dir=sys.argv[2] + "/run",
                           seed=0)
    print(json.dumps({"before": before, "after": rss_mb(), "anon_before": anon_before,
                      "anon_after": rss_mb("RssAnon"), "n": len(synthetic),
                      "synthetic_count": metrics["synthetic_count"], "steps": metrics["steps"]}))
''')


@pytest.mark.timeout(300)
def test_trades_draws_from_200k_mapped_images_without_reading_them_into_memory(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):  # 4 x 50k x 32 x 32 x 3 = 614 MB on disk, written in chunks (never all in memory)
        images = np.lib.format.open_memmap(folder / f"{k}.images.npy", mode="w+", dtype=np.uint8,
                                           shape=(50_000, 32, 32, 3))
        for start in range(0, 50_000, 5_000):
            images[start : start + 5_000] = rng.integers(0, 256, (5_000, 32, 32, 3), dtype=np.uint8)
        images.flush()
        del images
        np.save(folder / f"{k}.labels.npy", rng.integers(0, 10, 50_000).astype(np.int64))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(tmp_path)], capture_output=True,
                          text=True, timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == result["synthetic_count"] == 200_000 and result["steps"] == 4
    # The 614 MB set stays on disk: the process's resident memory grows by far less than the set. What does
    # grow are file-backed pages of the rows read (page cache the kernel may drop; large page-cache folios
    # map up to 2 MB per row touched); anonymous memory, what a copy into RAM would take, barely moves.
    assert result["after"] - result["before"] < 200, result
    assert result["anon_after"] - result["anon_before"] < 50, result
