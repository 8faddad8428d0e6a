"""Multi-process start-up and the few cross-process facts the loop needs.

Every process of a multi-host job runs the same command. `initialize` connects them with `jax.distributed.initialize`,
from explicit flags (`--coordinator_address --num_processes --process_id`) or, with none given, by letting JAX read
the cluster environment when one is detected (Cloud TPU slices, SLURM `srun`, Open MPI `mpirun`). Detection only
looks at environment variables and PCI device files, so a plain single machine pays nothing and stays single-process.
It must run before anything touches devices: JAX refuses to connect processes once a backend exists.
"""

from __future__ import annotations

import glob
import os

import jax
import numpy as np
from jax.sharding import Mesh

from vidgen.parallel.mesh import batch_sharding

_GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v3 ... v6e, 7x); the same vendor id also covers Google's virtual NIC on every GCE VM.
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _tpu_chips_attached() -> bool:
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_file), "device")) as f:
        if f.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def detect_cluster(environ: dict[str, str] | None = None) -> str | None:
  """Names the multi-process environment this process was started in ("tpu", "slurm", "openmpi"), or None.

  Only environments with more than one process count for SLURM and Open MPI: a single `srun` task is a plain run. On a
  TPU VM JAX asks the metadata server for the slice's workers, which also works (as one process) on a one-host slice.
  """
  env = os.environ if environ is None else environ
  if all(v in env for v in _SLURM_VARS):
    return "slurm" if int(env["SLURM_NTASKS"]) > 1 else None
  if "OMPI_MCA_orte_hnp_uri" in env:
    return "openmpi" if int(env.get("OMPI_COMM_WORLD_SIZE", "2")) > 1 else None
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1 or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"  # GKE TPU pods and multislice set these
  if environ is None and _tpu_chips_attached():
    return "tpu"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Connects the processes of a job (a no-op for one process); returns a line describing what was done.

  With all three arguments None, a detected cluster environment (see `detect_cluster`) supplies them. Given explicitly,
  `coordinator_address` ("host:port" of process 0, reachable from every process) is required when
  `num_processes > 1`; `num_processes=1` with nothing else means a plain single-process run.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  if jax.distributed.is_initialized():
    return f"jax.distributed already initialized: process {jax.process_index()} of {jax.process_count()}"
  if all(v is None for v in given.values()):
    cluster = detect_cluster()
    if cluster is None:
      return "single process (no --coordinator_address / --num_processes / --process_id, no cluster detected)"
    try:
      jax.distributed.initialize()
    except Exception as e:
      raise RuntimeError(
          f"this looks like a {cluster} multi-process environment, but jax.distributed.initialize() could not read "
          f"its settings ({e}); pass --coordinator_address, --num_processes and --process_id, or --num_processes=1 "
          "to run as a single process") from e
    return f"jax.distributed initialized from the {cluster} environment: process {jax.process_index()} of " \
           f"{jax.process_count()}"
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
  if num_processes == 1 and coordinator_address is None and process_id in (None, 0):
    return "single process (--num_processes=1)"
  if detect_cluster() is None:
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
      raise ValueError(f"multi-process runs need --coordinator_address, --num_processes and --process_id together "
                       f"(no cluster environment was detected to supply {missing})")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id must be in [0, --num_processes={num_processes}), got {process_id}")
    if ":" not in coordinator_address:
      raise ValueError(f"--coordinator_address must be host:port (process 0's address), got {coordinator_address!r}")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return f"jax.distributed initialized: process {jax.process_index()} of {jax.process_count()} " \
         f"(coordinator {coordinator_address or 'from the environment'})"


def batch_shard(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """(index, count): this process feeds rows [index * n, (index + 1) * n) of the global batch, n = global / count.

  Read off the batch sharding, not assumed from the process index: the mesh decides which rows land on this process's
  devices. Processes that differ only along model axes (tensor across hosts) get the same index and feed equal rows.
  """
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch,))
  rows = {idx[0].indices(global_batch)[:2] for idx in index_map.values()}
  start, stop = min(r[0] for r in rows), max(r[1] for r in rows)
  size = stop - start
  covered = np.zeros(global_batch, bool)
  for a, b in rows:
    covered[a:b] = True
  if not covered[start:stop].all() or global_batch % size or start % size:
    raise ValueError(
        f"the batch rows on process {jax.process_index()}'s devices ({sorted(rows)}) are not one contiguous block "
        f"of size dividing the batch {global_batch}; order config.mesh so whole data x fsdp blocks sit on each host")
  return start // size, global_batch // size


def host_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that sit on this process's devices, in order (the inverse of feeding
  them with `jax.make_array_from_process_local_data`); replicas over model axes count once."""
  blocks = {}
  for shard in x.addressable_shards:
    start = shard.index[0].indices(x.shape[0])[0]
    if start not in blocks:
      blocks[start] = np.asarray(shard.data)
  return np.concatenate([blocks[k] for k in sorted(blocks)])


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any of them (so all take the same branch); cheap for one process."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
