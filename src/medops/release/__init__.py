"""Release: the deployable module, ONNX/int8 variants, the MLflow pyfunc, image files."""
