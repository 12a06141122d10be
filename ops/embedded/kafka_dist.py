"""The Apache Kafka broker's jars: resolved once by Maven into a cache, then used offline.

``kafka-pom.xml`` beside this module names ``org.apache.kafka:kafka_2.13`` and
a log4j2 SLF4J binding; :func:`kafka_libs` runs ``mvn dependency:copy-dependencies``
into ``<cache>/kafka-<version>/libs`` the first time and returns that folder
on every later call without touching the network. :data:`KAFKA_VERSION` is the
one place the broker version is named (the compose image carries the same).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ops.embedded.process import EmbeddedServerError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
MIN_JAVA = 17
POM = Path(__file__).with_name("kafka-pom.xml")
_COMPLETE = ".complete"
_MAVEN_TIMEOUT_S = 900


def default_cache_dir() -> Path:
    """``~/.cache/sie``: outside any work tree, shared by every checkout on the machine."""
    return Path.home() / ".cache" / "sie"


def find_java() -> str:
    """The ``java`` launcher on PATH, checked to be Java 17 or newer."""
    java = shutil.which("java")
    if java is None:
        raise EmbeddedServerError(
            f"the local Apache Kafka broker needs Java {MIN_JAVA}+ and no `java` is on PATH "
            "(Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless)"
        )
    major = java_major_version(java)
    if major is not None and major < MIN_JAVA:
        raise EmbeddedServerError(f"the local Apache Kafka broker needs Java {MIN_JAVA}+; {java} is {major}")
    return java


def java_major_version(java: str) -> int | None:
    """The major version ``java -version`` reports (``None`` if it cannot be read)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(out.stderr + out.stdout)


def parse_java_version(text: str) -> int | None:
    """``17`` from ``openjdk version "17.0.15"``; ``8`` from ``"1.8.0_402"``."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def kafka_libs(
    cache_dir: Path | None = None,
    *,
    version: str = KAFKA_VERSION,
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """The folder of the broker's jars, fetched by Maven on first use (needs ``mvn`` then)."""
    home = (cache_dir or default_cache_dir()) / f"kafka-{version}"
    libs = home / "libs"
    if (home / _COMPLETE).is_file():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / ".lock"):
        if (home / _COMPLETE).is_file():  # another process fetched it while we waited
            return libs
        say = on_progress or log.info
        say(f"fetching Apache Kafka {version} jars with Maven into {libs} (once; later starts are offline)")
        started = time.monotonic()
        _fetch(home, libs, version)
        jars = sorted(p.name for p in libs.glob("*.jar"))
        (home / _COMPLETE).write_text("\n".join(jars) + "\n")
        say(f"fetched {len(jars)} jars in {time.monotonic() - started:.0f}s")
    return libs


def _fetch(home: Path, libs: Path, version: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedServerError(
            f"Apache Kafka {version} jars are not cached in {libs} and no `mvn` is on PATH to fetch them "
            "(Debian/Ubuntu: apt-get install -y maven)"
        )
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pom = home / "pom.xml"
    shutil.copyfile(POM, pom)  # Maven may write beside its pom; the package folder may be read-only
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
        f"-Dkafka.version={version}",
        f"-Dlog4j.version={LOG4J_VERSION}",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT_S, cwd=home)
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedServerError(f"Maven did not finish fetching Kafka in {_MAVEN_TIMEOUT_S}s") from exc
    if done.returncode != 0 or not any(staging.glob(f"kafka_2.13-{version}.jar")):
        tail = (done.stdout + done.stderr)[-3000:]
        raise EmbeddedServerError(
            f"Maven could not fetch Apache Kafka {version} (exit {done.returncode}):\n{tail}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created) while the block runs: one fetch/build at a time."""
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
