"""Command-line tools around the image: SageMaker jobs and endpoints, and the demo."""
