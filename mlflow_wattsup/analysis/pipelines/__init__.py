"""Pipelines as pure functions over files and arrays - the MNI152 tissue data and the
classical baseline, FreeSurfer and FastSurfer log parsers. No MLflow here."""
