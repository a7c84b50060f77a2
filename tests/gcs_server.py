"""A local Cloud Storage server for the tests: gcp-storage-emulator (the GCS JSON API, in memory, on 127.0.0.1),
plus two things real GCS does that the emulator does not, added here as a test double:

- generations: downloads carry the object's generation (`x-goog-generation`), and requests conditioned on it are
  answered as GCS answers them: `ifGenerationMatch` not met (0: the object must not exist) fails with 412,
  `ifGenerationNotMatch` met on a read is 304 Not Modified. The workdir claim and tensorstore's OCDBT manifests
  (Orbax's checkpoints) rely on them;
- permissions: buckets whose name starts with `read-only-` refuse every object write with 403, as a bucket the
  credentials may read but not write (the emulator has no IAM).

    python tests/gcs_server.py PORT    # serves until killed; prints "ready" once it listens
"""

import contextlib
import logging
import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

READ_ONLY_PREFIX = "read-only-"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def _error(response, status: HTTPStatus, message: str):
  response.status = status
  response.json({"error": {"code": status.value, "message": message, "errors": [{"message": message}]}})


def _object_name(request) -> str | None:
  if "object_id" in request.params:
    return request.params["object_id"]
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def _current_generation(storage, bucket: str, name: str) -> int:
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0


def guarded(handler, method: str):
  """`handler` with GCS's permission check, generation preconditions and generation headers around it."""

  def handle(request, response, storage, *args, **kwargs):
    bucket, name = request.params.get("bucket_name", ""), _object_name(request)
    writes = method in WRITES and request.path.rstrip("/").split("/")[-1] != "b"  # (creating a bucket is allowed)
    if writes and bucket.startswith(READ_ONLY_PREFIX):
      return _error(
        response,
        HTTPStatus.FORBIDDEN,
        f"tests@cnnjax does not have storage.objects.create access to the Google Cloud Storage bucket {bucket}.",
      )
    if name is not None:
      current = _current_generation(storage, bucket, name)
      match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
      if match and current != int(match[0]):
        return _error(
          response, HTTPStatus.PRECONDITION_FAILED, "At least one of the pre-conditions you specified did not hold."
        )
      if not_match and current and current == int(not_match[0]):
        if not writes:
          response.status = HTTPStatus.NOT_MODIFIED
          return None
        return _error(
          response, HTTPStatus.PRECONDITION_FAILED, "At least one of the pre-conditions you specified did not hold."
        )
    result = handler(request, response, storage, *args, **kwargs)
    if not writes and name is not None and response.status == HTTPStatus.OK:
      with contextlib.suppress(NotFound):
        response["x-goog-generation"] = str(storage.get_file_obj(bucket, name)["generation"])
    return result

  return handle


def install():
  server.HANDLERS = tuple(
    (pattern, {m: guarded(h, m) for m, h in handlers.items()}) for pattern, handlers in server.HANDLERS
  )
  objects.insert = guarded(objects.insert, "POST")  # the router's fallback for uploads posted without /upload


def main(port: int):
  logging.basicConfig(level=logging.CRITICAL)  # the emulator logs every 404 and every closed connection
  install()
  gcs = server.create_server("127.0.0.1", port, in_memory=True)
  gcs.start()
  print("ready", flush=True)
  threading.Event().wait()  # until the test kills this process


if __name__ == "__main__":
  main(int(sys.argv[1]))
