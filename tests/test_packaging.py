"""A non-editable install must still find cfg/ and data/ (shipped as otadet/assets/{cfg,data})."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_cfg_and_data_and_finds_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("otadet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml_file in [*ROOT.glob("cfg/*.yaml"), *ROOT.glob("data/*.yaml")]:
        assert f"otadet/assets/{yaml_file.parent.name}/{yaml_file.name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)

    # Unpacked alone (no checkout beside it), the package resolves its YAMLs inside itself.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from otadet.utils.paths import asset_dir, find_asset; "
        "print(asset_dir('cfg')); print(find_asset('ota_r50.yaml', 'cfg')); print(find_asset('shapes.yaml', 'data'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    lines = out.stdout.split()
    assert lines[0] == str(site / "otadet" / "assets" / "cfg")
    assert lines[1] == str(site / "otadet" / "assets" / "cfg" / "ota_r50.yaml")
    assert lines[2] == str(site / "otadet" / "assets" / "data" / "shapes.yaml")
