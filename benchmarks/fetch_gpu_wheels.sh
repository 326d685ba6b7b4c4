#!/usr/bin/env bash
# The wheels the MLflow parts of benchmarks/gpu_check.py need on the lent GPU machine (Python 3.12,
# x86-64, no registry there), downloaded here into DIR (default .whl/ in the repository's root,
# which .git/info/exclude must list: echo /.whl/ >> .git/info/exclude).
#
# The list is MLflow 3.17.2 with what it needs, plus what projects/segmentation and our sink need
# (nilearn, nibabel, ptflops, platformdirs), resolved for Python 3.12 on 2026-12-05, minus every
# package the machine's image already has (the device tool's KINDS.md list: torch, numpy, pandas,
# scipy, scikit-learn, pyarrow, matplotlib, aiohttp, requests, protobuf, ... stay as they are).
# 49 wheels, 48.7 MiB (51,065,027 bytes, measured with this script): under the tool's 64 MiB carry limit with this repository.
# On the machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#   --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PIP=${PIP:-python3 -m pip}
WHEELS=(
    alembic==1.20.1 annotated-types==0.8.0 blinker==1.9.0 cachetools==7.3.3 cffi==2.1.1
    cryptography==50.0.2 databricks-sdk==0.167.0 docker==7.2.0 fastapi==0.165.0 flask==3.1.3
    flask-cors==6.0.5 gitdb==4.0.12 gitpython==3.2.1 google-auth==2.63.0 graphene==3.4.3
    graphql-core==3.2.14 graphql-relay==3.2.0 gunicorn==26.2.0 huey==3.5.4 importlib-metadata==9.1.0
    importlib-resources==7.1.0 itsdangerous==2.2.0 mako==1.4.3 mlflow==3.17.2 mlflow-skinny==3.17.2
    mlflow-tracing==3.17.2 nibabel==5.4.2 nilearn==0.14.1 opentelemetry-api==1.45.2
    opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
    platformdirs==4.14.9 prettytable==3.19.0 ptflops==0.7.5 pyasn1==0.6.5 pyasn1-modules==0.4.2
    pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 python-dotenv==1.2.4 skops==0.16.0
    smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1 starlette==1.10.0 typing-inspection==0.4.5
    uvicorn==0.55.0 wcwidth==0.9.4
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
mkdir -p "$DIR"
for w in "${WHEELS[@]}"; do
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$DIR" "$w"
done
ls "$DIR"/*.whl | wc -l | xargs echo "wheels:"
du -cb "$DIR"/*.whl | tail -1 | awk '{printf "total: %d bytes (%.1f MiB)\n", $1, $1 / 1048576}'
