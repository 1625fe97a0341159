"""What the PyTorch sides of the benchmarks (torch_*.py) share: capping
PyTorch at AVX2, and the median step time. Import it before torch: the
caps are read when the libraries load."""
import os
import statistics
import time


def cap_isa(isa):
    """isa "avx2" caps ATen's kernels, MKL and oneDNN at AVX2: what PyTorch
    runs on an AVX2-only CPU, for comparison with libtblocks' AVX2 family
    forced on an AVX-512 machine. Any other value changes nothing."""
    if isa == "avx2":
        os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["DNNL_MAX_CPU_ISA"] = "AVX2"


def timed(step, reps):
    """Milliseconds: the median of reps calls of step() after one warm-up."""
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)
