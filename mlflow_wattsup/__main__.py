import sys

from mlflow_wattsup.mlflow_layer.cli import main

sys.exit(main())
