"""Starting and stopping Spark for a run of the Spark engine (:mod:`lookalike.ingest.spark`).

A session already active in this process (a notebook's, a test module's) is used as it is and
left running. Otherwise one is started for the run, on ``local[N]`` or the master given, and
stopped after it, with the JVM PySpark launched for it (PySpark would keep that JVM, idle, for
a next session). A local Spark's Python workers run this process's Python, so they import the
same lookalike, and Spark's own log keeps to errors: lookalike draws its own progress bar.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import MissingDependencyError, UsageError

# The local Spark's own log: errors only, on stderr (Spark's default prints INFO and WARN lines
# about itself, such as the missing native Hadoop library, that say nothing about the run). The
# gateway's logger set to the root's level stops Spark's "Setting default log level" banner. A
# failed task is logged three times over with its stack, by the loggers turned off here: its
# reason reaches the user once, as SparkJobError (with --debug, with Spark's whole message).
_LOG4J = """rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.tasks.name = org.apache.spark.scheduler.TaskSetManager
logger.tasks.level = off
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = off
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
"""


def require_spark() -> None:
    """Check that PySpark (with PyArrow) and a Java runtime are installed, or raise
    MissingDependencyError saying how to install what is missing."""
    if not all(importlib.util.find_spec(name) for name in ("pyspark", "pyarrow")):
        raise MissingDependencyError("pyspark", "The Spark engine (--engine spark)",
                                     "pip install 'lookalike[spark]'")
    java_home = os.environ.get("JAVA_HOME")
    if java_home and not os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        # Spark's launcher takes JAVA_HOME over PATH, and fails with pages of shell errors.
        raise MissingDependencyError(
            "openjdk-17-jre-headless", f"JAVA_HOME={java_home} has no bin/java; the Spark engine "
            "(--engine spark) runs on the Java 17 or later that JAVA_HOME names: fix or unset "
            "JAVA_HOME, or", "apt-get install openjdk-17-jre-headless")
    if not java_home and shutil.which("java") is None:
        raise MissingDependencyError(
            "openjdk-17-jre-headless", "No Java runtime was found (JAVA_HOME, PATH); the Spark "
            "engine (--engine spark) runs on Java 17 or later and",
            "apt-get install openjdk-17-jre-headless")


@contextlib.contextmanager
def session(master: str | None, workers: int | None = None) -> Iterator[Any]:
    """The Spark session this process already runs, or a new one, stopped afterwards (with the
    JVM, when this call started it: PySpark would keep it for a next session)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:  # (the JVM's "active session" is
        active = SparkSession.builder.getOrCreate()     # per thread: not what is meant here)
        running = active.sparkContext.master
        if master and master != running:
            raise UsageError(f"This process already runs a Spark session (master {running}); "
                             f"stop it to index on {master}, or leave out --spark-master.")
        yield active
        return
    master = master or f"local[{workers or '*'}]"
    local = master.startswith("local")
    sigint = signal.getsignal(signal.SIGINT)  # PySpark installs its own handler; put ours back
    launches_jvm = SparkContext._gateway is None
    builder = SparkSession.builder.master(master).appName("lookalike index") \
        .config("spark.ui.showConsoleProgress", "false")  # lookalike draws its own bar
    if local:
        builder = builder.config("spark.ui.enabled", "false")
    with _quiet_py4j():
        with tempfile.TemporaryDirectory(prefix="lookalike-spark-") as folder, \
                _environ(_launch_env(local, folder)):
            try:
                with no_pandas_warning():
                    spark = builder.getOrCreate()
            except Exception as exc:  # noqa: BLE001 - PySpark raises plain exceptions for all
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
                raise UsageError(
                    f"Could not start Spark (master {master}): {first}. Check --spark-master "
                    "and the Java runtime (`java -version`: 17 or later)."
                ) from None
        try:
            spark.sparkContext.setLogLevel("ERROR")
            yield spark
        finally:
            spark.stop()
            if launches_jvm:
                _stop_jvm()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint)


class _FromPy4j(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}py4j{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_py4j() -> Iterator[None]:
    """Without py4j's log records: a Ctrl-C or a stopped JVM makes it log tracebacks of its
    socket calls (on the root logger), pages of them, while the run's own error says it all."""
    root, py4j, drop = logging.getLogger(), logging.getLogger("py4j"), _FromPy4j()
    level = py4j.level
    root.addFilter(drop)
    py4j.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.removeFilter(drop)
        py4j.setLevel(level)


def _stop_jvm() -> None:
    from pyspark import SparkContext

    gateway, SparkContext._gateway, SparkContext._jvm = SparkContext._gateway, None, None
    if gateway is None:
        return
    gateway.shutdown()
    process = getattr(gateway, "proc", None)  # PySpark's handle on the JVM it launched
    if process is not None and process.stdin is not None:
        process.stdin.close()  # the JVM exits when its stdin closes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _launch_env(local: bool, folder: str) -> dict[str, str]:
    """Environment for starting Spark: the workers of a local Spark run this Python (else they
    run ``python3``, which may not have lookalike), its JVM compiles less, and Spark's log is
    quiet, unless the user chose otherwise (PYSPARK_PYTHON, SPARK_SUBMIT_OPTS, a
    log4j2.properties in SPARK_CONF_DIR)."""
    env = {}
    options = os.environ.get("SPARK_SUBMIT_OPTS", "")
    added = []
    if local and "PYSPARK_PYTHON" not in os.environ:
        env["PYSPARK_PYTHON"] = sys.executable
    if local and "TieredStopAtLevel" not in options:
        # A local Spark's JVM only schedules; the Python workers do the work. Without the
        # optimising compiler it took 4 s less to start and half the CPU (2,000 photos on 2
        # cores: 7.6 CPU-s instead of 11.3 by the first results, 0.1 core instead of 0.2 after).
        added.append("-XX:TieredStopAtLevel=1")
    conf_dir = os.environ.get("SPARK_CONF_DIR", "")
    if "log4j2.configurationFile" not in options and \
            not os.path.exists(os.path.join(conf_dir, "log4j2.properties")):
        path = os.path.join(folder, "log4j2.properties")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(_LOG4J)
        added.append(f"-Dlog4j2.configurationFile=file:{path}")
    if added:
        env["SPARK_SUBMIT_OPTS"] = " ".join([options, *added]).strip()
    return env


@contextlib.contextmanager
def no_pandas_warning() -> Iterator[None]:
    # PySpark warns, once, that it does not support pandas 3 yet; this engine never uses pandas.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "PySpark does not yet", FutureWarning)
        yield


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for Spark's start-up only (PySpark reads them then)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
