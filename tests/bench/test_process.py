"""`camray.bench.process`: the peak of a benchmark's child process is its own, whatever its parent holds."""

from __future__ import annotations

import sys

from camray.bench.process import SampledProcess

MIB = 1 << 20
# A child that touches `mib` MiB, lets it go, and lives on long enough to be sampled after.
CHILD = (
    "import time\nb = bytearray({mib} * (1 << 20))\nfor i in range(0, len(b), 4096): b[i] = 1\ndel b\ntime.sleep(0.5)"
)


def _peak_mib(tmp_path, mib: int) -> float:
    child = SampledProcess([sys.executable, "-c", CHILD.format(mib=mib)], {}, tmp_path / f"child-{mib}.log")
    measured = child.wait(timeout=60)
    assert measured.returncode == 0
    return measured.peak_rss / MIB


def test_a_childs_peak_is_its_own_not_its_large_parents(tmp_path):
    ballast = bytearray(400 * MIB)  # the parent holds far more than either child will
    for index in range(0, len(ballast), 4096):
        ballast[index] = 1

    small, large = _peak_mib(tmp_path, 20), _peak_mib(tmp_path, 200)

    assert small < 100, "Linux carries a high-water mark across exec: the parent's 400 MiB must not count"
    assert 200 <= large < 300, "a peak released before the end is still counted"
    del ballast
