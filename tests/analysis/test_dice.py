import numpy as np
import pytest
from support.helpers import wattsup

from mlflow_wattsup.analysis.dice import DiceInputError, dice, dice_files, overlap_counts
from mlflow_wattsup.analysis.labels import builtin_names, metric_name, parse_merge, read_lut

nib = pytest.importorskip("nibabel")

SPARSE = [0, 2, 41, 1035, 2035, 11101]


def brute(pred, ref, include_background=False):
    """Dice one label at a time, the slow obvious way."""
    out = {}
    for lab in np.union1d(np.unique(pred), np.unique(ref)):
        if lab == 0 and not include_background:
            continue
        p, r = pred == lab, ref == lab
        out[int(lab)] = 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())
    return out


def volumes(seed=0, shape=(30, 31, 32), dtype=np.int32):
    rng = np.random.default_rng(seed)
    ref = np.array(SPARSE)[rng.integers(0, len(SPARSE), shape)].astype(dtype)
    pred = ref.copy()
    flip = rng.random(shape) < 0.25
    pred[flip] = np.array(SPARSE)[rng.integers(0, len(SPARSE), int(flip.sum()))]
    pred[0, 0, :3] = 77  # in the prediction only: scores 0
    return pred, ref


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, np.int64, np.float32, np.float64])
def test_equals_brute_force_on_sparse_ids(dtype):
    pred, ref = volumes(dtype=dtype)
    res = dice(pred, ref, names={})
    assert {s.label: s.dice for s in res.scores} == brute(pred, ref)
    assert res.by_name()["label_77"] == 0.0


def test_uint8_and_joint_path_and_background():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 5, (20, 20, 20)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.2, 4, ref).astype(np.uint8)
    res = dice(pred, ref, names={}, include_background=True)
    assert {s.label: s.dice for s in res.scores} == brute(pred, ref, include_background=True)
    assert 0 not in dice(pred, ref, names={}).labels


def test_huge_and_negative_ids_take_the_sparse_path():
    pred, ref = volumes()
    big_p = pred.astype(np.int64) * 1_000_003 - 7
    big_r = ref.astype(np.int64) * 1_000_003 - 7
    res = dice(big_p, big_r, names={}, include_background=True)
    expect = {k * 1_000_003 - 7: v for k, v in brute(pred, ref, include_background=True).items()}
    assert {s.label: s.dice for s in res.scores} == pytest.approx(expect)


def test_chunked_and_threaded_counts_match_small_inputs():
    # larger than one chunk so both threads work
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 3000, (80, 80, 80)).astype(np.int32)
    pred = np.where(rng.random(ref.shape) < 0.5, ref, 7)
    labels, n_p, n_r, n_b = overlap_counts(pred, ref)
    assert n_p.sum() == n_r.sum() == ref.size
    i = list(labels).index(7)
    assert n_b[i] == np.logical_and(pred == 7, ref == 7).sum()


def test_labels_option_absent_and_volumes():
    pred, ref = volumes()
    res = dice(pred, ref, labels=[41, 2, 9999], names=builtin_names(), voxel_volume_mm3=0.5)
    assert [s.label for s in res.scores] == [41, 2] and res.absent == (9999,)
    s = res.scores[0]
    assert s.name == "Right-Cerebral-White-Matter"
    assert s.voxels_ref == int((ref == 41).sum()) and s.volume_ref_mm3 == s.voxels_ref * 0.5
    assert s.volume_diff == pytest.approx((s.voxels_pred - s.voxels_ref) / s.voxels_ref)


def test_merge_maps_cortical_parcels_to_cortex():
    ref = np.array([[[1035, 1002, 3, 0]]])
    pred = np.array([[[1002, 3, 3, 2035]]])
    res = dice(pred, ref, merge=parse_merge("aseg"), names=builtin_names())
    by = res.by_name()
    assert by["Left-Cerebral-Cortex"] == 1.0  # every 1000s parcel is cortex after the merge
    assert by["Right-Cerebral-Cortex"] == 0.0
    assert parse_merge("1000-1999:3,80:77") == [(1000, 1999, 3), (80, 80, 77)]
    with pytest.raises(ValueError, match="FIRST"):
        parse_merge("a:b")


def test_names_are_valid_mlflow_keys(tmp_path):
    from mlflow.utils.validation import _validate_metric_name

    names = builtin_names()
    for label in names:
        _validate_metric_name(f"dice/{metric_name(label, names)}")
    lut = tmp_path / "lut.txt"
    lut.write_text("# comment\n17  Left-Hippocampus 220 216 20 0\n9000 weird&name(x) 1 2 3 0\n")
    names = read_lut(lut)
    assert metric_name(17, names) == "Left-Hippocampus" and metric_name(9000, names) == "weird_name_x_"
    assert metric_name(5, {}) == "label_5"


def save(path, data, affine=None, mgz=False):
    affine = np.eye(4) if affine is None else affine
    img = (nib.MGHImage if mgz else nib.Nifti1Image)(data, affine)
    nib.save(img, str(path))
    return path


def test_files_same_grid_required(tmp_path):
    pred, ref = volumes(dtype=np.int32)
    p = save(tmp_path / "pred.mgz", pred, mgz=True)
    r = save(tmp_path / "ref.nii.gz", ref)
    assert {s.label: s.dice for s in dice_files(p, r, names={}).scores} == brute(pred, ref)
    bad_shape = save(tmp_path / "small.nii", ref[:-1])
    with pytest.raises(DiceInputError) as info:
        dice_files(p, bad_shape)
    msg = str(info.value)
    assert (
        "pred.mgz" in msg
        and "small.nii" in msg
        and "30x31x32" in msg
        and "29x31x32" in msg
        and "\n" not in msg
    )
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(DiceInputError, match="different affines"):
        dice_files(p, save(tmp_path / "shift.nii.gz", ref, shifted))
    with pytest.raises(DiceInputError, match="non-integer"):
        dice_files(save(tmp_path / "float.nii.gz", pred.astype(np.float32) + 0.5), r)
    with pytest.raises(DiceInputError, match="no such file"):
        dice_files(tmp_path / "missing.nii.gz", r)


def test_cli_dice_matches_brute_force_and_logs(tmp_path, tracking_uri, client, experiment):
    pred, ref = volumes(dtype=np.int16)
    p = save(tmp_path / "pred.nii.gz", pred)
    r = save(tmp_path / "ref.nii.gz", ref)
    out = tmp_path / "dice.csv"
    res = wattsup("dice", str(p), str(r), "--experiment", experiment, "--csv", str(out))
    assert res.returncode == 0, res.stderr
    import csv

    rows = list(csv.DictReader(out.open()))
    truth = brute(pred, ref)
    assert {int(x["label"]): float(x["dice"]) for x in rows} == truth
    assert {2, 41, 1035, 2035, 11101, 77} == set(truth)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    m = run.data.metrics
    assert m["dice/Left-Cerebral-White-Matter"] == pytest.approx(truth[2])
    assert m["dice/ctx-rh-insula"] == pytest.approx(truth[2035])
    assert m["dice/label_11101"] == pytest.approx(truth[11101])
    assert m["dice_mean"] == pytest.approx(np.mean(list(truth.values())))
    assert run.data.tags["wattsup.dice.labels"] == ",".join(str(k) for k in sorted(truth))


def test_cli_dice_bad_input_one_line(tmp_path):
    pred, ref = volumes()
    p = save(tmp_path / "a.nii.gz", pred)
    q = save(tmp_path / "b.nii.gz", ref[:, :, :5])
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all")
    for args in (
        [str(p), str(q)],
        [str(p), str(junk)],
        [str(p), str(p), "--labels", "x,y"],
        [str(p), str(p), "--merge", "bad"],
    ):
        r = wattsup("dice", *args, "--no-log")
        assert r.returncode == 2, r.stdout + r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
