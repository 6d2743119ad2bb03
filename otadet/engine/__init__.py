"""The engine: what runs a model — training, validation, prediction and export — behind `Detector`."""
