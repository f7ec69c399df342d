"""A pair of connected pseudo-terminals made by socat: a serial cable in a test.

`SocatPair(folder)` starts `socat pty,raw,echo=0,link=<folder>/a pty,raw,echo=0,link=<folder>/b`
and waits until both links exist. What is written to one end comes out of the
other. `stop()` ends socat, which removes both ptys: to the program holding one
end that is an unplugged adapter. `start()` again makes new ptys under the same
names: the adapter is back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


class SocatPair:
    def __init__(self, folder: Path, a: str = "a", b: str = "b") -> None:
        self.a = str(folder / a)
        self.b = str(folder / b)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / f"socat-{a}-{b}.log"

    def start(self, timeout: float = 20.0) -> SocatPair:
        socat = shutil.which("socat")
        assert socat, "socat is not installed: run `make deps` (apt-get install socat)"
        self.stop()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [socat, "-d", "-d",
                 f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"socat exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"socat made no ptys in {timeout}s: {self.log.read_text()}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for link in (self.a, self.b):  # socat removes them on a clean exit; make sure
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
