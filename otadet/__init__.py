"""otadet: one-stage object detectors trained with Optimal Transport Assignment (OTA, CVPR 2021).

    from otadet import Detector
    model = Detector('ota_tiny.yaml')
    model.train(data='shapes.yaml', epochs=8)
    metrics = model.val()
    results = model.predict('images/')
    path = model.export(format='onnx')
"""

__version__ = "0.1.0"

__all__ = ["Detector", "__version__"]


def __getattr__(name: str):
    # Importing otadet stays cheap (the CLI's `help` needs no torch); Detector loads on first use.
    if name == "Detector":
        from .engine.model import Detector

        return Detector
    raise AttributeError(f"module 'otadet' has no attribute {name!r}")
