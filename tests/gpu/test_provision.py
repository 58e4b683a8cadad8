"""tests/gpu/provision.py: a GPU machine without network gets, from carried wheels, what it lacks and only that."""

import base64
import hashlib
import zipfile

from . import provision


def write_wheel(folder, name: str, version: str):
    """A minimal pure-Python wheel of a package ``name`` with one module of the same name."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)


def test_install_adds_only_what_is_missing_from_the_wheels(tmp_path, monkeypatch, capsys):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    write_wheel(wheels, "freediff_probe", "1.0")
    write_wheel(wheels, "torch", "0.0.1")  # must not replace the torch this Python has
    monkeypatch.setattr(provision, "packages", lambda: [("freediff_probe", "1.0", False), ("torch", "0.0.1", True),
                                                        ("freediff_absent", "2.0", False)])
    assert provision.install(str(target), str(wheels)) == 0
    assert (target / "freediff_probe" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    assert not (target / "torch").exists()
    out = capsys.readouterr().out
    assert "adding to" in out and "freediff_probe==1.0" in out and "torch==" not in out.split("not available")[0]
    assert "not available here: freediff_absent==2.0" in out


def test_every_package_has_a_pin():
    names = [name for name, version, _ in provision.packages()]
    assert "stable-diffusion-sdkit" in names and "k-diffusion" in names and "gradio" in names
    assert all(version for _, version, _ in provision.packages())
