"""The embedded broker (SQLite transport) when several processes start on an empty broker file at once."""

import subprocess
import sys
import time

from django.conf import settings

# Each process waits for the same instant, then declares the same queues, as workers do at start.
DECLARE = """
import sys, time
from kombu import Connection
from dataflare_portal.celery import install_embedded_channel

install_embedded_channel()
url, start, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
channel = Connection(url).channel()
while time.time() < start:
    time.sleep(0.001)
for i in range(n):
    channel.queue_declare(f"q{i}")
print("declared", n)
"""


def test_processes_starting_together_on_an_empty_broker_file_all_declare_their_queues(tmp_path):
    # The race is a few microseconds wide: three rounds of six processes lost it every time before the fix.
    for round_no in range(3):
        url = f"sqla+sqlite:///{tmp_path / f'broker-{round_no}.sqlite3'}"
        start = time.time() + 3  # past every interpreter's start-up
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", DECLARE, url, str(start), "40"],
                cwd=settings.BASE_DIR,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(6)
        ]
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
        failed = [out for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
        assert not failed, failed[0][-2000:]
        assert all("declared 40" in out for out in outputs)
