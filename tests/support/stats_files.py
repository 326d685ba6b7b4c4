"""Write FreeSurfer-format stats files the way the real programs lay them out, for tests.

Layouts read from the programs' published outputs and sources: FreeSurfer 7.4 ``mri_segstats``
(``stats/aseg.stats``) and ``mris_anatomical_stats`` (``stats/?h.aparc.DKTatlas.stats``), and
FastSurfer 2.x ``FastSurferCNN/segstats.py`` (``stats/aseg+DKT.stats``; ``recon-surf.sh`` runs
``mris_anatomical_stats`` on its mapped annotation for ``stats/?h.aparc.DKTatlas.mapped.stats``).
Values are plausible adult numbers, not any real subject's.
"""

from __future__ import annotations

from pathlib import Path

# the 31 DKT cortical regions, in mris_anatomical_stats' colour-table order
DKT = (
    "caudalanteriorcingulate caudalmiddlefrontal cuneus entorhinal fusiform inferiorparietal "
    "inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal lingual "
    "medialorbitofrontal middletemporal parahippocampal paracentral parsopercularis parsorbitalis "
    "parstriangularis pericalcarine postcentral posteriorcingulate precentral precuneus "
    "rostralanteriorcingulate rostralmiddlefrontal superiorfrontal superiorparietal "
    "superiortemporal supramarginal transversetemporal insula"
).split()
DKT_IDS = {  # FreeSurferColorLUT ctx-lh-* ids (rh: + 1000)
    name: i
    for name, i in zip(
        DKT,
        [1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015, 1016, 1017]
        + [1018, 1019, 1020, 1021, 1022, 1023, 1024, 1025, 1026, 1027, 1028, 1029, 1030, 1031, 1034, 1035],
        strict=True,
    )
}
# aseg structures (SegId, name, plausible volume mm^3)
ASEG = [
    (4, "Left-Lateral-Ventricle", 7200.0),
    (5, "Left-Inf-Lat-Vent", 310.0),
    (7, "Left-Cerebellum-White-Matter", 14100.0),
    (8, "Left-Cerebellum-Cortex", 52000.0),
    (10, "Left-Thalamus", 7600.0),
    (11, "Left-Caudate", 3400.0),
    (12, "Left-Putamen", 4700.0),
    (13, "Left-Pallidum", 1900.0),
    (14, "3rd-Ventricle", 900.0),
    (15, "4th-Ventricle", 1500.0),
    (16, "Brain-Stem", 20500.0),
    (17, "Left-Hippocampus", 4100.0),
    (18, "Left-Amygdala", 1500.0),
    (24, "CSF", 1000.0),
    (26, "Left-Accumbens-area", 550.0),
    (28, "Left-VentralDC", 4000.0),
    (43, "Right-Lateral-Ventricle", 6900.0),
    (49, "Right-Thalamus", 7400.0),
    (53, "Right-Hippocampus", 4200.0),
    (54, "Right-Amygdala", 1600.0),
    (72, "5th-Ventricle", 0.0),
    (251, "CC_Posterior", 950.0),
]
MEASURES_ASEG = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", 1118981.573888, "mm^3"),
    (
        "BrainSegNotVent",
        "BrainSegVolNotVent",
        "Brain Segmentation Volume Without Ventricles",
        1107684.526061,
        "mm^3",
    ),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", 55992.348144, "mm^3"),
    ("Mask", "MaskVol", "Mask Volume", 1579089.655852, "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", 0.764228, "unitless"),
    (
        "lhSurfaceHoles",
        "lhSurfaceHoles",
        "Number of defect holes in lh surfaces prior to fixing",
        3,
        "unitless",
    ),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", 1464199.032007, "mm^3"),
]


def thickness_base(hemi: str) -> dict[str, float]:
    """Plausible mean thickness (mm) per DKT region: 1.9 to 3.1 mm."""
    off = 0.0 if hemi == "lh" else 0.013
    return {name: round(2.0 + ((i * 37) % 31) / 31 * 1.0 + off, 3) for i, name in enumerate(DKT)}


def subject_values(scale: float, shift_mm: float) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One subject's reference volumes (mm^3, ASEG's scaled by head size ``scale``) and
    thickness per hemisphere and DKT region (mm, :func:`thickness_base` + ``shift_mm``)."""
    vols = {name: round(v * scale, 1) for _, name, v in ASEG}
    th = {h: {k: round(v + shift_mm, 3) for k, v in thickness_base(h).items()} for h in ("lh", "rh")}
    return vols, th


def other_pipeline_values(
    vols: dict[str, float],
    th: dict[str, dict[str, float]],
    vol_gain: float,
    vol_offset_mm3: float,
    th_offset_mm: float,
    th_noise_mm: float = 0.0,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """What a second pipeline reports for the same subject: volumes x ``vol_gain`` +
    ``vol_offset_mm3`` (an absent structure stays 0), thickness + ``th_offset_mm`` + ``th_noise_mm``."""
    fvols = {k: (round(v * vol_gain + vol_offset_mm3, 1) if v else 0.0) for k, v in vols.items()}
    fth = {h: {k: round(v + th_offset_mm + th_noise_mm, 3) for k, v in d.items()} for h, d in th.items()}
    return fvols, fth


def _table_cols(cols: list[tuple[str, str, str]]) -> list[str]:
    out = []
    for i, (header, field, unit) in enumerate(cols, 1):
        out += [
            f"# TableCol {i:2d} ColHeader {header}",
            f"# TableCol {i:2d} FieldName {field}",
            f"# TableCol {i:2d} Units     {unit}",
        ]
    return out


VOL_COLS = [
    ("Index", "Index", "NA"),
    ("SegId", "Segmentation Id", "NA"),
    ("NVoxels", "Number of Voxels", "unitless"),
    ("Volume_mm3", "Volume", "mm^3"),
    ("StructName", "Structure Name", "NA"),
    ("normMean", "Intensity normMean", "MR"),
    ("normStdDev", "Intensity normStdDev", "MR"),
    ("normMin", "Intensity normMin", "MR"),
    ("normMax", "Intensity normMax", "MR"),
    ("normRange", "Intensity normRange", "MR"),
]


def write_aseg_stats(path: Path, volumes: dict[str, float] | None = None, measures=MEASURES_ASEG) -> Path:
    """``aseg.stats`` as FreeSurfer 7.4's ``mri_segstats`` writes it (recon-all ``-segstats``)."""
    volumes = volumes if volumes is not None else {n: v for _, n, v in ASEG}
    ids = {n: i for i, n, _ in ASEG}
    lines = [
        "# Title Segmentation Statistics ",
        "# ",
        "# generating_program mri_segstats",
        "# cvs_version 7.4.1",
        "# cmdline mri_segstats --seed 1234 --seg mri/aseg.mgz --sum stats/aseg.stats --pv mri/norm.mgz "
        "--empty --brainmask mri/brainmask.mgz --brain-vol-from-seg --excludeid 0 --excl-ctxgmwm --supratent "
        "--subcortgray --in mri/norm.mgz --in-intensity-name norm --in-intensity-units MR --etiv "
        "--surf-wm-vol --surf-ctx-vol --totalgray --euler --ctab "
        "/usr/local/freesurfer/7.4.1/ASegStatsLUT.txt "
        "--subject sub-01 ",
        "# sysname  Linux",
        "# hostname node1",
        "# machine  x86_64",
        "# user     someone",
        "# anatomy_type volume",
        "# ",
        "# SUBJECTS_DIR /data/subjects",
        "# subjectname sub-01",
        "# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed",
    ]
    lines += [
        f"# Measure {a}, {b}, {c}, {v:.6f}, {u}"
        if isinstance(v, float)
        else f"# Measure {a}, {b}, {c}, {v}, {u}"
        for a, b, c, v, u in measures
    ]
    lines += [
        "# SegVolFile mri/aseg.mgz ",
        "# SegVolFileTimeStamp  2023/08/22 16:38:28 ",
        "# ColorTable /usr/local/freesurfer/7.4.1/ASegStatsLUT.txt ",
        "# Excluding Cortical Gray and White Matter",
        "# ExcludeSegId 0 2 3 41 42 ",
        "# VoxelVolume_mm3 1 ",
    ]
    lines += _table_cols(VOL_COLS)
    lines += [f"# NRows {len(volumes)} ", "# NTableCols 10 "]
    lines.append("# ColHeaders  " + " ".join(c for c, _, _ in VOL_COLS) + "  ")
    for i, (name, vol) in enumerate(volumes.items(), 1):
        mean = 0.0 if vol == 0 else 60.0 + i
        lines.append(
            f"{i:3d} {ids.get(name, 9000 + i):3d} {round(vol):9d} {vol:10.1f}  {name:<30s} "
            f"{mean:10.4f} {mean / 8:10.4f} {mean / 2:10.4f} {mean * 1.5:10.4f} {mean:10.4f} "
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_fastsurfer_segstats(
    path: Path, volumes: dict[str, float], ids: dict[str, int] | None = None
) -> Path:
    """``aseg+DKT.stats`` as FastSurfer 2.x's ``segstats.py`` writes it (``--seg_only`` included):
    its own header, ``--empty`` rows, volumes with one decimal."""
    ids = ids or {}
    lines = [
        "# Title Segmentation Statistics",
        "#",
        "# generating_program segstats.py",
        "# FastSurfer_version 2.4.2",
        "# cmdline /fastsurfer/FastSurferCNN/segstats.py --segfile "
        "/data/sub-01/mri/aparc.DKTatlas+aseg.deep.mgz "
        "--segstatsfile /data/sub-01/stats/aseg+DKT.stats --normfile /data/sub-01/mri/orig_nu.mgz --empty "
        "--excludeid 0",
        "# sysname  Linux",
        "# hostname node1",
        "# machine  x86_64",
        "# user       someone",
        "# anatomy_type volume",
        "#",
        "# Measure Mask, MaskVol, Mask Volume, 1579089.655852, mm^3",
        "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1118981.573888, mm^3",
        "# SegVolFile /data/sub-01/mri/aparc.DKTatlas+aseg.deep.mgz",
        "# SegVolFileTimestamp 2024/05/01 10:00:00",
        "# ExcludeSegId 0",
        "# compatibility with freesurfer's mri_segstats: fixed",
        "# VoxelVolume_mm3 1.0",
    ]
    lines += _table_cols(VOL_COLS)
    lines += [f"# NRows {len(volumes):2d}", "# NTableCols 10"]
    lines.append("# ColHeaders  " + " ".join(c for c, _, _ in VOL_COLS))
    for i, (name, vol) in enumerate(volumes.items(), 1):
        mean = 0.0 if vol == 0 else 70.0 + i
        lines.append(
            f"{i:>3d} {ids.get(name, 9000 + i):>3d} {round(vol):>9d} {vol:>10.1f}  {name:<30s} "
            f"{mean:>10.4f} {mean / 8:>10.4f} {mean / 2:>10.4f} {mean * 1.5:>10.4f} {mean:>10.4f}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parc_stats(path: Path, hemi: str, thickness: dict[str, float], mapped: bool = False) -> Path:
    """``?h.aparc.DKTatlas.stats`` (FreeSurfer) or ``?h.aparc.DKTatlas.mapped.stats`` (FastSurfer's
    recon-surf.sh) as ``mris_anatomical_stats -th3 -mgz -cortex ... -b -a ... -c ...`` writes them;
    a region absent from ``thickness`` has no row (no vertex carried that label)."""
    annot = f"{hemi}.aparc.DKTatlas.mapped.annot" if mapped else f"{hemi}.aparc.DKTatlas.annot"
    ctab = "aparc.annot.mapped.ctab" if mapped else "aparc.annot.DKTatlas.ctab"
    out = f"{hemi}.aparc.DKTatlas.mapped.stats" if mapped else f"{hemi}.aparc.DKTatlas.stats"
    mean_th = sum(thickness.values()) / len(thickness) if thickness else 0.0
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2024/05/01-10:00:00-GMT",
        "# generating_program mris_anatomical_stats",
        "# cvs_version 7.4.1",
        "# mrisurf.c-cvs_version 7.4.1",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label -f ../stats/{out} "
        f"-b -a ../label/{annot} -c ../label/{ctab} sub-01 {hemi} white ",
        "# sysname  Linux",
        "# hostname node1",
        "# machine  x86_64",
        "# user     someone",
        "# ",
        "# SUBJECTS_DIR /data/subjects",
        "# anatomy_type surface",
        "# subjectname sub-01",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{annot}",
        "# AnnotationFileTimeStamp 2024/05/01 09:00:00",
        "# Measure Cortex, NumVert, Number of Vertices, 254920, unitless",
        "# Measure Cortex, WhiteSurfArea, White Surface Total Area, 85184.4, mm^2",
        f"# Measure Cortex, MeanThickness, Mean Thickness, {mean_th:.5f}, mm",
        "# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed",
        "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1118981.573888, mm^3",
        "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        "1464199.032007, mm^3",
        "# NTableCols 10",
    ]
    lines += _table_cols(
        [
            ("StructName", "Structure Name", "NA"),
            ("NumVert", "Number of Vertices", "unitless"),
            ("SurfArea", "Surface Area", "mm^2"),
            ("GrayVol", "Gray Matter Volume", "mm^3"),
            ("ThickAvg", "Average Thickness", "mm"),
            ("ThickStd", "Thickness StdDev", "mm"),
            ("MeanCurv", "Integrated Rectified Mean Curvature", "mm^-1"),
            ("GausCurv", "Integrated Rectified Gaussian Curvature", "mm^-2"),
            ("FoldInd", "Folding Index", "unitless"),
            ("CurvInd", "Intrinsic Curvature Index", "unitless"),
        ]
    )
    lines.append(
        "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd"
    )
    for i, (name, th) in enumerate(thickness.items()):
        nv = 3000 + 97 * i
        lines.append(
            f"{name:<40s} {nv:5d} {nv // 3:6d} {round(nv * th / 3):6d} {th:6.3f} {0.5:5.3f} "
            f"{0.065:9.3f} {0.017:9.3f} {21 + i:8d} {2.6:7.1f}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
