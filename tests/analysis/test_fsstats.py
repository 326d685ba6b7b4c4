"""FreeSurfer-format stats files (aseg.stats, aseg+DKT.stats, ?h.aparc.DKTatlas[.mapped].stats)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.stats_files import (
    ASEG,
    DKT,
    DKT_IDS,
    thickness_base,
    write_aseg_stats,
    write_fastsurfer_segstats,
    write_parc_stats,
)

from mlflow_wattsup.analysis import fsstats
from mlflow_wattsup.analysis.fsstats import StatsFormatError


def test_freesurfer_aseg_stats(tmp_path):
    p = write_aseg_stats(tmp_path / "stats" / "aseg.stats")
    t = fsstats.read_volume_stats(p)
    assert t.program == "mri_segstats"
    assert t.columns[:5] == ["Index", "SegId", "NVoxels", "Volume_mm3", "StructName"]
    vols = fsstats.volumes_mm3(t)
    assert vols == {name: pytest.approx(v) for _, name, v in ASEG}
    assert vols["5th-Ventricle"] == 0.0  # --empty rows are kept
    e = t.measures["eTIV"]
    assert (e.name, e.value, e.unit) == ("EstimatedTotalIntraCranialVol", 1464199.032007, "mm^3")
    assert t.measures["BrainSegVol-to-eTIV"].unit == "unitless"
    assert t.measures["lhSurfaceHoles"].value == 3
    assert t.rows[0]["SegId"] == 4.0 and t.lines["Left-Lateral-Ventricle"] > 40


def test_fastsurfer_aseg_dkt_stats_with_cortical_parcels(tmp_path):
    vols = {"Left-Hippocampus": 4123.4, "ctx-lh-insula": 6543.2, "ctx-rh-insula": 6400.0}
    ids = {
        "Left-Hippocampus": 17,
        "ctx-lh-insula": DKT_IDS["insula"],
        "ctx-rh-insula": DKT_IDS["insula"] + 1000,
    }
    p = write_fastsurfer_segstats(tmp_path / "aseg+DKT.stats", vols, ids)
    t = fsstats.read_volume_stats(p)
    assert t.program == "segstats.py" and t.header["FastSurfer_version"] == "2.4.2"
    assert fsstats.volumes_mm3(t) == pytest.approx(vols)
    assert t.column("SegId")["ctx-rh-insula"] == 2035
    assert t.measures["BrainSegVol"].value == pytest.approx(1118981.573888)


def test_parcellation_stats_thickness_named_as_volume_labels(tmp_path):
    th = thickness_base("lh")
    t = fsstats.read_parc_stats(write_parc_stats(tmp_path / "lh.aparc.DKTatlas.stats", "lh", th))
    assert t.program == "mris_anatomical_stats" and fsstats.hemisphere(t) == "lh"
    got = fsstats.thickness_mm(t)
    assert got == pytest.approx({f"ctx-lh-{k}": v for k, v in th.items()})
    assert len(got) == 31
    # three measures share the name Cortex: kept by key
    assert {"NumVert", "WhiteSurfArea", "MeanThickness", "eTIV"} <= set(t.measures)
    assert t.measures["MeanThickness"].unit == "mm"
    assert t.column("NumVert")["caudalanteriorcingulate"] == 3000


def test_fastsurfer_mapped_stats_with_a_missing_region(tmp_path):
    """FastSurfer's recon-surf writes ?h.aparc.DKTatlas.mapped.stats with the DKT names; a region
    no vertex carries has no row, and the subject reader prefers the mapped file."""
    subj = tmp_path / "sub-01"
    th_rh = {k: v for k, v in thickness_base("rh").items() if k != "transversetemporal"}
    write_parc_stats(
        subj / "stats" / "lh.aparc.DKTatlas.mapped.stats", "lh", thickness_base("lh"), mapped=True
    )
    write_parc_stats(subj / "stats" / "rh.aparc.DKTatlas.mapped.stats", "rh", th_rh, mapped=True)
    write_parc_stats(subj / "stats" / "lh.aparc.DKTatlas.stats", "lh", {k: 9.9 for k in DKT})  # FS's atlas
    write_fastsurfer_segstats(subj / "stats" / "aseg+DKT.stats", {"Left-Hippocampus": 4000.0})
    s = fsstats.read_subject(subj)
    assert s.thickness_files == [
        "stats/lh.aparc.DKTatlas.mapped.stats",
        "stats/rh.aparc.DKTatlas.mapped.stats",
    ]
    assert len(s.thickness_mm) == 61 and "ctx-rh-transversetemporal" not in s.thickness_mm
    assert s.thickness_mm["ctx-lh-insula"] == thickness_base("lh")["insula"]  # not the 9.9 of the other file
    assert s.volume_file == "stats/aseg+DKT.stats" and s.volumes_mm3 == {"Left-Hippocampus": 4000.0}
    assert s.volume_missing is None and s.thickness_missing is None


def test_subject_without_surfaces_says_why(tmp_path):
    subj = tmp_path / "seg_only"
    write_fastsurfer_segstats(subj / "stats" / "aseg+DKT.stats", {"Left-Hippocampus": 4000.0})
    s = fsstats.read_subject(subj)
    assert s.thickness_mm == {} and s.thickness_files == []
    assert "--seg_only" in s.thickness_missing and "lh/rh" in s.thickness_missing
    one = tmp_path / "one_hemi"
    write_parc_stats(one / "stats" / "lh.aparc.DKTatlas.stats", "lh", thickness_base("lh"))
    s = fsstats.read_subject(one)
    assert len(s.thickness_mm) == 31 and s.thickness_missing.startswith("no rh surface stats")
    assert "stats/aseg.stats" in s.volume_missing
    empty = fsstats.read_subject(tmp_path / "nothing")
    assert "not a directory" in empty.volume_missing


def _lines(path):
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ls[:-3], "'# NRows 22' but the table has 19 row(s)"),
        (lambda ls: ls[:-1] + [" ".join(ls[-1].split()[:-3])], "7 fields, but '# ColHeaders' (line"),
        (lambda ls: ls[:-1] + [ls[-1].replace("CC_Posterior", "CC_Posterior extra")], "11 fields"),
        (lambda ls: ls[:-1] + [ls[-1].replace(" 950 ", " n/a ")], "NVoxels is 'n/a', not a number"),
        (lambda ls: [x for x in ls if not x.startswith("# ColHeaders")], "before any '# ColHeaders'"),
        (
            lambda ls: [x for x in ls if x.startswith("#") and not x.startswith("# ColHeaders")],
            "no '# ColHeaders'",
        ),
        (lambda ls: [x.replace(", 1464199.032007,", ", big,") for x in ls], "'# Measure eTIV' value 'big'"),
        (lambda ls: [x.replace("Mask Volume, ", "") for x in ls], "4 comma-separated fields"),
        (lambda ls: ls + [ls[-1]], "appears twice"),
        (
            lambda ls: [x.replace("Volume_mm3 StructName", "Volume StructName") for x in ls],
            "no Volume_mm3 column",
        ),
    ],
)
def test_malformed_volume_stats_name_the_file_and_line(tmp_path, edit, message):
    p = write_aseg_stats(tmp_path / "aseg.stats")
    lines = edit(_lines(p))
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(StatsFormatError) as exc:
        fsstats.read_volume_stats(p)
    text = str(exc.value)
    assert message in text and text.startswith(str(p)) and "\n" not in text
    lineno = text[len(str(p)) :].split(":")[1]
    if lineno.strip().isdigit():  # the line named is the offending one
        assert 1 <= int(lineno) <= len(lines)


def test_wrong_kind_of_file_and_missing_file(tmp_path):
    aseg = write_aseg_stats(tmp_path / "aseg.stats")
    with pytest.raises(StatsFormatError, match=r"aseg.stats:\d+: no ThickAvg column"):
        fsstats.read_parc_stats(aseg)
    with pytest.raises(StatsFormatError, match="nope.stats: no such file"):
        fsstats.read_volume_stats(tmp_path / "nope.stats")
    nohemi = write_parc_stats(tmp_path / "x.stats", "lh", {"insula": 3.0})
    nohemi.write_text(nohemi.read_text().replace("# hemi lh\n", ""))
    with pytest.raises(StatsFormatError, match="cannot tell the hemisphere"):
        fsstats.thickness_mm(fsstats.read_parc_stats(nohemi))
    liar = tmp_path / "s" / "stats" / "rh.aparc.DKTatlas.stats"
    write_parc_stats(liar, "lh", {"insula": 3.0})
    with pytest.raises(StatsFormatError, match="says '# hemi lh' but its name is rh"):
        fsstats.read_subject(tmp_path / "s")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_read_or_fail_with_one_line(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "aseg.stats"
    p.write_bytes(b"# ColHeaders Index SegId NVoxels Volume_mm3 StructName\n" + data)
    try:
        t = fsstats.read_volume_stats(p)
    except StatsFormatError as exc:
        assert "\n" not in str(exc) and str(p) in str(exc)
    else:
        assert all(isinstance(v, float) for v in fsstats.volumes_mm3(t).values())
