"""Export (ONNX), pruning and quantization. Imports torch; never imported by inference."""
