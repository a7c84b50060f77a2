"""Where the arrays of a run live: the mesh of local devices the pmapped steps span, the replicated state, and
the batches copied to the devices ahead of the step that takes them."""

import queue
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnjax import data

AXIS = "batch"  # the pmap axis: the global batch is split along it, gradients and statistics averaged over it
# Host-to-device copies go one at a time: the prefetch thread's, and a pmapped step's own copy of a host batch made
# as it is dispatched (evaluation's). Interleaved, they left XLA:CPU's simulated devices deadlocked in an eval
# step's all-reduce, each device's copies queued in another order (seen in the test suite, the prefetch thread
# blocked in device_put, the all-reduce's rendezvous waiting for good).
TRANSFERS = threading.Lock()


def device_mesh(devices=None) -> Mesh:
  return Mesh(np.array(devices or jax.local_devices()), (AXIS,))


def layout_of(global_batch: int) -> data.Layout:
  """How a global batch splits over this job's processes, then over this process's devices."""
  return data.Layout(
    global_batch,
    local_devices=jax.local_device_count(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def replicate(tree, mesh: Mesh):
  """Place a pytree on every local device once, with the sharding the pmapped step returns (so it traces once)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """How a host batch [local_devices, per_device_batch, ...] lies on the mesh: one slice per device."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def dispatched(p_step, state, host_batch):
  """`p_step(state, host_batch)` for a batch still on the host, whose copy to the devices its dispatch makes."""
  with TRANSFERS:
    return p_step(state, host_batch)


def prefetch_to_device(iterator, mesh: Mesh, size: int = 2):
  """Yield (batch on device, iterator state after it), `size` batches ahead, from a background thread.

  The thread reads the next batches and copies them to the devices while the step runs, so the training
  loop's own work per step is only to dispatch it. The iterator state travels with its batch, so a checkpoint
  records the position of the last batch *trained on*, not of the last one prefetched. An error in the
  pipeline is raised in the loop, at the batch where it happened. Closing the generator (or leaving a `for`
  over it) stops and joins the thread.
  """
  sharding, ready, stop = batch_sharding(mesh), queue.Queue(maxsize=size), threading.Event()

  def offer(item):  # wait for room, unless the loop has stopped taking batches
    while not stop.is_set():
      try:
        return ready.put(item, timeout=0.1)
      except queue.Full:
        pass

  def produce():
    try:
      while not stop.is_set():
        batch = next(iterator)
        with TRANSFERS:
          on_devices = jax.device_put(batch, sharding)
        offer((on_devices, iterator.get_state()))
    except BaseException as e:  # StopIteration too: the loop sees the end where it happened
      offer(e)

  thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if isinstance(item, StopIteration):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:  # the loop stopped taking batches: let the thread end and release the iterator
    stop.set()
    thread.join()
