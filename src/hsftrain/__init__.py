"""hsftrain: hippocampal-subfield segmentation training, export and inference."""

__version__ = "0.1.0"
