"""The one base of errors whose message says everything: what failed, where, and what is accepted.

Such a message is shown as it is, with no type name or traceback in front: as a training job's failure
reason (the first line of output/failure), or as the reason a model directory cannot be served.
"""


class ReasonError(Exception):
    """The message is the reason, fit to show as is; subclasses say where the failure arose."""
