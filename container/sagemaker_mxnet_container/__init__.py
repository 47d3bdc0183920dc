"""What training scripts written for AWS's MXNet containers import from the container.

AWS's `sagemaker_mxnet_container` package (sagemaker-mxnet-training-toolkit) gave scripts
`training_utils.save` and `training_utils.scheduler_host`; the same names behave the same here, so those
scripts run unchanged. Only the standard library at import; MXNet only when a model is saved.
"""
