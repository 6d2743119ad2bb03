"""otadet packaging. cfg/ and data/ ship inside the package as otadet/assets/{cfg,data}
(see otadet.utils.paths.asset_dir), so a non-editable install finds them too."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = next(
    line.split('"')[1] for line in (ROOT / "otadet" / "__init__.py").read_text().splitlines() if line.startswith("__version__")
)

setup(
    name="otadet",
    version=version,
    description="One-stage object detectors trained with Optimal Transport Assignment (OTA, CVPR 2021)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["otadet", "otadet.*"]) + ["otadet.assets.cfg", "otadet.assets.data"],
    package_dir={"otadet.assets.cfg": "cfg", "otadet.assets.data": "data"},
    package_data={"otadet.assets.cfg": ["*.yaml"], "otadet.assets.data": ["*.yaml"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "opencv-python-headless>=4.6",
        "pycocotools>=2.0.6",
        "pyyaml>=6.0",
        "tensorboard>=2.12",
        "tqdm>=4.64",
        "onnx>=1.14",
        "onnxruntime>=1.16",
        "onnxscript>=0.1",
    ],
    # openvino: export format=openvino and its inference (nncf: int8=True for it); the tests run them too.
    extras_require={
        "openvino": ["openvino>=2024.0", "nncf>=2.12"],
        "test": ["pytest>=7", "pot>=0.9", "openvino>=2024.0", "nncf>=2.12"],
    },
    entry_points={"console_scripts": ["otadet=otadet.cli:main"]},
)
