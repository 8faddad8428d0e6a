"""`vidgen eval --metrics`: FVD, FID, LPIPS, PSNR and SSIM of a run's clips against real ones.

  from vidgen.evaluation import evaluate_metrics
  results = evaluate_metrics("workdirs/shapes_t2v", ("fvd", "lpips", "psnr"), num_clips=256)

What is compared with what:
  - a DiT run: N clips generated (the run's sampling settings; each batch seeded by (seed, its first index)) from the
    captions (or classes) of N real clips of the run's `split`; paired metrics (lpips, psnr, ssim) compare clip i
    with the real clip whose caption prompted it, which measures how close a generation lands to that clip, not its
    quality;
  - a VAE run: the reconstructions of N real clips (paired metrics are the usual reconstruction metrics);
  - `reference=DIR`: the real side is the videos of DIR instead (sorted, the first N, each a centre crop resized to
    the run's size from its first frame); only unpaired metrics (fvd, fid) then apply.

FVD is the Frechet distance between I3D (Kinetics-400) logit statistics (`vidgen.metrics.i3d`, the TF-Hub FVD of
Unterthiner et al.), FID between InceptionV3 pool features of every frame (`vidgen.metrics.inception`, the TF-FID
network, weights by path). Features are accumulated batch by batch into float64 sums (`FeatureStats`), so memory does
not grow with N; each batch is sharded over the devices of the data axis.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from vidgen import runs
from vidgen.data.decode import is_media, read_clip
from vidgen.data.sampling import ClipSpec
from vidgen.data.sources import get_source
from vidgen.errors import InputError
from vidgen.metrics.frechet import FeatureStats, frechet_distance
from vidgen.parallel import batch_sharding, make_mesh

METRICS = ("fvd", "fid", "lpips", "psnr", "ssim")
PAIRED = ("lpips", "psnr", "ssim")

__all__ = ["METRICS", "evaluate_metrics"]


def _check_metrics(metrics: Sequence[str], reference: str | None, fid_weights: str | None) -> tuple[str, ...]:
  metrics = tuple(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
  unknown = [m for m in metrics if m not in METRICS]
  if not metrics or unknown:
    raise InputError(f"metrics: {unknown or 'none given'}; choose from {METRICS}")
  if reference is not None and any(m in PAIRED for m in metrics):
    raise InputError(f"metrics {[m for m in metrics if m in PAIRED]} compare clip i with real clip i, which a "
                     "reference folder does not pair; with --reference use fvd and fid")
  if "fid" in metrics and not (fid_weights and os.path.isfile(fid_weights)):
    from vidgen.metrics.inception import FID_WEIGHTS_URL
    raise InputError(f"metric fid needs the InceptionV3 weights file (--fid_weights PATH"
                     f"{'' if not fid_weights else f'; {fid_weights} does not exist'}); download it from "
                     f"{FID_WEIGHTS_URL}")
  return metrics


def _reference_clips(directory: str, spec: ClipSpec, count: int, batch: int) -> Iterator[np.ndarray]:
  if not os.path.isdir(directory):
    raise InputError(f"reference: {directory} is not a folder of videos")
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(directory) for f in names if is_media(f))
  if len(files) < count:
    raise InputError(f"reference: {directory} holds {len(files)} videos, fewer than the {count} clips asked for")
  rng = np.random.default_rng(0)
  for start in range(0, count, batch):
    yield np.stack([read_clip(f, spec, rng) for f in files[start:start + batch]])


class _Features:
  """The metric networks, jitted once, each batch sharded over the mesh's data axis (padded to whole devices)."""

  def __init__(self, metrics: tuple[str, ...], mesh: jax.sharding.Mesh, fid_weights: str | None, lpips_net: str):
    from flax import nnx

    from vidgen.metrics import i3d, inception
    from vidgen.metrics.image import psnr, ssim
    from vidgen.metrics.lpips import lpips

    self.mesh, self.devices = mesh, mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    self.fns: dict[str, Any] = {}  # name -> (jitted fn(weights, videos), weights)
    if "fvd" in metrics:
      graph, state = nnx.split(i3d.load_i3d())
      self.fns["fvd"] = (jax.jit(lambda w, v: i3d.i3d_features(nnx.merge(graph, w), v)), state)
    if "fid" in metrics:
      graph, state = nnx.split(inception.load_fid_inception(fid_weights))

      def frames(w, v):  # every frame of every clip: [B, T, H, W, 3] -> [B * T, 2048]
        x = v.reshape((-1,) + v.shape[2:])
        return nnx.merge(graph, w)(inception.preprocess(x))
      self.fns["fid"] = (jax.jit(frames), state)
    to_float = lambda v: v.astype(np.float32) / 127.5 - 1.0  # noqa: E731
    paired = {"lpips": lambda a, b: lpips(to_float(a), to_float(b), net=lpips_net),
              "psnr": lambda a, b: psnr(to_float(a), to_float(b)),
              "ssim": lambda a, b: ssim(to_float(a), to_float(b))}
    self.paired = {m: jax.jit(f) for m, f in paired.items() if m in metrics}

  def _shard(self, videos: np.ndarray) -> tuple[jax.Array, int]:
    n = len(videos)
    pad = -n % self.devices
    if pad:
      videos = np.concatenate([videos, np.repeat(videos[-1:], pad, axis=0)])
    return jax.device_put(videos, batch_sharding(self.mesh, videos.ndim)), n

  def unpaired(self, name: str, videos: np.ndarray) -> np.ndarray:
    x, n = self._shard(videos)
    fn, weights = self.fns[name]
    out = np.asarray(fn(weights, x), np.float64)
    return out[: n * (out.shape[0] // x.shape[0])]

  def pairwise(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    (x, n), (y, _) = self._shard(a), self._shard(b)
    return np.asarray(self.paired[name](x, y), np.float64)[:n]


def evaluate_metrics(workdir: str, metrics: Sequence[str], *, num_clips: int = 256, batch_size: int = 16,
                     split: str = "validation", reference: str | None = None, fid_weights: str | None = None,
                     lpips_net: str = "alex", seed: int = 0, steps: int | None = None,
                     write: bool = True) -> dict[str, Any]:
  """Computes `metrics` for the run in `workdir` (see the module docstring) and, with `write`, merges them into
  workdir/eval.json under "metrics". Returns {metric: value, ..., "num_clips": N, ...}."""
  metrics = _check_metrics(metrics, reference, fid_weights)
  if num_clips < 2 or batch_size < 1:
    raise InputError(f"num_clips={num_clips} (>= 2: a covariance needs two clips) and batch_size={batch_size} (>= 1)")
  config = runs.read_config(workdir)
  mesh = make_mesh({"data": -1})
  d = config.data
  # A VAE run is scored on clips of its evaluation length (data.eval_frames), as its own evaluation is.
  frames = int(d.get("eval_frames") or d.num_frames) if config.trainer == "vae" else int(d.num_frames)
  spec = ClipSpec(num_frames=frames, height=int(d.height), width=int(d.width), offset="start", crop="center",
                  short_clips="pad")
  if "fvd" in metrics:
    from vidgen.metrics.i3d import MIN_FRAMES
    if spec.num_frames < MIN_FRAMES:
      raise InputError(f"fvd: the run's clips have {spec.num_frames} frames; I3D needs clips of at least "
                       f"{MIN_FRAMES} frames")
  features = _Features(metrics, mesh, fid_weights, lpips_net)
  references = None if reference is None else _reference_clips(reference, spec, num_clips, batch_size)
  make = _generator(workdir, config, mesh, seed, steps)
  stats = {m: (FeatureStats(), FeatureStats()) for m in ("fvd", "fid") if m in metrics}
  values: dict[str, list[np.ndarray]] = {m: [] for m in metrics if m in PAIRED}
  done = 0
  for clips, prompts in _source_clips(config, split, num_clips, batch_size, frames):
    fake = make(clips, prompts, done)
    real = clips if references is None else next(references)
    for m, (ours, theirs) in stats.items():
      ours.update(features.unpaired(m, fake))
      theirs.update(features.unpaired(m, real))
    for m in values:
      values[m].append(features.pairwise(m, fake, real))
    done += len(real)
  results: dict[str, Any] = {m: frechet_distance(a, b) for m, (a, b) in stats.items()}
  for m, chunks in values.items():
    v = np.concatenate(chunks)
    results[m] = float(v.mean())
    results[f"{m}_std"] = float(v.std(ddof=1))
  results.update(num_clips=done, split=None if reference else split, reference=reference, seed=seed,
                 generated_by="vae reconstruction" if config.trainer == "vae" else "dit sampling")
  if write:
    path = os.path.join(workdir, "eval.json")
    existing = json.load(open(path)) if os.path.exists(path) else {}
    existing["metrics"] = results
    with open(path + ".tmp", "w") as f:
      json.dump(existing, f, indent=2)
    os.replace(path + ".tmp", path)
  return results


def _source_clips(config, split: str, count: int, batch: int, frames: int) -> Iterator[tuple[np.ndarray, list]]:
  """(real uint8 clips of `frames` frames, their prompts) of the run's data `split`, `batch` at a time, `count` in
  all."""
  source = get_source(config.data)
  iterator = source.iterator(split, global_batch=batch, num_frames=frames)
  done = 0
  while done < count:
    b = next(iterator)
    n = min(batch, count - done)
    captions = b.get("caption")
    prompts = ([c.decode() if isinstance(c, bytes) else str(c) for c in captions[:n]] if captions is not None
               else [None] * n)
    yield b["video"][:n], prompts
    done += n


def _generator(workdir: str, config, mesh, seed: int, steps: int | None):
  """(real clips, prompts, index of the first) -> the run's clips for them: generated (DiT) or reconstructed (VAE)."""
  if config.trainer == "vae":
    import jax.numpy as jnp

    from vidgen.data import to_uint8
    vae, _ = runs.load_vae(workdir, mesh)
    reconstruct = jax.jit(lambda v: jnp.clip(vae.decode(vae.encode(v.astype(jnp.float32) / 127.5 - 1.0).mode()),
                                             -1.0, 1.0))
    return lambda real, prompts, start: to_uint8(np.asarray(reconstruct(real)))
  from vidgen.pipeline import VideoPipeline
  pipe = VideoPipeline.from_workdir(workdir, mesh=mesh)
  defaults = pipe.sampling_defaults()
  if steps is not None:
    defaults["steps"] = steps

  def generate(real, prompts, start):
    if any(p is None for p in prompts):
      raise InputError("the run's data has no captions to prompt the generated clips with")
    # One call per batch, seeded by its first clip's index: the clips depend on (seed, batch_size).
    return pipe(list(prompts), **{**defaults, "num_frames": real.shape[1]}, height=real.shape[2],
                width=real.shape[3], seed=seed * 1_000_003 + start)
  return generate
