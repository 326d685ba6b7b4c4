"""Layer 4: the metric, param and tag names of studies and of the SLURM backend
(docs/metrics.md, section "Studies"), in one block meant to move into ``mlflow_layer/keys.py``
(where the lead keeps every key) when that module arrives on this branch; the study and backend
modules never spell a key themselves."""

# -- tags shared with the rest of the package (same names as in keys.py) -------------------------
EXIT_CODE = "wattsup.exit_code"
PIPELINE = "wattsup.pipeline"
DEVICE = "wattsup.device"
SUBJECT = "wattsup.subject"

# -- SLURM backend and study jobs (tags) -----------------------------------------------------------
SLURM_JOB_ID = "wattsup.slurm.job_id"
SLURM_STATE = "wattsup.slurm.state"
SLURM_NODE = "wattsup.slurm.node"
JOB_LOG = "wattsup.job.log"

# -- studies (tags) --------------------------------------------------------------------------------
STUDY = "wattsup.study"
STUDY_ROLE = "wattsup.study.role"
STUDY_DATASET = "wattsup.study.dataset"
STUDY_DATASET_SHA256 = "wattsup.study.dataset_sha256"
STUDY_SPEC_SHA256 = "wattsup.study.spec_sha256"
STUDY_BACKEND = "wattsup.study.backend"
STUDY_PARAMS_HASH = "wattsup.study.params_hash"
STUDY_ATTEMPT = "wattsup.study.attempt"
STUDY_PROJECT_PIPELINE = "wattsup.study.project_pipeline"
STUDY_STALE = "wattsup.study.stale"

# -- studies (parent params) -----------------------------------------------------------------------
STUDY_SUBJECTS = "wattsup.study.subjects"
STUDY_PIPELINES = "wattsup.study.pipelines"
STUDY_DEVICES = "wattsup.study.devices"
STUDY_PARAM_PREFIX = "wattsup.study.param."  # + "<pipeline>.<key>"

# -- studies (parent metrics) ----------------------------------------------------------------------
STUDY_CHILDREN = "study/children"
STUDY_FINISHED = "study/finished"
STUDY_FAILED = "study/failed"
STUDY_KILLED = "study/killed"
STUDY_SKIPPED = "study/skipped"
STUDY_SUBMITTED = "study/submitted"
STUDY_WALL_S = "study/wall_s"
