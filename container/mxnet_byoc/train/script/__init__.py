"""Script mode: the user's own training script instead of the built-in model, when the job names one
(`entry_point` in the SDK, the `sagemaker_program` hyperparameter). See runner.py."""
