"""log.py: JSON lines with severity off a TTY, readable lines on one."""

import json
import subprocess
import sys

from conftest import job_env

SCRIPT = """
from showwork import log
log.configure({json_lines})
log.get("t", run="r1").warning("disk low", free_gb=3)
log.get("t").info("step", loss=0.5)
"""


def run(json_lines):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(json_lines=json_lines)],
                          env=job_env(), capture_output=True, text=True, timeout=60)


def test_json_lines_carry_severity_for_cloud_logging():
    lines = run("json_lines=True").stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["severity"] == "WARNING" and records[0]["event"] == "disk low"
    assert records[0]["run"] == "r1" and records[0]["free_gb"] == 3 and "timestamp" in records[0]
    assert records[1]["severity"] == "INFO" and records[1]["loss"] == 0.5


def test_default_off_a_tty_is_json():
    lines = run("").stderr.strip().splitlines()
    assert json.loads(lines[0])["severity"] == "WARNING"


def test_console_format_is_readable():
    out = run("json_lines=False").stderr
    assert "disk low" in out and "free_gb=3" in out and not out.lstrip().startswith("{")
