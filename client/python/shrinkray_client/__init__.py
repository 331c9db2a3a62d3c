"""A small Python client for the shrinkray coordinator's CompressionService.

    from shrinkray_client import Client
    with Client("localhost:50051", token_file="token.txt") as client:
        job = client.submit({"model_path": "/data/m", "recipe_yaml": "...", ...})
        final = client.wait(job.id)

The generated protobuf modules are found through SHRINKRAY_PYTHON_GEN (see
client.py and README.md); ``pb`` is shrinkray.v1.compression_pb2.
"""

from .client import (
    FINAL_STATES,
    Client,
    ShrinkrayError,
    is_final,
    pb,
    pb_grpc,
    spec_from_dict,
    state_name,
    state_value,
)

__all__ = [
    "FINAL_STATES",
    "Client",
    "ShrinkrayError",
    "is_final",
    "pb",
    "pb_grpc",
    "spec_from_dict",
    "state_name",
    "state_value",
]
