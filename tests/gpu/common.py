"""What the GPU check's sections share: sizes, the report table, the time guard, models and precision."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch

UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UNetSpec:
    """A U-Net family as the check builds it: ``build()`` on the current default device."""

    name: str
    build: Callable[[], torch.nn.Module]
    context_dim: int
    adm_dim: int  # SDXL's pooled-text + size vector (``y``); 0 without one
    stage_blocks: Tuple[Tuple[int, ...], Tuple[int, ...]]  # FreeU's stage 1 and stage 2 output blocks
    freeu_preset: str


@dataclass(frozen=True)
class Profile:
    dry_run: bool
    device: str
    half_dtypes: Tuple[torch.dtype, ...]  # compared with float32
    speed_dtype: torch.dtype
    unets: Tuple[UNetSpec, ...]
    vae_config: dict  # TinyAutoencoderKL keyword arguments
    check_latent: int  # U-Net checks (latent px)
    check_batch: int
    fstd_check_latent: int
    tile: int  # FSTD tile and offset range (latent px)
    offset_range: int
    vae_check_latent: int
    vae_check_tile: int  # tiled decode (latent px); tiled encode uses 8× this in image px
    fastcomposer_full: bool  # ViT-L/14 and width 768, else the tests' tiny release sizes
    webui_full: bool  # full-size SD1.5 U-Net and VAE in the stand-in, else tiny ones
    freeu_bench_latents: Dict[str, int]
    freeu_repeats: Tuple[int, int]  # timed, warm-up
    fstd_sides: Tuple[int, ...]  # image px
    tile_batches: Tuple[int, ...]
    fstd_steady_steps: int
    vae_side: int  # image px
    estimates: Dict[str, float]  # seconds per section, for the time guard


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    what: str
    dtype: str
    measured: str
    bound: str
    result: str


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (inf when ``ref`` is zero and ``out`` is not)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class Report:
    """The rows of the one table, written to ``path`` (markdown) after every row and echoed to stdout.
    ``corrupt`` ({check id: "nan" | "scale"}) spoils the named check's half-precision output before it is
    judged, to show that the check fails."""

    def __init__(self, path: str, header: List[str], corrupt: Dict[str, str]):
        self.path, self.header, self.corrupt = path, header, dict(corrupt)
        self.rows: List[Row] = []
        self.footer: List[str] = []
        self.write()

    @property
    def failed(self) -> List[Row]:
        return [r for r in self.rows if r.result.startswith("FAIL")]

    @property
    def skipped(self) -> List[Row]:
        return [r for r in self.rows if r.result.startswith("skipped")]

    def add(self, section, what, dtype, measured, bound="", result="info") -> Row:
        row = Row(section, what, DTYPE_NAMES.get(dtype, dtype or ""), measured, bound, result)
        self.rows.append(row)
        print(f"[{row.result}] {section}: {what} ({row.dtype}) {measured} {bound}", flush=True)
        self.write()
        return row

    def _spoil(self, check_id: str, t: torch.Tensor) -> torch.Tensor:
        how = self.corrupt.pop(check_id, None)
        if how is None:
            return t
        t = t.detach().clone()
        if how == "nan":
            t.view(-1)[0] = float("nan")
        else:
            t = t * 1.5
        return t

    def compare(self, section, check_id, what, out, ref, dtype, k) -> bool:
        """``out`` (half precision) against ``ref`` (float32): NaN/Inf or a relative error over k·u fails."""
        out = self._spoil(check_id, out)
        bound = k * UNIT_ROUNDOFF[dtype]
        bound_text = f"≤ {bound:.1e} ({k:g}u)"
        if not all_finite(out):
            self.add(section, f"`{check_id}` {what}", dtype, "NaN/Inf in the output", bound_text, "FAIL: NaN/Inf")
            return False
        err = relative_error(out, ref)
        ok = err <= bound
        self.add(section, f"`{check_id}` {what}", dtype, f"rel err {err:.2e}", bound_text, "ok" if ok else "FAIL: beyond bound")
        return ok

    def identical(self, section, check_id, what, a, b, dtype) -> bool:
        """``a`` must equal ``b`` bit for bit (same dtype and device)."""
        a = self._spoil(check_id, a)
        same = torch.equal(a, b)
        measured = "bit-identical" if same else f"differs (rel {relative_error(a, b):.1e})"
        self.add(section, f"`{check_id}` {what}", dtype, measured, "bit-identical", "ok" if same else "FAIL: not identical")
        return same

    def finite(self, section, check_id, what, tensors, dtype, measured="") -> bool:
        tensors = [self._spoil(check_id, tensors[0]), *tensors[1:]]
        ok = all_finite(*tensors)
        self.add(section, f"`{check_id}` {what}", dtype, measured or ("finite" if ok else "NaN/Inf"), "no NaN/Inf",
                 "ok" if ok else "FAIL: NaN/Inf")
        return ok

    def expect(self, section, check_id, what, ok, measured, bound, dtype=None) -> bool:
        self.add(section, f"`{check_id}` {what}", dtype, measured, bound, "ok" if ok else "FAIL")
        return ok

    def skip(self, section, what, reason):
        self.add(section, what, None, "", "", f"skipped: {reason}")

    def write(self):
        lines = list(self.header) + ["", "| section | what | dtype | measured | bound / goal | result |",
                                         "|---|---|---|---|---|---|"]
        for r in self.rows:
            cells = [r.section, r.what, r.dtype, r.measured, r.bound, r.result]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        lines += [""] + self.footer
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.path)


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left()

    def reason(self, estimate: float) -> str:
        return f"time budget: {max(self.left(), 0):.0f} s of {self.seconds:.0f} s left, this needs about {estimate:.0f} s"


# ------------------------------------------------------------------------------------------------
# models, precision
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def precision(device: str, dtype: torch.dtype):
    """Inference in ``dtype`` as the WebUI runs its half-precision models (autocast; off for float32)."""
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        yield


class Models:
    """One float32 master of each model on the device (built there, random weights) and its half copies."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self._cache: Dict[Tuple[str, torch.dtype], torch.nn.Module] = {}

    def _master(self, key: str, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        if (key, torch.float32) not in self._cache:
            with torch.device(self.profile.device):
                self._cache[key, torch.float32] = build().eval().requires_grad_(False)
        return self._cache[key, torch.float32]

    def unet(self, spec: UNetSpec, dtype: torch.dtype) -> torch.nn.Module:
        from tiny_sd import to_webui_precision

        master = self._master(spec.name, spec.build)
        if (spec.name, dtype) not in self._cache:
            self._cache[spec.name, dtype] = to_webui_precision(copy.deepcopy(master), self.profile.device, dtype)
        return self._cache[spec.name, dtype]

    def vae(self, dtype: torch.dtype) -> torch.nn.Module:
        """The VAE in ``dtype`` throughout (the WebUI's half VAE runs without autocast)."""
        from tiny_sd import TinyAutoencoderKL

        master = self._master("VAE", lambda: TinyAutoencoderKL(**self.profile.vae_config))
        if ("VAE", dtype) not in self._cache:
            self._cache["VAE", dtype] = copy.deepcopy(master).to(dtype=dtype)
        return self._cache["VAE", dtype]

    def keep_only(self, dtype: torch.dtype):
        """Frees every model not in ``dtype`` (so that memory figures are not inflated by the references)."""
        for key in [k for k in self._cache if k[1] != dtype]:
            del self._cache[key]
        if self.profile.device.startswith("cuda"):
            torch.cuda.empty_cache()


def unet_inputs(spec: UNetSpec, latent: int, batch: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """U-Net keyword inputs: latent ``x`` (float32, as a sampler holds it), timesteps, context in the model's dtype
    (the WebUI's text encoder runs in it), SDXL's ``y``."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(x=torch.randn(batch, 4, latent, latent, generator=g).to(device),
                  timesteps=torch.full((batch,), 500, device=device),
                  context=torch.randn(batch, 77, spec.context_dim, generator=g).to(device, dtype))
    if spec.adm_dim:
        inputs["y"] = torch.randn(batch, spec.adm_dim, generator=g).to(device, dtype)
    return inputs


def requires(*modules: str):
    """Imports ``modules``; any failure (not only ImportError: a package too old or too new for another one can raise
    anything on import) comes out as ImportError, so that the section is skipped as one this machine cannot run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise ImportError(f"{type(e).__name__}: {e}", name=name) from e


@dataclass
class Run:
    profile: Profile
    report: Report
    budget: Budget
    models: Models
    sections: Tuple[str, ...]
    section_seconds: Dict[str, float] = field(default_factory=dict)

    def section(self, name: str, title: str, fn: Callable[["Run"], None]):
        """Runs one section under the time guard; an import that fails skips it (a missing package on this
        machine), any other exception fails it."""
        if name not in self.sections:
            return
        estimate = self.profile.estimates[name]
        if not self.budget.fits(estimate):
            self.report.skip(title, "section", self.budget.reason(estimate))
            return
        start = time.perf_counter()
        try:
            fn(self)
        except ImportError as e:
            self.report.skip(title, "section", f"cannot import {e.name or e} ({e}); see tests/gpu/check.sh --help")
        except Exception as e:  # a crash in half precision is a finding, not an abort: the other sections still run
            traceback.print_exc()
            self.report.add(title, "section", None, f"{type(e).__name__}: {str(e)[:300]}", "", "FAIL: error")
        finally:
            if self.profile.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            self.section_seconds[name] = time.perf_counter() - start
            print(f"-- {title}: {self.section_seconds[name]:.1f} s", flush=True)
