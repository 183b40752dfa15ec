"""The test report's own accounting (tests/conftest.py): it ends with the seconds spent in each test file,
summed over every xdist worker, so a CI log says where the suite's time goes by file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_the_report_ends_with_seconds_by_file_summed_over_two_workers():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTEST_XDIST"))}
    target = "tests/task/test_answers.py"
    done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-q", target], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    header = re.search(r"test seconds by file: (\d+) s in all", done.stdout)
    assert header, done.stdout[-3000:]
    # One line for the file: all of the run's seconds, and every test that ran, whichever worker ran it.
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed > 20  # enough tests for both workers to take some
    (line,) = [ln for ln in done.stdout.splitlines() if ln.rstrip().endswith(target)]
    seconds, share, tests = re.match(r"\s*([\d.]+)s\s+([\d.]+)%\s+(\d+) tests", line).groups()
    assert float(share) == 100.0 and round(float(seconds)) == int(header.group(1)) and int(tests) == passed
