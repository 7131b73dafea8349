"""The GPU image, built by `make image-gpu` (no GPU needed to build or to run these checks).

ONNX Runtime inside must offer the CUDA execution provider, and its CUDA provider library must
find every CUDA / cuDNN library it links in the venv's NVIDIA wheels; only the driver
(libcuda.so.1, mounted from the host by the NVIDIA container toolkit) may be missing here.

The build downloads about 3 GB of CUDA wheels, more than `make test` can afford on a small CI
machine, so these tests are opt-in: `make test-image-gpu` (pytest --opt-in), which .ci/run calls
after `make test` when its time budget allows.
"""

from __future__ import annotations

import pytest
from support.deploy_helpers import inspect, make_image, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.opt_in("make test-image-gpu: builds the GPU image (~3 GB download)"),
]

PROVIDERS_LIB = (
    "/opt/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so"
)


@pytest.fixture(scope="module")
def image(engine) -> str:
    return make_image("gpu")


def test_gpu_image_lists_the_cuda_execution_provider(engine, image):
    probe = (
        "import importlib.util, os, onnxruntime as ort; "
        "print(os.getuid(), importlib.util.find_spec('torch') is None, "
        "*ort.get_available_providers())"
    )
    result = run(engine, "run", "--rm", "--network", "host", image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    uid, no_torch, *providers = result.stdout.split()
    assert (uid, no_torch) == ("10001", "True")
    assert {"CUDAExecutionProvider", "CPUExecutionProvider"} <= set(providers), providers


def test_cuda_provider_links_only_the_host_driver_from_outside(engine, image):
    """The CUDA provider's linked libraries (ldd) come from the venv's wheels except the driver."""
    result = run(engine, "run", "--rm", "--network", "host", image, "ldd", PROVIDERS_LIB)
    assert result.returncode == 0, result.stderr
    linked = dict(
        line.split(" => ") for line in result.stdout.strip().splitlines() if " => " in line
    )
    linked = {name.strip(): path for name, path in linked.items()}
    assert linked.pop("libcuda.so.1").strip() == "not found"  # the host's, at run time
    for lib in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        assert linked[lib].startswith("/opt/venv/"), (lib, result.stdout)
    assert not [name for name, path in linked.items() if "not found" in path], result.stdout


def test_libraries_ort_opens_at_run_time_load_by_soname(engine, image):
    """cuDNN, cuFFT and NVRTC are dlopened by soname; the image's LD_LIBRARY_PATH finds them."""
    probe = "import ctypes, sys; [print(ctypes.CDLL(name)._name) for name in sys.argv[1:]]"
    libs = [
        "libcudnn.so.9",
        "libcudnn_ops.so.9",
        "libcudnn_cnn.so.9",
        "libcufft.so.12",
        "libnvrtc.so.13",
    ]
    result = run(engine, "run", "--rm", "--network", "host", image, "python", "-c", probe, *libs)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == libs
    assert "NEUTRENO_DEVICE=cuda" in inspect(engine, "image", image)["Config"]["Env"]
