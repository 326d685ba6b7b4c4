"""The images a run reads, as MLflow dataset inputs (``mlflow.log_input``).

A run's Overview lists them under "Datasets" and the experiment's runs table shows them in its
Dataset column; ``search_runs(filter_string="dataset.digest = '...'")`` finds every run that
processed the same data. Each input has a name (what it is), a source (where it was read:
the file's absolute path) and a content digest:

- an image read as-is from a file (a T1, a reference segmentation, Colin27): the first 16 hex
  digits of the SHA-256 of the file's bytes, read once in 1 MiB blocks (the volume is not
  decoded for this: 20-50 ms for a 12 MB 256^3 ``.mgz`` that takes 1.2-1.6 s to decode);
- an image the pipeline builds in memory (the MNI152 template resampled by nilearn, the tissue
  reference made from its probability maps): the same over the voxel array as processed (dtype,
  shape, bytes), so two runs share a digest exactly when they computed on the same voxels.

Nothing here downloads anything; a missing file is a one-line ``FileNotFoundError``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_wattsup.sink import keys

DIGEST_HEX = 16  # MLflow's dataset digest column holds 36 characters; 64 bits identify a volume
BLOCK_BYTES = 1 << 20

CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: training, evaluation, reference...


def file_digest(path: str | os.PathLike) -> str:
    """First :data:`DIGEST_HEX` hex digits of the SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK_BYTES):
                h.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (dataset input)") from None
    return h.hexdigest()[:DIGEST_HEX]


def array_digest(*arrays) -> str:
    """The same over numpy arrays (dtype and shape included, so a reshaped copy differs)."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:DIGEST_HEX]


def image_name(path: str | os.PathLike) -> str:
    """``sub01/T1.nii.gz`` -> ``T1``: the file name without its image extension(s)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".mgz", ".mgh", ".gz"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class ImageInput:
    """One image a run read: ``name`` (what it is), ``source`` (absolute path of the file read),
    ``digest``, ``context`` (``training``, ``evaluation``, ``input``, ``reference``...)."""

    name: str
    source: str
    digest: str
    context: str
    digest_kind: str = "file-sha256"

    def dataset(self):
        """The MLflow dataset (metadata only: the volume itself is not logged)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        return MetaDataset(LocalArtifactDatasetSource(self.source), name=self.name, digest=self.digest)

    def input_fields(self) -> dict:
        """The dataset input as :meth:`~mlflow_wattsup.sink.transport.Store.log_inputs` takes it:
        the fields :meth:`dataset` gives MLflow (a ``local`` source, no schema or profile)."""
        import json

        return {
            "name": self.name,
            "digest": self.digest,
            "source_type": "local",
            "source": json.dumps({"uri": self.source}),
            "tags": {CONTEXT_TAG: self.context, keys.DIGEST: self.digest_kind},
        }


def image_file(path: str | os.PathLike, context: str = "input", name: str | None = None) -> ImageInput:
    """An image read as-is from ``path`` (digest of its bytes)."""
    p = Path(path).expanduser().resolve()
    return ImageInput(name or image_name(p), str(p), file_digest(p), context)


def image_array(name: str, source: str | os.PathLike, arrays: Sequence, context: str = "input") -> ImageInput:
    """An image built in memory from ``source`` (digest of the voxel arrays as processed)."""
    return ImageInput(name, str(Path(source).resolve()), array_digest(*arrays), context, "array-sha256")


def log_images(client, run_id: str, images: Iterable[ImageInput]) -> None:
    """Log ``images`` as the run's dataset inputs, in one call. ``client``: our
    :class:`~mlflow_wattsup.sink.transport.Store` (over HTTP: no MLflow import) or an
    ``MlflowClient``."""
    images = list(images)
    if not images:
        return
    from mlflow_wattsup.sink.transport import Store

    if isinstance(client, Store):
        client.log_inputs(run_id, [im.input_fields() for im in images])
        return
    from mlflow.entities import DatasetInput, InputTag

    inputs = [
        DatasetInput(
            im.dataset()._to_mlflow_entity(),
            tags=[InputTag(CONTEXT_TAG, im.context), InputTag(keys.DIGEST, im.digest_kind)],
        )
        for im in images
    ]
    client.log_inputs(run_id, datasets=inputs)
