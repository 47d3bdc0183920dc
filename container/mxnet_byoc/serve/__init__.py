"""`serve`: SageMaker's hosting contract, from a model directory to /ping and /invocations. Never imports `train`."""
