"""Train and serve MXNet digit classifiers under Amazon SageMaker's container contract."""

__version__ = "0.1.0"
