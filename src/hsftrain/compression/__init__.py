"""Smaller and faster models: gradual magnitude pruning during fine-tuning (``pruning.py``,
``sparsity.py``), channel pruning of a U-Net (``structured.py``) and int8 quantization of an
exported ONNX model (``quantize.py``).
"""
