"""tests/run_tests.sh, the one command that sets the suite up: without Python 3.10/3.11 it stops at once with one
line saying what to install (the pins have no wheels for 3.12+), before it creates anything."""

import os
import stat
import subprocess
import sys

from harness import ROOT


def test_other_python_versions_are_refused_in_one_line(tmp_path):
    fake = tmp_path / "python3.12"
    # an interpreter that says it is 3.12 (this one, with sys.version_info replaced for the code it runs)
    fake.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "Python 3.12.1"; exit 0; fi
if [ "$1" = "-c" ]; then
  exec {sys.executable} -c "import sys; sys.version_info = (3, 12, 1, 'final', 0); exec(sys.argv[1])" "$2"
fi
exec {sys.executable} "$@"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": str(fake), "FREEDIFF_VENV": str(venv)}
    r = subprocess.run(["bash", os.path.join(ROOT, "tests", "run_tests.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs Python 3.10 or 3.11 (found: Python 3.12.1)" in lines[0]
    assert "install python3.11" in lines[0]
    assert not venv.exists()
