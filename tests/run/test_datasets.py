"""Dataset inputs: the fields our REST path sends are the ones MLflow's own entity carries, and
both paths log the same input."""

from mlflow_wattsup.run.datasets import CONTEXT_TAG, image_file, log_images
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.transport import Store


def test_the_rest_fields_match_mlflows_entity(tmp_path):
    f = tmp_path / "T1.mgz"
    f.write_bytes(b"voxels")
    im = image_file(f, "reference")
    e = im.dataset()._to_mlflow_entity()
    fields = im.input_fields()
    assert (fields["name"], fields["digest"], fields["source_type"], fields["source"]) == (
        e.name,
        e.digest,
        e.source_type,
        e.source,
    )
    assert e.schema is None and e.profile is None
    assert fields["tags"] == {CONTEXT_TAG: "reference", keys.DIGEST: "file-sha256"}


def test_through_the_store_and_through_the_client_alike(client, experiment, tmp_path, tracking_uri):
    f = tmp_path / "T1.mgz"
    f.write_bytes(b"voxels")
    exp = client.create_experiment(experiment)
    a, b = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    log_images(Store(tracking_uri=tracking_uri), a, [image_file(f)])
    log_images(client, b, [image_file(f)])

    def inputs(run_id):
        return [
            (
                i.dataset.name,
                i.dataset.digest,
                i.dataset.source_type,
                i.dataset.source,
                {t.key: t.value for t in i.tags},
            )
            for i in client.get_run(run_id).inputs.dataset_inputs
        ]

    assert inputs(a) == inputs(b) and len(inputs(a)) == 1
