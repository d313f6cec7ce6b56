"""The vLLM 0.33 drop-ins (dllm_kernels.integrations.vllm) against vLLM's own sampler.

``test_*_vllm_kernel`` load ``vllm/model_executor/models/diffusion_gemma_sampler.py`` of the
vLLM 0.33.0 wheel: the file itself (``$VLLM_SAMPLER``, or ``bench/vllm_diffusion_gemma_sampler.py``,
which ``scripts/bootstrap.sh`` fetches with ``scripts/fetch_vllm_sampler.py``: 6.8 kB read out of
the 336 MB wheel, its sha256 pinned), else the wheel (``$VLLM_WHEEL``, or
``/work/wheels/vllm-0.33.0-*.whl``). Without either they skip with the reason, except under
``CI=true`` on a CPU machine, where they fail (CI ran the bootstrap). With a stub ``vllm.triton_utils``
giving ``tl``/``triton``, and run vLLM's ``_row_stats_kernel`` itself (Triton's interpreter on
CPU tensors, the GPU otherwise) next to ours: argmax and sample bit for bit, entropy and probs
within tolerance. The ``test_*_formulas`` tests need no wheel: they compare with a transcription
of vLLM's FORMULAS (``sample_row_stats_reference``'s scores with the kernel's Philox uniforms,
the sort/cumsum/cummax/scatter acceptance of ``_compiled_sample_step``), written here.
"""

import glob
import hashlib
import importlib.util
import logging
import math
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch

import dllm_kernels as dk
from dllm_kernels.integrations import vllm as dkv
from dllm_kernels.reference._philox import philox_uniform

SAMPLER = "vllm/model_executor/models/diffusion_gemma_sampler.py"
ENTROPY_RTOL = 1e-5  # |ours - vLLM's| <= 1e-5 * (1 + H): fp32 sums in another order


def _wheel() -> str | None:
    for path in [os.environ.get("VLLM_WHEEL"), *sorted(glob.glob("/work/wheels/vllm-0.33.0-*.whl"))]:
        if path and os.path.isfile(path):
            return path
    return None


def _load_fetcher():
    """scripts/fetch_vllm_sampler.py as a module (its output path, pinned hash and zip reader)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "fetch_vllm_sampler.py"
    spec = importlib.util.spec_from_file_location("fetch_vllm_sampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FETCH = _load_fetcher()


def _sampler_file() -> Path | None:
    """vLLM's sampler file with the pinned hash (``$VLLM_SAMPLER``, or the bootstrap's copy)."""
    for path in [os.environ.get("VLLM_SAMPLER"), FETCH.OUT]:
        if path and os.path.isfile(path) and hashlib.sha256(Path(path).read_bytes()).hexdigest() == FETCH.SHA256:
            return Path(path)
    return None


@pytest.fixture
def vllm_sampler(tmp_path, monkeypatch):
    """vLLM 0.33.0's diffusion_gemma_sampler module, loaded from its file (or the wheel) with a
    stub vllm."""
    source, wheel = _sampler_file(), _wheel()
    if source is None and wheel is None:
        why = (
            "vLLM 0.33.0's diffusion_gemma_sampler.py not found (run scripts/fetch_vllm_sampler.py, or set "
            "VLLM_SAMPLER=path/to/the/file or VLLM_WHEEL=path/to/vllm-0.33.0-*.whl)"
        )
        if os.environ.get("CI") == "true" and not torch.cuda.is_available():
            pytest.fail(why + "; CI's bootstrap fetches it")
        pytest.skip(why)
    if source is None:
        with zipfile.ZipFile(wheel) as zf:
            source = tmp_path / "diffusion_gemma_sampler.py"
            source.write_bytes(zf.read(SAMPLER))
    import triton
    import triton.language as tl

    stub = types.ModuleType("vllm")
    stub.__path__ = []
    utils = types.ModuleType("vllm.triton_utils")
    utils.tl, utils.triton = tl, triton
    monkeypatch.setitem(sys.modules, "vllm", stub)
    monkeypatch.setitem(sys.modules, "vllm.triton_utils", utils)
    spec = importlib.util.spec_from_file_location("vllm_033_diffusion_gemma_sampler", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_batch(n_req, canvas_len, V, device, *, seed=0):
    """Logits with ties, -inf columns (top-k style), a T = 0 request, a T = 1e-12 request and
    per-request T."""
    g = torch.Generator().manual_seed(seed)
    rows = n_req * canvas_len
    x = torch.randn(rows, V, generator=g) * 3
    x[0, [3, 40]] = x[0].max() + 2  # a tie for the argmax (and the T = 0 sample)
    x[1, : V // 2] = float("-inf")  # a masked half
    x[2, torch.randperm(V, generator=g)[: V - 5]] = float("-inf")  # top-5
    x[3] = torch.round(x[3])  # many ties
    temps = torch.rand(n_req, generator=g) * 1.5 + 0.05
    temps[0] = 0.0
    if n_req > 3:
        temps[3] = 1e-12  # below vLLM's 1e-10 clamp, still sampling
    return x.to(device), temps.to(device)


def _compare(ours, theirs, probs_dtype):
    a_o, s_o, e_o, p_o = ours
    a_t, s_t, e_t, p_t = theirs
    assert a_o.dtype == a_t.dtype == torch.int64 and s_o.dtype == torch.int64
    assert torch.equal(a_o.cpu(), a_t.cpu()), (a_o != a_t).nonzero()[:5]
    assert torch.equal(s_o.cpu(), s_t.cpu()), (s_o != s_t).nonzero()[:5]
    e_o, e_t = e_o.cpu(), e_t.cpu()
    assert torch.equal(e_o.isnan(), e_t.isnan())
    fin = ~e_t.isnan()
    assert ((e_o[fin] - e_t[fin]).abs() <= ENTROPY_RTOL * (1 + e_t[fin].abs())).all()
    if probs_dtype is None:
        assert p_o is None and p_t is None
    else:
        assert p_o.dtype == p_t.dtype == probs_dtype
        atol = 1e-6 if probs_dtype == torch.float32 else 1e-2
        torch.testing.assert_close(p_o.float().cpu(), p_t.float().cpu(), atol=atol, rtol=1e-2, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 7])
def test_sample_row_stats_equals_the_vllm_kernel(vllm_sampler, device, dtype, seed):
    x, temps = random_batch(4, 6, 5000, device, seed=seed % 1000)  # 2 of vLLM's 4096-blocks per row
    x = x.to(dtype)
    theirs = vllm_sampler.sample_row_stats(x, temps, 6, seed, None)
    ours = dkv.sample_row_stats(x, temps, 6, seed, None)
    _compare(ours, theirs, None)
    # a T = 0 request samples its argmax, the others sample (somewhere) away from it
    assert torch.equal(ours[1][:6].cpu(), ours[0][:6].cpu())
    assert not torch.equal(ours[1][6:].cpu(), ours[0][6:].cpu())


def test_sample_row_stats_probs_and_empty_rows_vllm_kernel(vllm_sampler, device):
    x, temps = random_batch(3, 4, 300, device, seed=5)
    x[7] = float("-inf")  # a row without a finite logit: vLLM gives argmax 0, sample 0, NaN entropy
    for probs_dtype in (torch.float32, torch.bfloat16):
        theirs = vllm_sampler.sample_row_stats(x, temps, 4, 99, probs_dtype)
        ours = dkv.sample_row_stats(x, temps, 4, 99, probs_dtype)
        _compare(ours, theirs, probs_dtype)
    assert ours[0][7].item() == 0 and ours[1][7].item() == 0 and math.isnan(ours[2][7].item())


def test_sample_row_stats_partial_canvas_vllm_kernel(vllm_sampler, device):
    """rows need not fill the last request's canvas; temps may hold more entries than used."""
    x, temps = random_batch(3, 5, 257, device, seed=8)
    x = x[:13]
    _compare(dkv.sample_row_stats(x, temps, 5, 4, None), vllm_sampler.sample_row_stats(x, temps, 5, 4, None), None)


def _formula_row_stats(logits, temps, canvas_len, seed):
    """vLLM 0.33's sampler formulas (sample_row_stats_reference, with the kernel's uniforms
    ``tl.rand(seed, row * V + v)`` in place of torch.rand), transcribed."""
    rows, V = logits.shape
    temp = temps.repeat_interleave(canvas_len)[:rows].float()[:, None]
    scaled = logits.float() / temp.clamp(min=1e-10)  # argmax of this == argmax of the raw row
    offsets = torch.arange(rows)[:, None] * V + torch.arange(V)[None, :]
    u = philox_uniform(seed, offsets).clamp(min=1e-20)
    inv = 1.0 / temp.clamp(min=1e-10)
    noisy = logits.float() * inv + (-torch.log(-torch.log(u))) * (temp > 0).float()
    log_probs = scaled.log_softmax(dim=-1)
    probs = log_probs.exp()
    entropy = -torch.where(probs > 0, probs * log_probs, 0.0).sum(dim=-1)
    return logits.float().argmax(dim=-1), noisy.argmax(dim=-1), entropy


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_sample_row_stats_matches_vllm_formulas(device, backend, monkeypatch):
    x, temps = random_batch(4, 5, 700, device, seed=3)
    if backend == "reference":
        x, temps = x.cpu(), temps.cpu()
        monkeypatch.setattr(dkv, "token_stats_partial", _with_backend(dk.token_stats_partial, "reference"))
    argmax, sample, entropy, probs = dkv.sample_row_stats(x, temps, 5, 2024, None)
    f_argmax, f_sample, f_entropy = _formula_row_stats(x.cpu(), temps.cpu(), 5, 2024)
    assert probs is None
    assert torch.equal(argmax.cpu(), f_argmax)
    assert torch.equal(sample.cpu(), f_sample)
    assert ((entropy.cpu() - f_entropy).abs() <= ENTROPY_RTOL * (1 + f_entropy)).all()


def _with_backend(fn, backend):
    return lambda *a, **k: fn(*a, **k, backend=backend)


def test_sample_row_stats_bad_input():
    x = torch.randn(6, 10)
    with pytest.raises(ValueError, match="canvas_len must be an int >= 1"):
        dkv.sample_row_stats(x, torch.ones(2), 0, 1, None)
    with pytest.raises(ValueError, match="temps has 1 entries for 6 rows"):
        dkv.sample_row_stats(x, torch.ones(1), 3, 1, None)
    with pytest.raises(TypeError, match="temps must be a 1-D floating-point tensor"):
        dkv.sample_row_stats(x, torch.ones(2, dtype=torch.int64), 3, 1, None)
    a, s, e, p = dkv.sample_row_stats(x[:0], torch.ones(1), 3, 1, torch.float32)
    assert a.shape == s.shape == e.shape == (0,) and p.shape == (0, 10)


# ------------------------------------------------------------------------------------------------
# entropy-bound acceptance
# ------------------------------------------------------------------------------------------------


def vllm_eb_mask(token_entropy, entropy_bound, stable=False):
    """diffusion_gemma._compiled_sample_step, phase 4, transcribed (= SGLang's ``cumsum - sorted
    <= bound``); also used by tests/test_commit_uniform.py."""
    sorted_ent, sorted_idx = torch.sort(token_entropy, dim=-1, stable=stable)
    cumsum_ent = torch.cumsum(sorted_ent, dim=-1)
    cummax_ent = torch.cummax(sorted_ent, dim=-1).values
    sorted_mask = (cumsum_ent - cummax_ent) <= entropy_bound
    eb_mask = torch.zeros_like(sorted_mask)
    eb_mask.scatter_(1, sorted_idx, sorted_mask)
    return eb_mask


@pytest.mark.parametrize("bound", [0.0, 0.3, 1.0, 5.0, 40.0])
def test_entropy_bound_mask_equals_the_vllm_formula(bound):
    for _ in range(20):
        ent = torch.rand(8, 64) * torch.rand(8, 1) * 3  # distinct almost surely
        got = dkv.entropy_bound_mask(ent, bound)
        assert torch.equal(got, vllm_eb_mask(ent, bound))
        assert got.gather(-1, ent.argmin(-1, keepdim=True)).all()  # the lowest is always accepted


def test_entropy_bound_mask_rule_and_ties():
    ent = torch.tensor([[0.5, 0.125, 0.5, 0.25, 0.5, 3.0]])  # dyadic: every sum is exact
    # ranked: 1, 3, then the tied 0, 2, 4 by index, then 5; sums before: 0, 1/8, 3/8, 7/8, 11/8, 15/8
    assert dkv.entropy_bound_mask(ent, 0.875).tolist() == [[True, True, True, True, False, False]]
    assert dkv.entropy_bound_mask(ent, 0.0).tolist() == [[False, True, False, False, False, False]]
    # ties go by index, as vLLM's formula with a stable sort ranks them
    for bound in (0.0, 0.125, 0.375, 0.875, 1.375, 1.875, 10.0):
        assert torch.equal(dkv.entropy_bound_mask(ent, bound), vllm_eb_mask(ent, bound, stable=True))
    # per-row bounds; any leading shape
    ent3 = torch.rand(2, 3, 16)
    bounds = torch.tensor([0.0, 1.0])[:, None, None]
    got = dkv.entropy_bound_mask(ent3, bounds)
    assert torch.equal(got[0], dkv.entropy_bound_mask(ent3[0], 0.0))
    assert torch.equal(got[1], dkv.entropy_bound_mask(ent3[1], 1.0))
    with pytest.raises(ValueError, match="bound must be a number >= 0"):
        dkv.entropy_bound_mask(ent, -1.0)


# ------------------------------------------------------------------------------------------------
# the vllm.general_plugins entry point
# ------------------------------------------------------------------------------------------------


def _fake_vllm(root: Path, version: str) -> None:
    pkg = root / "vllm" / "model_executor" / "models"
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm" / "model_executor", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "diffusion_gemma_sampler.py").write_text("def sample_row_stats(*args):\n    return 'vllm'\n")
    (pkg / "diffusion_gemma.py").write_text("from .diffusion_gemma_sampler import sample_row_stats\n")
    info = root / f"vllm-{version.split('+')[0]}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")


@pytest.fixture
def clean_vllm_modules(monkeypatch):
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
        del sys.modules[name]


@pytest.mark.parametrize("model_first", [False, True])
def test_plugin_patches_vllm_033(tmp_path, monkeypatch, clean_vllm_modules, model_first):
    """The sampler module's function, and diffusion_gemma's name for it whether that module was
    imported before the plugin ran or after."""
    _fake_vllm(tmp_path, "0.33.0+cu128")
    monkeypatch.syspath_prepend(str(tmp_path))
    if model_first:
        import vllm.model_executor.models.diffusion_gemma  # noqa: F401
    dkv.register()
    dkv.register()  # idempotent
    import vllm.model_executor.models.diffusion_gemma as model
    import vllm.model_executor.models.diffusion_gemma_sampler as sampler

    assert sampler.sample_row_stats is dkv.sample_row_stats
    assert model.sample_row_stats is dkv.sample_row_stats


@pytest.mark.parametrize("version", ["0.32.1", "0.34.0", "1.33.0"])
def test_plugin_refuses_other_versions(tmp_path, monkeypatch, clean_vllm_modules, version):
    _fake_vllm(tmp_path, version)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match=rf"supports vllm>=0.33,<0.34 .*found vllm {version}$"):
        dkv.register()
    import vllm.model_executor.models.diffusion_gemma_sampler as sampler

    assert sampler.sample_row_stats(1) == "vllm"  # untouched


def test_plugin_without_vllm_is_a_logged_no_op(monkeypatch, caplog, clean_vllm_modules):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with caplog.at_level(logging.INFO, logger=dkv.__name__):
        dkv.register()
    assert "vllm is not installed, nothing patched" in caplog.text
    assert "vllm" not in sys.modules


def test_entry_point_is_declared():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    eps = pyproject["project"]["entry-points"]["vllm.general_plugins"]
    assert eps == {"dllm_kernels": "dllm_kernels.integrations.vllm:register"}


def test_fetcher_reads_one_member_by_ranges(tmp_path, monkeypatch):
    """scripts/fetch_vllm_sampler.py's zip reader (no network: its range reads served from a
    local zip): the member comes back whole, deflated or stored, and only a few small ranges are
    read; a corrupt entry is an error."""
    import zlib

    payload = os.urandom(3000) + b"x" * 20000
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pad/big.bin", os.urandom(200_000), compress_type=zipfile.ZIP_STORED)
        zf.writestr(FETCH.MEMBER, payload, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("pad/after.txt", b"after")
    blob = bytearray(wheel.read_bytes())
    reads = []

    def get(url, start=None, end=None):
        lo = len(blob) - end if start is None else start
        hi = len(blob) if start is None else end + 1
        reads.append(hi - lo)
        return bytes(blob[lo:hi])

    monkeypatch.setattr(FETCH, "_get", get)
    assert FETCH.extract("file") == payload
    assert sum(reads) < 80_000  # the tail, the directory, the header, the data: not the 200 kB
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(FETCH.MEMBER)
    start = info.header_offset + 30 + len(FETCH.MEMBER) + len(info.extra)
    blob[start + 10] ^= 0xFF  # corrupt the deflated data
    with pytest.raises((OSError, zlib.error)):
        FETCH.extract("file")
    with pytest.raises(OSError, match="no vllm/"):
        FETCH.extract("file", member="vllm/missing.py")
