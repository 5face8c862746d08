"""get_batch (shapes, shift, uniform starts, memmaps, devices) and load_tokens."""

import json

import numpy as np
import psutil
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cs336_basics.data import get_batch, load_tokens

from . import adapters


def test_get_batch_shapes_dtype_and_shift():
    dataset = np.arange(100)
    x, y = adapters.run_get_batch(dataset=dataset, batch_size=8, context_length=7, device="cpu")
    assert x.shape == y.shape == (8, 7)
    assert x.dtype == y.dtype == torch.int64
    assert x.device.type == "cpu"
    assert torch.equal(y, x + 1)  # arange: y is x shifted by one position
    assert (x[:, 1:] == x[:, :-1] + 1).all()  # each row is a contiguous window


@given(
    st.lists(st.integers(0, 65535), min_size=2, max_size=200),
    st.integers(1, 5),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
)
def test_get_batch_y_is_x_shifted_by_one_and_rows_are_windows(tokens, batch_size, context_length, seed):
    dataset = np.array(tokens, dtype=np.uint16)
    if len(dataset) <= context_length:
        with pytest.raises(ValueError, match="needs at least"):
            get_batch(dataset, batch_size, context_length, "cpu")
        return
    x, y = get_batch(dataset, batch_size, context_length, "cpu", rng=np.random.default_rng(seed))
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = np.lib.stride_tricks.sliding_window_view(dataset.astype(np.int64), context_length + 1)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        row = np.concatenate([row_x, row_y[-1:]])
        assert (windows == row).all(axis=1).any()  # the sampled window occurs in the data


def test_get_batch_starts_are_uniform_over_every_valid_start():
    """Chi-square test over all n - m valid starts (dataset = arange, so x[:, 0] is the start index)."""
    n, m = 30, 5
    starts_possible = n - m  # 0 .. 24: the last window [24, 30) uses the final token as its last target
    dataset = np.arange(n)
    rng = np.random.default_rng(0)
    counts = np.zeros(starts_possible + 5, dtype=np.int64)
    draws = 0
    for _ in range(200):
        x, y = get_batch(dataset, 100, m, "cpu", rng=rng)
        np.add.at(counts, x[:, 0].numpy(), 1)
        assert y.max().item() <= n - 1
        draws += 100
    assert counts[starts_possible:].sum() == 0  # never a start whose target would run off the end
    observed = counts[:starts_possible]
    assert (observed > 0).all()  # every valid start, the first and the last included, is drawn
    expected = draws / starts_possible
    chi2 = ((observed - expected) ** 2 / expected).sum()
    # 24 degrees of freedom: P(chi2 > 51.18) = 0.001
    assert chi2 < 51.18, f"chi-square {chi2:.1f} over {starts_possible} starts: not uniform"


def test_get_batch_global_rng_is_uniform_too():
    np.random.seed(1)
    x, _ = get_batch(np.arange(12), 6000, 4, "cpu")
    counts = np.bincount(x[:, 0].numpy(), minlength=8)
    assert len(counts) == 8 and (np.abs(counts - 750) < 150).all()


def test_get_batch_is_reproducible_with_a_generator():
    dataset = np.arange(1000)
    a = get_batch(dataset, 4, 16, "cpu", rng=np.random.default_rng(5))
    b = get_batch(dataset, 4, 16, "cpu", rng=np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_get_batch_reads_a_memmap_without_loading_it(tmp_path):
    """A 400 MB (sparse) uint16 token file: sampling touches only the sampled windows."""
    path = tmp_path / "tokens.bin"
    n = 200_000_000
    with open(path, "wb") as f:
        f.truncate(2 * n)  # sparse: no disk blocks, reads return zeros
    data = np.memmap(path, dtype=np.uint16, mode="r", shape=(n,))
    data_mm = np.memmap(path, dtype=np.uint16, mode="r+", shape=(n,))
    data_mm[-300:] = np.arange(300, dtype=np.uint16)
    data_mm.flush()
    del data_mm
    rss_before = psutil.Process().memory_info().rss
    x, y = get_batch(data, 32, 256, "cpu")
    assert psutil.Process().memory_info().rss - rss_before < 50 * 2**20
    assert x.shape == (32, 256) and x.dtype == torch.int64
    # the windows agree with the file's content, including the written tail
    x_tail, y_tail = get_batch(data[-300:], 2, 10, "cpu", rng=np.random.default_rng(0))
    assert torch.equal(y_tail, x_tail + 1)


def test_get_batch_on_memmap_equals_get_batch_on_array(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50_000, size=5000).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")
    a = get_batch(memmap, 8, 32, "cpu", rng=np.random.default_rng(3))
    b = get_batch(tokens, 8, 32, "cpu", rng=np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_get_batch_invalid_device_raises():
    with pytest.raises(RuntimeError, match="cuda:99"):
        adapters.run_get_batch(dataset=np.arange(100), batch_size=2, context_length=4, device="cuda:99")
    with pytest.raises(RuntimeError):
        get_batch(np.arange(100), 2, 4, "not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_get_batch_on_cuda():
    x, y = get_batch(np.arange(100), 4, 8, "cuda:0")
    assert x.device.type == "cuda" and torch.equal(y, x + 1)


def test_get_batch_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dataset has 5 tokens; a window of context_length=5 needs at least 6"):
        get_batch(np.arange(5), 1, 5, "cpu")
    with pytest.raises(ValueError, match="batch_size=0 and context_length=4 must be positive"):
        get_batch(np.arange(50), 0, 4, "cpu")
    with pytest.raises(ValueError, match="batch_size=2 and context_length=-1 must be positive"):
        get_batch(np.arange(50), 2, -1, "cpu")


def test_load_tokens_bin_with_sidecar_and_npy(tmp_path):
    tokens = np.array([5, 3, 65535, 0], dtype=np.uint16)
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    (tmp_path / "train.bin.json").write_text(json.dumps({"dtype": "uint16", "num_tokens": 4}))
    loaded = load_tokens(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    assert np.array_equal(loaded, tokens)
    big = np.array([70000, 1], dtype=np.uint32)
    np.save(tmp_path / "val.npy", big)
    assert np.array_equal(load_tokens(tmp_path / "val.npy"), big)
    bare = tmp_path / "bare.bin"
    big.tofile(bare)
    assert np.array_equal(load_tokens(bare, dtype="uint32"), big)


def test_load_tokens_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokens(tmp_path / "missing.bin")
    bare = tmp_path / "bare.bin"
    np.arange(4, dtype=np.uint16).tofile(bare)
    with pytest.raises(ValueError, match="has no sidecar bare.bin.json; pass its dtype explicitly"):
        load_tokens(bare)
