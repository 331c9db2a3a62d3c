#!/usr/bin/env python3
"""Submits a compression job to a shrinkray coordinator, prints its progress
until it finishes, then its evaluation table. Output is plain lines, meant for
scripts: the first line is `job <id>`. Exits 0 when the job succeeded, 1 when
it failed, was cancelled or a call failed, 2 on bad arguments.

  SHRINKRAY_PYTHON_GEN=build/client/python/gen /usr/bin/python3 \\
      client/python/examples/submit_and_watch.py --server localhost:50051 \\
      --model /data/stories260K --recipe w4g32.yaml --calib /data/train.txt \\
      --out /data/out/stories260K-w4g32 --format gptq --eval /data/valid.txt
"""

import argparse
import os
import sys
from pathlib import Path

# The package lives one folder up (client/python/shrinkray_client).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shrinkray_client import Client, ShrinkrayError, pb, state_name  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="localhost:50051", help="coordinator HOST:PORT")
    p.add_argument("--token-file", help="file holding the bearer token")
    p.add_argument("--tls-ca", help="PEM CA bundle: use TLS and trust this CA")
    p.add_argument("--model", required=True, help="Hugging Face model folder (on the shared storage)")
    p.add_argument("--recipe", required=True, help="recipe YAML file (read here, sent as text)")
    p.add_argument("--calib", required=True, help="calibration text or .safetensors")
    p.add_argument("--num-samples", type=int, default=0, help="calibration windows (0: server default 128)")
    p.add_argument("--seqlen", type=int, default=0, help="calibration window length (0: 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--format", default="dense", choices=["dense", "gptq", "compressed-tensors"])
    p.add_argument("--eval", help="held-out text: compare original and compressed")
    p.add_argument("--eval-max-chars", type=int, default=0, help="evaluate only this prefix (0: all)")
    p.add_argument("--eval-seqlen", type=int, default=0, help="evaluation window length (0: 256)")
    p.add_argument("--workers", type=int, default=1, help="workers the job runs on")
    p.add_argument("--device", default="any", choices=["any", "cpu", "cuda"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="validate only")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each unary call, seconds")
    p.add_argument("--verbose", action="store_true", help="also print metric events")
    return p.parse_args(argv)


def server_path(path):
    # Paths are resolved by the coordinator; make relative ones absolute here so
    # they mean what they mean in this shell (on a shared file system).
    return os.path.abspath(path) if path else ""


def describe(response, verbose):
    """One line for a WatchJob message, or None to print nothing."""
    if response.HasField("job"):
        job = response.job
        return f"state {state_name(job.state)} attempt {job.attempt}"
    event = response.event
    kind = event.WhichOneof("kind")
    if kind == "state_change":
        reason = f" ({event.state_change.reason})" if event.state_change.reason else ""
        return f"state {state_name(event.state_change.state)}{reason}"
    if kind == "progress":
        p = event.progress
        layers = f" layer {p.layer}/{p.num_layers}" if p.num_layers else ""
        return f"progress {100.0 * p.fraction:5.1f}% {p.stage}{layers}"
    if kind == "log":
        who = event.log.worker_id or "coordinator"
        return f"log {event.log.level} {who}: {event.log.text}"
    if kind == "metric" and verbose:
        m = event.metric
        labels = "".join(f" {k}={v}" for k, v in sorted(m.labels.items()))
        return f"metric {m.name}={m.value:.6g} step {m.step}{labels}"
    return None


def print_result(job):
    result = job.result
    print(f"output {result.output_path}")
    if result.input_bytes and result.output_bytes:
        print(f"bytes {result.input_bytes} -> {result.output_bytes} "
              f"({result.input_bytes / result.output_bytes:.2f}x smaller)")
    if result.num_matrices:
        print(f"matrices {result.num_matrices} mean_error {result.mean_matrix_error:.6g}")
    for stage, seconds in sorted(result.stage_seconds.items()):
        print(f"stage_seconds {stage} {seconds:.3f}")
    if result.eval:
        print(f"{'model':<12} {'perplexity':>12} {'change%':>9} {'mean_kl':>10} {'top1':>8} {'tokens':>9}")
        for row in result.eval:
            print(f"{row.model:<12} {row.perplexity:>12.4f} {row.perplexity_change_percent:>+9.2f} "
                  f"{row.mean_kl:>10.6f} {row.top1_agreement:>8.4f} {row.scored_tokens:>9d}")


def main(argv=None):
    args = parse_args(argv)
    try:
        recipe = Path(args.recipe).read_text()
    except OSError as e:
        print(f"error: cannot read recipe {args.recipe}: {e.strerror}", file=sys.stderr)
        return 2
    spec = {
        "model_path": server_path(args.model),
        "recipe_yaml": recipe,
        "calibration": {"path": server_path(args.calib), "num_samples": args.num_samples,
                        "seqlen": args.seqlen, "seed": args.seed},
        "output_path": server_path(args.out),
        "output_format": args.format,
        "num_workers": args.workers,
        "device": args.device,
        "overwrite": args.overwrite,
        "dry_run": args.dry_run,
    }
    if args.eval:
        spec["evaluation"] = {"path": server_path(args.eval), "max_chars": args.eval_max_chars,
                              "seqlen": args.eval_seqlen}
    try:
        with Client(args.server, token_file=args.token_file, tls_ca=args.tls_ca,
                    timeout=args.timeout) as client:
            job = client.submit(spec)
            print(f"job {job.id}", flush=True)

            def show(response):
                line = describe(response, args.verbose)
                if line:
                    print(line, flush=True)

            job = client.wait(job.id, on_response=show)
    except (ShrinkrayError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    print(f"final {state_name(job.state)}")
    if job.state != pb.JOB_STATE_SUCCEEDED:
        if job.error.message:
            print(f"error: job {job.id} {state_name(job.state)}: {job.error.message}", file=sys.stderr)
        return 1
    print_result(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
