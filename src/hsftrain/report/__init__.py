"""The cohort QC report of a segmentation output (``hsftrain report``): a sortable table
with outlier marks, each crop's QC figure and niivue viewer, ratings saved as
``qc_ratings.tsv``. numpy, nibabel and matplotlib only (never torch)."""
