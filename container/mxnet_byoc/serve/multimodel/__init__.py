"""A multi-model server (SAGEMAKER_MULTI_MODEL=true): SageMaker's model management API in gunicorn's master
(manager.py), every worker holding a copy of every loaded model (replica.py), the registry and messages between
them (state.py), and the container's memory (memory.py). docs/multi-model.md says why it is built so."""
