"""Pixel-frame conditions for generation: what to encode, where it goes in the window, what the output is.

`VideoPipeline` generates one window of `window` frames (T latent frames) at a time. A condition fixes some of its
latent frames (`vidgen.diffusion.tasks`); 4 below is the VAE's temporal factor (`temporal`):
  head  frames encoded alone (a causal VAE codes 1 + 4(k - 1) frames into exactly the first k latent frames of any
        longer clip that starts with them): image-to-video, forward extension, the first clip of an interpolation;
  tail  4k frames standing for the last k latent frames. In training those were coded after the rest of the clip;
        here the preceding frames do not exist yet, so the tail is coded after a copy of its own first frame (which
        only affects the first of its latent frames, within the VAE's small temporal receptive field): backward
        extension, the last clip of an interpolation. An image as the tail is held for 4 frames.
The output keeps every given frame as it was given and puts the generated ones around it: `prefix + window[keep] +
suffix`.

`plan_window` turns the user's inputs into a `WindowPlan`; it checks them (dtype, shape, range, counts) and says
what is wrong with which argument.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vidgen.errors import InputError

EXTEND = ("forward", "backward")


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """One conditioned window. Pixel arrays are float32 in [-1, 1], `[B, F, H, W, 3]`.

  Attributes:
    head: frames coded alone into the window's first `head_latents` latent frames, or None.
    tail: frames (a multiple of `temporal`) coded into the window's last `tail_latents` latent frames, or None.
    keep: (start, stop): the generated frames of the decoded window that the output keeps.
    prefix, suffix: given frames placed before / after them in the output, or None.
    temporal: the VAE's temporal down-sampling (frames per latent frame after the first).
  """

  head: np.ndarray | None
  tail: np.ndarray | None
  keep: tuple[int, int]
  prefix: np.ndarray | None = None
  suffix: np.ndarray | None = None
  temporal: int = 4

  @property
  def head_latents(self) -> int:
    return 0 if self.head is None else 1 + (self.head.shape[1] - 1) // self.temporal

  @property
  def tail_latents(self) -> int:
    return 0 if self.tail is None else self.tail.shape[1] // self.temporal


def as_frames(name: str, value, *, batch: int, image: bool) -> np.ndarray:
  """A user's pixel input -> float32 `[B, F, H, W, 3]` in [-1, 1].

  Args:
    name: the argument's name, for errors.
    value: uint8 in [0, 255] or float in [0, 1]; an image `[H, W, 3]` or a clip `[F, H, W, 3]` shared by every
      prompt, or one per prompt (`[B, H, W, 3]` / `[B, F, H, W, 3]`).
    batch: the number of prompts.
    image: True if `value` is an image (one frame), False if a clip.
  """
  a = np.asarray(value)
  rank = 3 if image else 4
  what = "[H, W, 3]" if image else "[F, H, W, 3]"
  if a.ndim not in (rank, rank + 1) or a.shape[-1] != 3:
    raise InputError(f"{name}: expected {what} or one per prompt [B, {what[1:]}, got shape {a.shape}")
  if a.ndim == rank + 1 and a.shape[0] != batch:
    raise InputError(f"{name}: got {a.shape[0]} for {batch} prompts")
  if a.dtype == np.uint8:
    x = a.astype(np.float32) / 127.5 - 1.0
  elif np.issubdtype(a.dtype, np.floating):
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
      raise InputError(f"{name}: float frames must be finite and in [0, 1]; got values in [{a.min()}, {a.max()}]")
    x = a.astype(np.float32) * 2.0 - 1.0
  else:
    raise InputError(f"{name}: expected uint8 or float frames, got dtype {a.dtype}")
  if image:
    x = x[..., None, :, :, :]
  if x.ndim == 4:
    x = np.broadcast_to(x[None], (batch, *x.shape))
  if x.shape[1] < 1:
    raise InputError(f"{name}: the clip has no frames")
  return np.ascontiguousarray(x)


def _head(frames: np.ndarray, latents: int, temporal: int) -> np.ndarray:
  """The last 1 + temporal (latents - 1) frames (what codes into `latents` latent frames)."""
  return frames[:, frames.shape[1] - (1 + temporal * (latents - 1)):]


def _first_or_last(name: str, value, batch: int) -> np.ndarray:
  """`first=` / `last=`: an image `[H, W, 3]`, a clip `[F, H, W, 3]`, or one clip per prompt `[B, F, H, W, 3]` (a
  1-frame clip is an image) -> `[B, F, H, W, 3]`."""
  image = np.ndim(value) == 3
  return as_frames(name, value, batch=batch, image=image)


def plan_window(window_latents: int, *, image=None, video=None, extend: str | None = None, first=None, last=None,
                overlap: int | None = None, batch: int = 1, temporal: int = 4) -> WindowPlan | None:
  """The window plan of one call's frame condition; None for plain text-to-video.

  Args:
    window_latents: T, the latent frames of one window (its frames: 1 + 4(T - 1)).
    image: animate this image, `[H, W, 3]` or one per prompt `[B, H, W, 3]` (the same as `first=` the image).
    video: a clip `[F, H, W, 3]` (or `[B, F, H, W, 3]`) to extend: `extend="forward"` (default) continues it,
      `"backward"` generates what came before it.
    first, last: images or clips to connect (interpolation); `first` alone continues it, `last` alone leads up to
      it. An image as `last` is held for the window's last 4 frames.
    overlap: latent frames taken from a given clip, per side; default T // 2 for one side, 1 per side with both.
      Images always take 1.
    batch: the number of prompts.
    temporal: the VAE's temporal down-sampling (4 in the text above).

  Raises:
    InputError: conflicting arguments, or frames that do not fit the window.
  """
  if image is not None and (video is not None or first is not None or last is not None):
    raise InputError("image: give it alone (it is first= an image); not with video=, first= or last=")
  if video is not None and (first is not None or last is not None):
    raise InputError("video: extend one clip with video= and extend=, or connect two with first= and last=")
  if extend is not None and video is None:
    raise InputError(f"extend={extend!r} needs video=, the clip to extend")
  if extend is not None and extend not in EXTEND:
    raise InputError(f"extend={extend!r}: must be one of {EXTEND}")
  if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer))
                              or overlap < 1):
    raise InputError(f"overlap={overlap!r}: must be an integer >= 1 (latent frames)")
  if image is None and video is None and first is None and last is None:
    return None
  if window_latents < 2:
    raise InputError(f"a frame condition needs a window of at least 2 latent frames ({1 + temporal} frames); got "
                     f"{window_latents}")
  if image is not None:
    first = as_frames("image", image, batch=batch, image=True)
  elif first is not None:
    first = _first_or_last("first", first, batch)
  if last is not None:
    last = _first_or_last("last", last, batch)
  if video is not None:
    clip = as_frames("video", video, batch=batch, image=False)
    first, last = (clip, None) if extend in (None, "forward") else (None, clip)
  name_of_last = "video" if video is not None else "last"
  per_side = int(overlap) if overlap is not None else (1 if first is not None and last is not None
                                                       else max(1, window_latents // 2))
  head = tail = None
  if first is not None:
    head = _head(first, min(1 + (first.shape[1] - 1) // temporal, per_side), temporal)
  if last is not None:
    if last.shape[1] == 1:
      tail = np.repeat(last, temporal, axis=1)
    elif last.shape[1] < temporal:
      raise InputError(f"{name_of_last}: {last.shape[1]} frames; a clip that ends the window needs 1 (an image) or "
                       f"at least {temporal} (the VAE codes the frames after the first in groups of {temporal})")
    else:
      tail = last[:, :temporal * min(last.shape[1] // temporal, per_side)]
  frames = 1 + temporal * (window_latents - 1)
  start = 0 if head is None else head.shape[1]
  stop = frames - (0 if tail is None else tail.shape[1])
  plan = WindowPlan(head=head, tail=tail, keep=(start, stop), prefix=first, suffix=last, temporal=temporal)
  known = plan.head_latents + plan.tail_latents
  if known > window_latents - 1:
    raise InputError(f"the given frames fill {known} of the window's {window_latents} latent frames; at least one "
                     "must be left to generate: use a longer window (num_frames)"
                     + ("" if overlap is None else f" or a smaller overlap than {overlap}"))
  return plan
