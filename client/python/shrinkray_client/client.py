"""The shrinkray CompressionService client.

The generated modules (shrinkray/v1/compression_pb2.py and _pb2_grpc.py, built
by the CMake target shrinkray_python_client) are looked up, in order, in:
  1. $SHRINKRAY_PYTHON_GEN, when set (it must hold them);
  2. a `gen` folder beside this package (client/python/gen);
  3. build/client/python/gen of the source tree this file sits in.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Union

import grpc


def _load_generated():
    here = Path(__file__).resolve().parent
    env = os.environ.get("SHRINKRAY_PYTHON_GEN")
    # An explicit setting that is wrong is an error, not a reason to look elsewhere.
    candidates = [Path(env)] if env else [here.parent / "gen",
                                          here.parents[2] / "build" / "client" / "python" / "gen"]
    for gen in candidates:
        if (gen / "shrinkray" / "v1" / "compression_pb2.py").is_file():
            if str(gen) not in sys.path:
                sys.path.insert(0, str(gen))
            return (importlib.import_module("shrinkray.v1.compression_pb2"),
                    importlib.import_module("shrinkray.v1.compression_pb2_grpc"))
    raise ImportError(
        "shrinkray generated Python modules not found in "
        + ", ".join(str(c) for c in candidates)
        + "; build the CMake target shrinkray_python_client and set SHRINKRAY_PYTHON_GEN "
          "to its build/client/python/gen folder")


pb, pb_grpc = _load_generated()

FINAL_STATES = frozenset({pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED})

StateLike = Union[None, int, str]


def state_value(state: StateLike) -> int:
    """A JobState number from None (UNSPECIFIED), a number, or a name in any of
    the forms "running", "RUNNING" or "JOB_STATE_RUNNING"."""
    if state is None:
        return pb.JOB_STATE_UNSPECIFIED
    if isinstance(state, int):
        pb.JobState.Name(state)  # raises ValueError for an unknown number
        return state
    name = state.strip().upper()
    if not name.startswith("JOB_STATE_"):
        name = "JOB_STATE_" + name
    try:
        return pb.JobState.Value(name)
    except ValueError:
        raise ValueError(f"unknown job state {state!r}") from None


def state_name(state: int) -> str:
    """"running" for JOB_STATE_RUNNING, and so on."""
    return pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def is_final(state: int) -> bool:
    return state in FINAL_STATES


# Short spellings accepted in spec dicts besides the proto enum names.
_OUTPUT_FORMATS = {"dense": "OUTPUT_FORMAT_DENSE", "gptq": "OUTPUT_FORMAT_GPTQ",
                   "compressed-tensors": "OUTPUT_FORMAT_COMPRESSED_TENSORS",
                   "compressed_tensors": "OUTPUT_FORMAT_COMPRESSED_TENSORS"}
_DEVICES = {"cpu": "DEVICE_PREFERENCE_CPU", "cuda": "DEVICE_PREFERENCE_CUDA",
            "any": "DEVICE_PREFERENCE_ANY"}


def spec_from_dict(spec: Mapping) -> "pb.JobSpec":
    """A JobSpec from a dict shaped like the message (snake_case or JSON names);
    output_format and device may also be "gptq", "cuda", ... ."""
    from google.protobuf import json_format

    spec = dict(spec)
    for key, table in (("output_format", _OUTPUT_FORMATS), ("outputFormat", _OUTPUT_FORMATS),
                       ("device", _DEVICES)):
        value = spec.get(key)
        if isinstance(value, str) and value.lower() in table:
            spec[key] = table[value.lower()]
    return json_format.ParseDict(spec, pb.JobSpec())


class ShrinkrayError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `message` the server's text."""

    def __init__(self, code: grpc.StatusCode, message: str, method: str = ""):
        self.code = code
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {message}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str) -> "ShrinkrayError":
        return cls(error.code(), error.details() or "", method)


class Client:
    """A connection to a coordinator. Every call carries the bearer token (when
    there is one) and every unary call a deadline of `timeout` seconds."""

    def __init__(self, server: str, token: Optional[str] = None,
                 token_file: Union[None, str, os.PathLike] = None,
                 tls_ca: Union[None, str, os.PathLike] = None, timeout: float = 30.0):
        if token and token_file:
            raise ValueError("give token or token_file, not both")
        if token_file:
            token = Path(token_file).read_text().strip()
            # An empty token would silently send unauthenticated calls.
            if not token:
                raise ValueError(f"token file {token_file} is empty")
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self._timeout = float(timeout)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls_ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(server, credentials)
        else:
            self._channel = grpc.insecure_channel(server)
        self._stub = pb_grpc.CompressionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, name: str, request):
        try:
            return getattr(self._stub, name)(request, timeout=self._timeout,
                                              metadata=self._metadata)
        except grpc.RpcError as e:
            raise ShrinkrayError.from_rpc_error(e, name) from None

    def submit(self, spec: Union[Mapping, "pb.JobSpec"]) -> "pb.Job":
        """Queues a job; `spec` is a JobSpec or a dict (see spec_from_dict)."""
        if not isinstance(spec, pb.JobSpec):
            spec = spec_from_dict(spec)
        return self._unary("SubmitJob", pb.SubmitJobRequest(spec=spec)).job

    def get(self, job_id: str) -> "pb.Job":
        return self._unary("GetJob", pb.GetJobRequest(job_id=job_id)).job

    def list(self, state: StateLike = None, page_size: int = 100) -> Iterator["pb.Job"]:
        """Every job (newest first), optionally only those in `state`, fetched
        `page_size` at a time as the iterator is consumed."""
        request = pb.ListJobsRequest(page_size=page_size, state=state_value(state))
        while True:
            response = self._unary("ListJobs", request)
            yield from response.jobs
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def cancel(self, job_id: str, reason: str = "") -> "pb.Job":
        return self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id, reason=reason)).job

    def watch(self, job_id: str, after_sequence: int = 0,
              timeout: Optional[float] = None) -> Iterator["pb.WatchJobResponse"]:
        """The job's snapshot, then its events, until the server ends the stream
        (after a final state). No deadline unless `timeout` is given: jobs run
        for hours. Closing the iterator early cancels the call."""
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=after_sequence),
                                   timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise ShrinkrayError.from_rpc_error(e, "WatchJob") from None
        finally:
            call.cancel()

    def wait(self, job_id: str,
             on_response: Optional[Callable[["pb.WatchJobResponse"], None]] = None,
             reconnect_attempts: int = 10) -> "pb.Job":
        """Watches the job until it is final and returns it. A dropped stream
        (UNAVAILABLE) is resumed after the last event seen, up to
        `reconnect_attempts` times in a row. `on_response` sees every message."""
        after, failures = 0, 0
        while True:
            try:
                for response in self.watch(job_id, after_sequence=after):
                    if response.HasField("event"):
                        failures = 0  # the stream is making progress
                        after = max(after, response.event.sequence)
                    if on_response is not None:
                        on_response(response)
            except ShrinkrayError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or failures >= reconnect_attempts:
                    raise
                failures += 1
                time.sleep(min(0.5 * 2 ** failures, 10.0))
                continue
            job = self.get(job_id)
            if is_final(job.state):
                return job
            # The stream ended early (e.g. the coordinator restarted): resume.
            failures += 1
            if failures > reconnect_attempts:
                raise ShrinkrayError(grpc.StatusCode.UNAVAILABLE,
                                     f"watch of job {job_id} kept ending before a final state",
                                     "WatchJob")
            time.sleep(min(0.5 * 2 ** failures, 10.0))
