"""Light-weight inference: ONNX Runtime engines, test-time augmentation, ensembles,
uncertainty, hippocampus localisation and writers.

Imports numpy, nibabel, scipy, Pillow and (lazily) onnxruntime and SimpleITK; never
Lightning or torch. The entry point is :func:`hsftrain.inference.api.segment`.
"""
