"""Shared pytest fixtures: snapshots, the public CS336 fixture files, hypothesis settings."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from jaxtyping import install_import_hook

from cs336_basics._tokenization.clib import compiler_exists

# Runtime shape and dtype checks of every jaxtyping annotation in these modules, in tests only (STYLE.md §3): the
# modules are imported here, under the hook, before any test imports them. CS336_JAXTYPING=0 turns it off.
if os.environ.get("CS336_JAXTYPING", "1") != "0":
    import tests._shape_checks  # noqa: F401 - the hook refers to it by its dotted name

    hooked = ["cs336_basics.layers", "cs336_basics.model", "cs336_basics.nn_utils"]
    with install_import_hook(hooked, "tests._shape_checks.array_typechecker"):
        import cs336_basics.layers  # noqa: F401
        import cs336_basics.model  # noqa: F401
        import cs336_basics.nn_utils  # noqa: F401

SNAPSHOT_DIR = Path(__file__).parent / "_snapshots"
FIXTURES_DIR = Path(__file__).parent / "fixtures"
# The public CS336 fixture files live beside the checkout (../shared/fixtures), never inside it.
SHARED_DIR = Path(os.environ.get("CS336_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))

# The C kernels' tests need a compiler; `CC=/nonexistent uv run pytest` runs the suite as a machine without one would
# (those tests skip, and the Python fallbacks take their place everywhere else).
NEEDS_CC = pytest.mark.skipif(not compiler_exists(), reason="no C compiler (cc, gcc, clang or $CC)")

# Example counts come from the environment, as in tiktoken's tests: MAX_EXAMPLES=1000 uv run pytest
settings.register_profile("default", max_examples=int(os.environ.get("MAX_EXAMPLES", "60")), deadline=None)
settings.load_profile("default")


def pytest_addoption(parser):
    parser.addoption(
        "--update-snapshots",
        action="store_true",
        default=False,
        help="rewrite tests/_snapshots/*.npz from the current outputs instead of comparing against them",
    )


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The tokenizer cache (`tokenizer_cache.load_tokenizer`) goes to a temporary directory, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CS336_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread. The trainer, generation and quickstart tests use tiny models, which two
    OpenMP threads on a shared, oversubscribed CPU make ~50x slower (spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_fixture(name: str) -> Path:
    """Path to a public CS336 fixture file in ../shared/fixtures, or skip the test with the reason."""
    path = SHARED_DIR / "fixtures" / name
    if not path.exists():
        pytest.skip(f"public CS336 fixture {name!r} not found at {path} (set CS336_SHARED_DIR to the shared/ folder)")
    return path


def project_fixture(*parts: str) -> Path:
    """Path to a file under tests/fixtures/ (the project's own data, kept in git): never skipped, a missing one
    fails the test."""
    path = FIXTURES_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"project fixture {path} is missing (each folder under tests/fixtures/ says how it was made)")
    return path


def shared_data(name: str) -> Path:
    """Path to a benchmark corpus in ../shared/data, or skip the test with the reason."""
    path = SHARED_DIR / "data" / name
    if not path.exists():
        pytest.skip(f"corpus {name!r} not found at {path} (set CS336_SHARED_DIR to the shared/ folder)")
    return path


class NumpySnapshot:
    """Compares arrays with `tests/_snapshots/<name>.npz`; only `--update-snapshots` writes them."""

    def __init__(self, update: bool, default_name: str):
        self.update = update
        self.default_name = default_name

    def assert_match(self, actual, name: str | None = None, rtol: float = 1e-4, atol: float = 1e-6) -> None:
        arrays = actual if isinstance(actual, dict) else {"array": actual}
        arrays = {k: _to_numpy(v) for k, v in arrays.items()}
        path = SNAPSHOT_DIR / f"{name or self.default_name}.npz"
        if self.update:
            SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
            return
        if not path.exists():
            pytest.fail(f"snapshot {path} is missing; create it with `uv run pytest --update-snapshots`")
        with np.load(path) as expected:
            assert set(expected.files) == set(arrays), f"snapshot keys {expected.files} != {sorted(arrays)}"
            for key, value in arrays.items():
                np.testing.assert_allclose(value, expected[key], rtol=rtol, atol=atol, err_msg=f"{path}:{key}")


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64 if x.is_floating_point() else x.dtype).numpy()
    return np.asarray(x)


@pytest.fixture
def numpy_snapshot(request) -> NumpySnapshot:
    return NumpySnapshot(request.config.getoption("--update-snapshots"), request.node.name)
