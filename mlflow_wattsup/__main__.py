import sys

from mlflow_wattsup.cli import main

sys.exit(main())
