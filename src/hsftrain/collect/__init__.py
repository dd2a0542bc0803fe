"""The retraining loop's data step: segmentation outputs + quality ratings -> training pairs.

``outputs`` finds each segmented crop of a ``hsftrain segment`` folder (both layouts),
``ratings`` reads and writes ``qc_ratings.tsv``, ``api`` writes the pairs and their
manifest (``hsftrain data collect``).
"""
