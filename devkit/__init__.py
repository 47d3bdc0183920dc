"""The project's kit for tests, benches and the demo: SageMaker job folders and the image's programs, run.

Benches and the demo use it as the tests do, so none of them imports from tests/. It needs only the
standard library, numpy and the image's modules that need nothing more (mxnet_byoc.train.environment,
mxnet_byoc.train.data.read_idx): byoctl's environment has no MXNet and no `requests`.

    project    where the project's programs, virtualenv, logs and MNIST live
    jobs       a job folder (/opt/ml) laid out by the contract's own paths; `container/train` run in it
    sourcedir  a user's training code as the SDK ships it for script mode (sourcedir.tar.gz)
    idx        IDX files written and read (with the image's own reader); MNIST arrays and subsets
    datasets   MNIST for tests and benches: MNIST_DIR, ../shared/mnist, else a checksummed download
    bodies     request bodies: .npy and PNG bytes
    waiting    polling for an observable event, with a bound
    net        free ports and plain HTTP to 127.0.0.1 (never through a proxy)
    shell      running a command to completion: its output, exit code and seconds
    docker     `docker run` commands and the image tags
    servers    `serve` as a process or as a container: start, wait until ready, stop
    script_models  models in MXNet's layout (AWS's test model, a regression, a small CNN) and inference scripts
"""


class KitError(Exception):
    """A command, a wait or a server of the kit failed; the message says which, with the output's tail."""
