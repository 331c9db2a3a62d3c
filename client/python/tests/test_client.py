"""shrinkray_client against an in-process fake CompressionService: the token
on every call, deadlines, state names, paging, watch/wait, and the example
script end to end. Run: SHRINKRAY_PYTHON_GEN=<build>/client/python/gen
/usr/bin/python3 client/python/tests/test_client.py"""

import subprocess
import sys
import tempfile
import threading
import unittest
from concurrent import futures
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

try:
    import grpc  # noqa: F401
    import google.protobuf  # noqa: F401
except ImportError as e:  # ctest reports this as Skipped
    print(f"[  SKIPPED ] python grpc/protobuf missing for {sys.executable}: {e} "
          "(Debian packages python3-grpcio python3-protobuf)")
    sys.exit(0)

from shrinkray_client import Client, ShrinkrayError, pb, pb_grpc, state_name, state_value  # noqa: E402

TOKEN = "s3cret-token"


def make_job(job_id, state, **kwargs):
    return pb.Job(id=job_id, state=state, attempt=1, **kwargs)


class FakeService(pb_grpc.CompressionServiceServicer):
    """Canned answers; records every call's metadata, deadline and request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []  # (method, metadata dict, time_remaining, request)
        self.jobs = {f"job-{i}": make_job(f"job-{i}", pb.JOB_STATE_SUCCEEDED) for i in range(5)}
        self.final_state = pb.JOB_STATE_SUCCEEDED

    def record(self, method, request, context):
        with self.lock:
            self.calls.append((method, dict(context.invocation_metadata()),
                               context.time_remaining(), request))

    def SubmitJob(self, request, context):
        self.record("SubmitJob", request, context)
        job = make_job("job-new", pb.JOB_STATE_QUEUED, spec=request.spec)
        self.jobs[job.id] = job
        return pb.SubmitJobResponse(job=job)

    def GetJob(self, request, context):
        self.record("GetJob", request, context)
        if request.job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
        return pb.GetJobResponse(job=self.jobs[request.job_id])

    def ListJobs(self, request, context):
        self.record("ListJobs", request, context)
        ids = sorted(i for i in self.jobs if i.startswith("job-") and i != "job-new")
        start = int(request.page_token or 0)
        end = start + request.page_size
        return pb.ListJobsResponse(jobs=[self.jobs[i] for i in ids[start:end]],
                                   next_page_token=str(end) if end < len(ids) else "")

    def CancelJob(self, request, context):
        self.record("CancelJob", request, context)
        job = self.jobs[request.job_id]
        job.state = pb.JOB_STATE_CANCELLED
        job.error.message = request.reason
        return pb.CancelJobResponse(job=job)

    def WatchJob(self, request, context):
        self.record("WatchJob", request, context)
        job = self.jobs[request.job_id]
        yield pb.WatchJobResponse(job=make_job(job.id, pb.JOB_STATE_RUNNING))
        events = [
            pb.JobEvent(sequence=1, progress=pb.JobProgress(stage="calibrate", layer=1,
                                                            num_layers=2, fraction=0.5)),
            pb.JobEvent(sequence=2, log=pb.LogLine(level="info", text="layer 2", worker_id="w0")),
            pb.JobEvent(sequence=3, state_change=pb.StateChange(state=self.final_state,
                                                                reason="done")),
        ]
        for event in events:
            yield pb.WatchJobResponse(event=event)
        job.state = self.final_state
        if self.final_state == pb.JOB_STATE_SUCCEEDED:
            job.result.output_path = job.spec.output_path
            job.result.input_bytes, job.result.output_bytes = 4000, 1000
            job.result.eval.add(model="original", perplexity=10.0, scored_tokens=100,
                                top1_agreement=1.0)
            job.result.eval.add(model="compressed", perplexity=10.5, perplexity_change_percent=5.0,
                                scored_tokens=100, mean_kl=0.01, top1_agreement=0.9)
        else:
            job.error.message = "out of memory"


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_CompressionServiceServicer_to_server(self.fake, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = tempfile.TemporaryDirectory()
        self.token_file = Path(self.tmp.name) / "token"
        self.token_file.write_text(f"  {TOKEN}\n")

    def tearDown(self):
        self.server.stop(None)
        self.tmp.cleanup()

    def client(self, **kwargs):
        return Client(self.address, token_file=self.token_file, timeout=5.0, **kwargs)

    def test_token_and_deadline_on_every_call(self):
        with self.client() as client:
            client.submit({"model_path": "/m", "output_format": "gptq", "device": "cuda"})
            client.get("job-1")
            list(client.list(page_size=2))
            client.cancel("job-2", "no longer needed")
            list(client.watch("job-3"))
        methods = {c[0] for c in self.fake.calls}
        self.assertEqual(methods, {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob"})
        for method, metadata, remaining, _ in self.fake.calls:
            self.assertEqual(metadata.get("authorization"), f"Bearer {TOKEN}", method)
            if method != "WatchJob":  # unary calls carry the client's deadline
                self.assertIsNotNone(remaining, method)
                self.assertLess(remaining, 5.5, method)  # 5 s, plus gRPC's rounding

    def test_no_token_sends_no_authorization(self):
        with Client(self.address) as client:
            client.get("job-0")
        self.assertNotIn("authorization", self.fake.calls[0][1])

    def test_token_file_errors(self):
        empty = Path(self.tmp.name) / "empty"
        empty.write_text("\n")
        with self.assertRaisesRegex(ValueError, "empty"):
            Client(self.address, token_file=empty)
        with self.assertRaises(ValueError):
            Client(self.address, token="a", token_file=self.token_file)

    def test_submit_maps_spec_dict(self):
        with self.client() as client:
            job = client.submit({"model_path": "/m", "output_format": "compressed-tensors",
                                 "device": "cpu", "calibration": {"path": "/c", "num_samples": 8},
                                 "labels": {"team": "x"}})
        self.assertEqual(job.id, "job-new")
        self.assertEqual(state_name(job.state), "queued")
        spec = self.fake.calls[0][3].spec
        self.assertEqual(spec.output_format, pb.OUTPUT_FORMAT_COMPRESSED_TENSORS)
        self.assertEqual(spec.device, pb.DEVICE_PREFERENCE_CPU)
        self.assertEqual(spec.calibration.num_samples, 8)
        self.assertEqual(spec.labels["team"], "x")

    def test_state_names(self):
        for name in ("running", "RUNNING", "JOB_STATE_RUNNING", pb.JOB_STATE_RUNNING):
            self.assertEqual(state_value(name), pb.JOB_STATE_RUNNING)
        self.assertEqual(state_value(None), pb.JOB_STATE_UNSPECIFIED)
        self.assertEqual(state_name(pb.JOB_STATE_CANCELLED), "cancelled")
        with self.assertRaises(ValueError):
            state_value("sleeping")
        with self.client() as client:
            list(client.list(state="failed"))
        self.assertEqual(self.fake.calls[0][3].state, pb.JOB_STATE_FAILED)

    def test_list_pages_through_every_job(self):
        with self.client() as client:
            ids = [job.id for job in client.list(page_size=2)]
        self.assertEqual(ids, [f"job-{i}" for i in range(5)])
        requests = [c[3] for c in self.fake.calls]
        self.assertEqual([r.page_token for r in requests], ["", "2", "4"])
        self.assertTrue(all(r.page_size == 2 for r in requests))

    def test_errors_carry_the_status_code(self):
        with self.client() as client:
            with self.assertRaises(ShrinkrayError) as caught:
                client.get("nope")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no job nope", str(caught.exception))

    def test_watch_ends_at_final_state_and_wait_returns_it(self):
        with self.client() as client:
            responses = list(client.watch("job-4"))
            self.assertTrue(responses[0].HasField("job"))
            self.assertEqual(responses[-1].event.state_change.state, pb.JOB_STATE_SUCCEEDED)
            seen = []
            job = client.wait("job-4", on_response=seen.append)
        self.assertEqual(job.state, pb.JOB_STATE_SUCCEEDED)
        self.assertEqual(len(seen), 4)

    def run_example(self, *extra):
        recipe = Path(self.tmp.name) / "recipe.yaml"
        recipe.write_text("[{gptq: {bits: 4, group_size: 32}}]\n")
        command = [sys.executable, str(HERE.parent / "examples" / "submit_and_watch.py"),
                   "--server", self.address, "--token-file", str(self.token_file),
                   "--model", "/data/model", "--recipe", str(recipe), "--calib", "/data/calib.txt",
                   "--num-samples", "16", "--seqlen", "64", "--out", "/data/out",
                   "--format", "gptq", "--eval", "/data/valid.txt", "--eval-max-chars", "2000",
                   "--workers", "2", *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def test_example_succeeds(self):
        run = self.run_example()
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        lines = run.stdout.splitlines()
        self.assertEqual(lines[0], "job job-new")
        self.assertIn("progress  50.0% calibrate layer 1/2", lines)
        self.assertIn("final succeeded", lines)
        self.assertTrue(any(l.startswith("compressed ") and "+5.00" in l for l in lines), run.stdout)
        spec = self.fake.calls[0][3].spec
        self.assertEqual(spec.recipe_yaml, "[{gptq: {bits: 4, group_size: 32}}]\n")
        self.assertEqual((spec.calibration.num_samples, spec.calibration.seqlen), (16, 64))
        self.assertEqual((spec.evaluation.path, spec.evaluation.max_chars), ("/data/valid.txt", 2000))
        self.assertEqual((spec.num_workers, spec.output_format), (2, pb.OUTPUT_FORMAT_GPTQ))

    def test_example_exits_1_when_the_job_fails(self):
        self.fake.final_state = pb.JOB_STATE_FAILED
        run = self.run_example()
        self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertEqual(run.stdout.splitlines()[0], "job job-new")
        self.assertIn("out of memory", run.stderr)

    def test_example_exits_1_without_a_server(self):
        self.server.stop(None)
        run = self.run_example("--timeout", "2")
        self.assertEqual(run.returncode, 1, run.stdout + run.stderr)
        self.assertIn("UNAVAILABLE", run.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
