"""What every stage uses, with no hsftrain import above it: one-line user errors
(``errors.py``), atomic file writes (``atomic.py``), logging and the run's text log
(``logs.py``), ONNX model metadata (``onnx_metadata.py``), NaN/Inf checks of tensors
(``nonfinite.py``, the only module here that needs torch).
"""
