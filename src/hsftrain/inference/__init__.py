"""Light-weight inference: ONNX Runtime engines, test-time augmentation, ensembles,
uncertainty, hippocampus localisation and writers.

Imports numpy, nibabel, scipy and (lazily) onnxruntime, SimpleITK and matplotlib; never
Lightning or torch. The entry point is :func:`hsftrain.inference.api.segment`.
"""
