"""Entry point MLflow loads for the registered pyfunc (models from code: nothing is unpickled)."""

import mlflow

from medops.release.pyfunc import Classifier

mlflow.models.set_model(Classifier())
