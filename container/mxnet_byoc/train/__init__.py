"""`train`: SageMaker's training contract, from /opt/ml/input to a model directory. Never imports `serve`."""
