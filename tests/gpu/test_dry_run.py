"""``bash tests/gpu/check.sh --dry-run``: the GPU check's code at tiny sizes on the CPU (float32 against bfloat16),
so that it keeps working where no GPU is; and the check fails when an output is spoilt."""

import os
import subprocess
import sys

import pytest

from .common import Row

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTIONS = ["FreeU", "FSTD tiling", "tiled VAE", "FastComposer", "WebUI stand-in", "FreeU speed", "FSTD speed",
            "tiled VAE speed"]
CHECK_IDS = ["freeu.filter", "freeu.backbone", "freeu.stages", "freeu.unet", "freeu.effect", "freeu.gate", "freeu.neutral",
             "fstd.blend", "fstd.unet", "fstd.batch", "vae.decode", "vae.encode", "vae.tiles", "fc.encode", "fc.fuse",
             "fc.others", "fc.sampling", "fc.before_switch", "fc.at_switch", "webui.freeu", "webui.asd",
             "webui.fastcomposer", "speed.fstd.finite", "speed.fstd.batch", "speed.vae.finite", "speed.vae.tiles"]


def table_rows(table: str):
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| section |")]
    return [Row(*[cell.strip() for cell in line.strip("|").split(" | ")]) for line in lines]


def dry_run(folder, *args):
    """Runs the check as CI does (this Python, its packages); returns the process and the table file's text."""
    out = folder / "gpu_check.md"
    env = {**os.environ, "FREEDIFF_GPU_PYTHON": sys.executable, "FREEDIFF_GPU_SITE": str(folder / "site")}
    proc = subprocess.run(["bash", "tests/gpu/check.sh", "--dry-run", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return dry_run(tmp_path_factory.mktemp("gpu_check"))


def test_every_section_runs_and_passes(full_run):
    proc, table = full_run
    rows = table_rows(table)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert [r for r in rows if r.result.startswith(("FAIL", "skipped"))] == []
    assert sorted({r.section for r in rows}) == sorted(SECTIONS)
    ran = {r.what.split("`")[1] for r in rows if r.what.startswith("`")}
    assert sorted(set(CHECK_IDS) - ran) == []
    assert {r.dtype for r in rows if r.what.startswith("`") and "freeu.stages" not in r.what} == {"bf16"}
    assert "# GPU check (dry run)" in table and "**PASS**" in table
    # the printed table is the written one
    assert table.strip().splitlines()[-1] in proc.stdout


@pytest.mark.parametrize("section, corrupt, result", [
    ("vae", "vae.decode=nan", "FAIL: NaN/Inf"),
    ("fstd", "fstd.blend=scale", "FAIL: beyond bound"),
    ("fastcomposer", "fc.before_switch=scale", "FAIL: not identical"),
])
def test_a_spoilt_output_fails_the_check(tmp_path, section, corrupt, result):
    proc, table = dry_run(tmp_path, "--sections", section, "--corrupt", corrupt)
    failed = [r for r in table_rows(table) if r.result.startswith("FAIL")]
    assert proc.returncode == 1
    assert [(r.what.split("`")[1], r.result) for r in failed] == [(corrupt.split("=")[0], result)]
    assert "**FAIL**" in table


def test_a_corrupt_target_that_never_runs_fails(tmp_path):
    proc, table = dry_run(tmp_path, "--sections", "vae", "--corrupt", "vae.no_such_check=nan")
    assert proc.returncode == 1
    assert "no check named vae.no_such_check ran" in table


def test_out_of_time_sections_are_skipped_with_the_reason_and_the_table_is_written(tmp_path):
    proc, table = dry_run(tmp_path, "--budget", "0")
    rows = table_rows(table)
    assert proc.returncode == 0
    assert [r.section for r in rows] == SECTIONS
    assert all(r.result.startswith("skipped: time budget: 0 s of 0 s left") for r in rows)
