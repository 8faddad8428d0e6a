"""Frame tasks of a shapes run trained with `config.tasks`: image-to-video, extension, interpolation, long videos.

  python -m vidgen.benchmarks.frame_tasks --workdir W [--clips 32 --steps 50 --long 5]

Real clips of the validation split (seen combinations) and of the held-out split (combinations never trained on) give
the frames and their captions give the prompts. Every output (given frames and generated ones together) is read by the
shapes reader (`vidgen.data.shapes.reader`, thresholds calibrated on ground-truth renderings): how often it reads the
caption's color, shape, direction and all three. Text-to-video from the same prompts and noise is the baseline a
condition should improve on; the reading of the true clips is the ceiling.
  image_to_video   frame 0 given;
  extend_forward   the first 9 frames given, 12 generated after them;
  extend_backward  the last 9 frames given, 8 generated before them (plus one for the first latent frame);
  interpolate      frames 0 and 16 given (the last one held over the last 4 frames), 12 generated between;
  long             `--long` windows: text-to-video extended forwards: the first and last windows read as clips, the
                   frames after the first window one at a time, and the centroid step at each seam against the steps
                   inside windows (pixels per frame).
The generated frames are also read one at a time (color, shape): a condition that carries the given frames' shape
and color over shows as more of them read right than in text-to-video.
Rates carry 95% Wilson intervals and their sample sizes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vidgen.data.shapes import ShapesDataset, parse_combination
from vidgen.data.shapes.reader import analyze_clip, frame_features
from vidgen.metrics.intervals import wilson_interval


def _clips(config, split: str, count: int) -> tuple[np.ndarray, list[str]]:
  data = ShapesDataset.from_config(config.data, split)
  clips = [data[i] for i in range(count)]
  return np.stack([c.video for c in clips]), [c.caption for c in clips]


ATTRIBUTES = ("color", "shape", "direction", "all")


def _reads(videos, prompts) -> dict[str, list[bool]]:
  """Per attribute (and "all" three), whether the reader reads each clip as its caption says."""
  out = {name: [] for name in ATTRIBUTES}
  for video, prompt in zip(videos, prompts):
    a = analyze_clip(np.asarray(video))
    right = [x == y for x, y in zip((a.color, a.shape, a.direction), parse_combination(prompt))]
    for name, ok in zip(ATTRIBUTES, right + [all(right)]):
      out[name].append(ok)
  return out


def _right(videos, prompts) -> list[bool]:
  return _reads(videos, prompts)["all"]


def _rates(videos, prompts) -> dict:
  return {name: _rate(flags) for name, flags in _reads(videos, prompts).items()}


def _frame_reads(videos, prompts, frames) -> dict:
  """The generated frames one at a time: per clip, the fraction of `frames` the reader reads as the caption's color
  and as its shape (a frame it cannot read counts as wrong); mean and standard error over clips."""
  out = {}
  for index, name in ((0, "color"), (1, "shape")):
    per_clip = []
    for video, prompt in zip(videos, prompts):
      truth = parse_combination(prompt)[index]
      reads = [analyze_clip(np.asarray(video)[t][None]) for t in frames]
      per_clip.append(np.mean([(a.color, a.shape)[index] == truth for a in reads]))
    per_clip = np.asarray(per_clip)
    out[name] = {"mean": float(per_clip.mean()), "se": float(per_clip.std(ddof=1) / np.sqrt(len(per_clip))),
                 "clips": int(len(per_clip)), "frames_per_clip": len(frames)}
  return out


def _rate(flags: list[bool]) -> dict:
  n, k = len(flags), int(sum(flags))
  lo, hi = wilson_interval(k, n)
  return {"rate": k / max(n, 1), "low": lo, "high": hi, "n": n}


def _track(video: np.ndarray) -> np.ndarray:
  """The shape's centroid in every frame, pixels `[T, 2]` (NaN where a frame has no foreground)."""
  centres = []
  for frame in video:
    f = frame_features(frame)
    centres.append((np.nan, np.nan) if f is None else f.centroid)
  return np.asarray(centres, np.float64)


def _steps(video: np.ndarray) -> np.ndarray:
  """Centroid displacement between consecutive frames, pixels `[T - 1]` (NaN next to a frame with no foreground)."""
  return np.linalg.norm(np.diff(_track(video), axis=0), axis=1)


def _speed(track: np.ndarray) -> float:
  """Pixels per frame of the least-squares line through a track's readable points (NaN with fewer than 2)."""
  t = np.flatnonzero(~np.isnan(track[:, 0]))
  if len(t) < 2:
    return float("nan")
  slope = np.polyfit(t.astype(np.float64), track[t], 1)[0]
  return float(np.linalg.norm(slope))


def _quantiles(values) -> dict:
  v = np.asarray(values, np.float64)
  v = v[~np.isnan(v)]
  if not len(v):
    return {"n": 0}
  return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
          "n": int(len(v))}


def _continuation(videos: np.ndarray, given: int) -> dict:
  """Forward extension: the speed of the generated frames over that of the given ones, and the first generated
  frame's distance from where the given frames' line puts it (pixels)."""
  ratios, misses = [], []
  for video in videos:
    track = _track(video)
    before, after = track[:given], track[given:]
    ratios.append(_speed(after) / max(_speed(before), 1e-6))
    t = np.flatnonzero(~np.isnan(before[:, 0]))
    if len(t) >= 2 and not np.isnan(after[0, 0]):
      line = np.polyfit(t.astype(np.float64), before[t], 1)
      misses.append(float(np.linalg.norm(line[0] * given + line[1] - after[0])))
  return {"speed_ratio": _quantiles(ratios), "first_frame_miss_px": _quantiles(misses)}


def _seams(videos: np.ndarray, boundaries: list[int]) -> dict:
  """Centroid steps (pixels per frame) across the given boundaries (step b: frame b to b + 1) and elsewhere."""
  seam, inside = [], []
  for video in videos:
    step = _steps(video)
    seam.extend(step[boundaries])
    inside.extend(np.delete(step, boundaries))
  return {"seam_step": _quantiles(seam), "inside_step": _quantiles(inside)}


def coding_error(pipe, true: np.ndarray) -> dict:
  """How the given frames' latents compare with those of the whole clip (relative RMS, per number of latent frames
  k): a head (the first 1 + 4(k - 1) frames coded alone) should equal the clip's first k latent frames under a causal
  VAE; a tail (the last 4k frames coded after a copy of their first frame) approximates the clip's last k."""
  encode = lambda frames: np.asarray(pipe._encode_fn()(pipe.vae_params, pipe.vae_stats, frames))  # noqa: E731
  video = true.astype(np.float32) / 127.5 - 1.0
  full = encode(video)
  latents, frames = full.shape[1], video.shape[1]
  rms = float(np.sqrt(np.mean(full ** 2)))
  out = {"latent_rms": rms, "head": {}, "tail": {}}
  for k in range(1, latents):
    head = encode(video[:, :1 + 4 * (k - 1)])
    tail = video[:, frames - 4 * k:]
    coded = encode(np.concatenate([tail[:, :1], tail], axis=1))[:, 1:]
    out["head"][k] = float(np.sqrt(np.mean((head - full[:, :k]) ** 2)) / rms)
    out["tail"][k] = float(np.sqrt(np.mean((coded - full[:, latents - k:]) ** 2)) / rms)
    out["tail_first_latent"] = out.get("tail_first_latent", {})
    out["tail_first_latent"][k] = float(np.sqrt(np.mean((coded[:, 0] - full[:, latents - k]) ** 2)) / rms)
  return out


def run(workdir: str, clips: int, steps: int, long_windows: int, seed: int) -> dict:
  from vidgen.pipeline import VideoPipeline

  pipe = VideoPipeline.from_workdir(workdir)
  config = pipe.config
  window = int(config.data.num_frames)
  kw = dict(steps=steps, guidance=config.sampling.guidance, sampler=config.sampling.sampler, num_frames=window,
            guidance_interval=tuple(config.sampling.guidance_interval), seed=seed)
  results = {"workdir": workdir, "clips_per_split": clips, "steps": steps, "window": window,
             "coding": coding_error(pipe, _clips(config, "validation", clips)[0])}
  for split, name in (("validation", "seen"), ("held_out", "held_out")):
    true, prompts = _clips(config, split, clips)
    r = results[name] = {}
    outputs = {
        "text_to_video": (pipe(prompts, **kw), true),
        "image_to_video": (pipe(prompts, image=true[:, 0], **kw), true),
        "extend_forward": (pipe(prompts, video=true[:, :9], **kw), true),
        "extend_backward": (pipe(prompts, video=true[:, -9:], extend="backward", **kw), true),
        "interpolate": (pipe(prompts, first=true[:, :1], last=true[:, -1:], **kw), true),
    }
    # The frames each output generated (the others were given).
    new_frames = {"text_to_video": range(window), "image_to_video": range(1, window),
                  "extend_forward": range(9, outputs["extend_forward"][0].shape[1]),
                  "extend_backward": range(outputs["extend_backward"][0].shape[1] - 9),
                  "interpolate": range(1, outputs["interpolate"][0].shape[1] - 1)}
    for task, (generated, reference) in outputs.items():
      r[task] = {"generated": _rates(generated, prompts), "true_clips": _rate(_right(reference, prompts)),
                 "frames": int(generated.shape[1]), "generated_frames": _frame_reads(generated, prompts,
                                                                                    list(new_frames[task]))}
    r["extend_forward"].update(generated_motion=_continuation(outputs["extend_forward"][0], 9),
                               true_motion=_continuation(true, 9))
    between = outputs["interpolate"][0]
    r["interpolate"].update(_seams(between, [0, between.shape[1] - 2]))
    r["image_to_video"].update(_seams(outputs["image_to_video"][0], [0]))
    latents = 1 + (window - 1) // 4
    context = 1 + 4 * (max(1, latents // 2) - 1)  # the pipeline's default overlap, in frames
    added = window - context
    frames = window + (long_windows - 1) * added
    long = pipe(prompts, **{**kw, "num_frames": frames})
    # Window j's frames (its context included) and the step from its context's last frame to its first new one.
    starts = [0] + [window + (j - 1) * added - context for j in range(1, long_windows)]
    boundaries = [window - 1 + j * added for j in range(long_windows - 1)]
    r["long"] = {"frames": frames, "windows": long_windows, "first_window": _rates(long[:, :window], prompts),
                 "last_window": _rates(long[:, starts[-1]:], prompts), **_seams(long, boundaries),
                 "frames_after_first_window": _frame_reads(long, prompts, list(range(window, frames))),
                 "last_window_frames": _frame_reads(long, prompts, list(range(starts[-1] + context, frames)))}
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a shapes DiT run trained with frame tasks")
  parser.add_argument("--clips", type=int, default=32, help="clips per split (seen, held-out)")
  parser.add_argument("--steps", type=int, default=50, help="sampler steps")
  parser.add_argument("--long", type=int, default=5, help="windows of the long video (5: 65 frames of 17-frame windows)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None, help="also write the results to this JSON file")
  args = parser.parse_args()
  results = run(args.workdir, args.clips, args.steps, args.long, args.seed)
  text = json.dumps(results, indent=2)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
