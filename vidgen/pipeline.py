"""VideoPipeline: prompt -> video, over a trained DiT run (its VAE, text encoder and EMA weights).

  from vidgen.pipeline import VideoPipeline
  pipe = VideoPipeline.from_workdir("workdirs/shapes_t2v")
  video = pipe("a red circle moving left", num_frames=17, steps=50, guidance=4.0, seed=0)   # uint8 [T, H, W, 3]
  videos = pipe(["a red circle moving left", "a blue square moving up"])                    # uint8 [B, T, H, W, 3]
  edited = pipe("a red square moving left", init_video=video, strength=0.6)   # video-to-video (SDEdit)

Generation is one jitted program per (batch, size, steps, sampler, guidance interval, strength) — text encoding, the
guided sampler loop and VAE decoding — and depends only on (prompts, seed, init_video): example i starts from noise
drawn with `fold_in(key(seed), i)`. Captions are tokenized with the run's data source vocabulary and encoded by the
run's small text encoder, or, for a run on a frozen pretrained encoder (`config.text.encoder = "hf"`), encoded by that
encoder at `config.text.max_length` tokens, as its training captions were; a class-conditional run maps each prompt
to the class it names (vidgen.data.sources).

A published class-conditional DiT runs through the same pipeline: `VideoPipeline.from_dit_checkpoint(path)` (the
official `DiT-XL-2-256x256.pt` with `vae=` the Stable Diffusion VAE folder, or a diffusers DiT pipeline folder with
`transformer/` and `vae/`); prompts are then ImageNet class ids ("207") or names ("golden retriever").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen import diffusion, runs
from vidgen.diffusion import tasks
from vidgen.data import to_model_range, to_uint8
from vidgen.data.sources import get_source
from vidgen.config import require
from vidgen.errors import InputError
from vidgen.frame_conditions import WindowPlan, plan_window
from vidgen.models.dit import Conditioning, null_conditioning
from vidgen.models.text import TextEncoder, load_frozen_text_encoder, text_encoder_kind
from vidgen.models.vae import SpacetimeVAE, latent_grid
from vidgen.parallel import DEFAULT_RULES, axis_rules, make_mesh


class VideoPipeline:
  """Generates videos from prompts with a trained DiT run: `from_workdir`, or `DiTTrainer.pipeline(state)`.

  Args:
    config: the DiT run's config.
    networks: {"dit": (graphdef, params), "text": (graphdef, params) for runs with a small text encoder}.
    vae: the SpacetimeVAE the run encodes with (with its latent statistics).
    mesh: where generation runs; default: this process's devices.
    text_encoder: the run's frozen pretrained encoder (`config.text.encoder = "hf"`), if the caller has it loaded
      already (the trainer shares its own); default: loaded from `config.text.path` on first use.
    class_of: prompt -> class id for a class-conditional model; default: the run's data source names the classes.
  """

  def __init__(self, config: ml_collections.ConfigDict, networks: dict[str, tuple[nnx.GraphDef, Any]],
               vae: SpacetimeVAE, *, mesh: jax.sharding.Mesh | None = None, text_encoder: TextEncoder | None = None,
               class_of: Callable[[str], int] | None = None):
    self.config = config
    self.mesh = make_mesh({"data": -1}) if mesh is None else mesh
    self.networks = networks
    self.vae_graph, self.vae_params, self.vae_stats = nnx.split(vae, nnx.Param, ...)
    self.vae_config = vae.config
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    # A run saved before `diffusion.objective` existed has none: objective_from_config reads it as "v".
    self.objective = diffusion.objective_from_config(config.diffusion)
    self.schedule = self.objective.schedule
    self._source = None
    self._class_of = class_of
    self.text_kind = text_encoder_kind(config.text) if config.conditioning == "text" else None
    self.tokenizer = self.source.caption_tokenizer(config.text.max_length) if self.text_kind == "small" else None
    self._text_encoder = text_encoder
    self.patch = tuple(config.dit.patch_size)
    self.num_classes = int(config.dit.num_classes)
    self.self_condition = bool(config.dit.get("self_condition", False))
    # A DiT with a learned variance (DiT's 2C outputs) is sampled with its first C channels, as DDIM / DPM-Solver
    # use no variance.
    self.prediction_channels = int(config.dit.in_channels)
    self._compiled: dict = {}

  @classmethod
  def from_workdir(cls, workdir: str, *, lora: str | Sequence[tuple[str, float]] | None = None, ema: bool = True,
                   mesh: jax.sharding.Mesh | None = None) -> "VideoPipeline":
    """Loads a DiT run's weights (EMA by default) and its VAE from `workdir` (see `vidgen.runs.load_dit`).

    `lora`: LoRA fine-tunes of that run (`vidgen.train.lora_trainer`) merged into its weights: one workdir (weight 1)
    or a list of (workdir, weight) pairs; prompts may then use the words a fine-tune added. `workdir` may also be a
    LoRA run itself: its base with its adapters (and any in `lora`)."""
    adapters = _lora_list(lora)
    if os.path.exists(os.path.join(workdir, "config.json")) and runs.read_config(workdir).get("trainer") == "lora":
      adapters = [(workdir, 1.0), *adapters]
      workdir = runs.read_config(workdir).base_workdir
    run = runs.load_dit(workdir, mesh, ema=ema)
    if adapters:
      run = runs.with_lora(run, [(runs.load_lora(path, mesh, ema=ema), weight) for path, weight in adapters])
    return cls(run.config, run.networks, run.vae, mesh=mesh)

  @classmethod
  def from_dit_checkpoint(cls, path: str, *, vae: str | None = None, variant: str | None = None,
                          mesh: jax.sharding.Mesh | None = None, **overrides: Any) -> "VideoPipeline":
    """A published class-conditional DiT (`vidgen.models.load_dit_checkpoint`) with its image VAE.

    Args:
      path: a diffusers DiT pipeline folder (`transformer/`, `vae/`, model_index.json with the class names), a
        diffusers transformer folder, or the official `DiT-XL-2-256x256.pt`.
      vae: the diffusers AutoencoderKL folder the model's latents belong to (stabilityai/sd-vae-ft-ema for DiT);
        default: `path/vae`.
      overrides: VideoDiT config fields (e.g. dtype="bfloat16").
    """
    from vidgen.models.dit_checkpoint import load_dit_checkpoint
    from vidgen.models.pretrained import load_pretrained_vae

    transformer = os.path.join(path, "transformer") if os.path.isdir(os.path.join(path, "transformer")) else path
    vae_path = vae or os.path.join(path, "vae")
    if not os.path.isdir(vae_path):
      raise InputError(f"{vae_path}: no VAE folder; pass vae= the diffusers AutoencoderKL folder the DiT's latents "
                       "belong to (stabilityai/sd-vae-ft-ema)")
    dit = load_dit_checkpoint(transformer, variant, **overrides)
    image_vae = load_pretrained_vae(vae_path)
    spec, factor = dit.spec, image_vae.config["spatial_downsample"]
    if image_vae.latent_channels != spec.in_channels:
      raise InputError(f"{vae_path}: the VAE has {image_vae.latent_channels} latent channels, the DiT "
                       f"{spec.in_channels}")
    names = _class_names(os.path.join(path, "model_index.json"))
    config = ml_collections.ConfigDict(dict(
        conditioning="class", dit=dit_config_dict(dit), sharding_rules=DEFAULT_RULES,
        diffusion=dict(objective="eps", schedule="linear"),
        data=dict(num_frames=1, height=spec.input_size[1] * factor, width=spec.input_size[2] * factor),
        sampling=dict(steps=50, guidance=4.0, sampler="ddim", guidance_interval=(0.0, 1.0))))
    networks = {"dit": nnx.split(dit, nnx.Param)}
    return cls(config, networks, image_vae, mesh=mesh,
               class_of=lambda prompt: _class_id(prompt, names, spec.num_classes))

  def sampling_defaults(self) -> dict[str, Any]:
    """The run's `config.sampling` settings and clip length, as keyword arguments of `__call__`."""
    s = self.config.sampling
    return dict(num_frames=self.config.data.num_frames, steps=s.steps, guidance=s.guidance, sampler=s.sampler,
                guidance_interval=tuple(s.get("guidance_interval", (0.0, 1.0))))

  # -- inputs ------------------------------------------------------------------------------------------------------

  @property
  def source(self):
    """The run's data source (tokenizer vocabulary, class names, evaluation), opened on first use."""
    if self._source is None:
      self._source = get_source(self.config.data)
    return self._source

  @property
  def text_encoder(self) -> TextEncoder:
    """The run's frozen pretrained text encoder (encoder "hf"), loaded once."""
    if self._text_encoder is None:
      self._text_encoder = load_frozen_text_encoder(self.config.text)
    require(self._text_encoder.width == self.config.dit.text_dim, "dit.text_dim",
            f"{self.config.dit.text_dim} does not match the text encoder's width {self._text_encoder.width} "
            f"({self._text_encoder.directory})")
    return self._text_encoder

  def _condition_inputs(self, prompts: list[str]) -> dict[str, np.ndarray]:
    """Prompts -> the host arrays the conditioning is built from: token ids or caption tokens (+ mask), or class ids."""
    kind = self.config.conditioning
    if self.text_kind == "hf":
      hidden, mask = self.text_encoder.encode(prompts, self.config.text.max_length)
      # Rounded as the latent cache stores training captions (float16), so sampling conditions on what training saw.
      return {"text": np.asarray(hidden, np.float16).astype(np.float32), "mask": np.asarray(mask)}
    if kind == "text":
      ids, mask = self.tokenizer(prompts)
      return {"ids": ids, "mask": mask}
    if kind == "class":
      class_of = self._class_of or self.source.class_of
      return {"labels": np.asarray([class_of(p) for p in prompts], np.int32)}
    return {}

  def _check_size(self, num_frames: int, height: int, width: int) -> None:
    ft, fs = self.vae_config["temporal_downsample"], self.vae_config["spatial_downsample"]
    max_frames, max_height, max_width = self.max_size
    if (not isinstance(num_frames, (int, np.integer)) or num_frames < 1 or (num_frames - 1) % ft
        or (max_frames and num_frames > max_frames)):
      raise InputError(f"num_frames={num_frames!r}: must be 1 + {ft}k (1, {1 + ft}, {1 + 2 * ft}, 17, ...)"
                       + (f", at most {max_frames}" if max_frames else ""))
    for name, value, p, most in (("height", height, self.patch[1], max_height), ("width", width, self.patch[2],
                                                                                max_width)):
      if not isinstance(value, (int, np.integer)) or value < 1 or value % (fs * p) or (most and value > most):
        raise InputError(f"{name}={value!r}: must be a positive multiple of VAE factor x patch = {fs} x {p} = "
                         f"{fs * p}" + (f", at most {most}" if most else ""))

  @property
  def max_size(self) -> tuple[int, int, int]:
    """The largest (frames, height, width) this run samples (`config.sampling.max_size`; 0 = no limit)."""
    return tuple(int(v) for v in self.config.sampling.get("max_size", (0, 0, 0)))

  def _resolve_size(self, height: int | None, width: int | None, aspect_ratio: float | None) -> tuple[int, int]:
    """(height, width): the training size by default; with `aspect_ratio` (width / height) and a side left out, the
    other side follows from it, and with both left out the area stays about the training one; sides are rounded to
    the allowed multiple."""
    if aspect_ratio is None:
      return (self.config.data.height if height is None else height,
              self.config.data.width if width is None else width)
    if isinstance(aspect_ratio, bool) or not isinstance(aspect_ratio, (int, float)) or not aspect_ratio > 0:
      raise InputError(f"aspect_ratio={aspect_ratio!r}: must be a positive number (width / height)")
    if height is not None and width is not None:
      raise InputError("aspect_ratio: give it with at most one of height and width")
    step = self.vae_config["spatial_downsample"] * self.patch[1], self.vae_config["spatial_downsample"] * self.patch[2]
    if height is None and width is None:
      area = self.config.data.height * self.config.data.width
      height = max(step[0], round(np.sqrt(area / aspect_ratio) / step[0]) * step[0])
    if height is None:
      height = max(step[0], round(width / aspect_ratio / step[0]) * step[0])
    else:
      width = max(step[1], round(height * aspect_ratio / step[1]) * step[1])
    return int(height), int(width)

  # -- generation --------------------------------------------------------------------------------------------------

  def _generate_fn(self, steps: int, sampler: str, guided: bool, interval: tuple[float, float], strength: float,
                   progress: bool, decode: bool):
    key = (steps, sampler, guided, interval, strength, progress, decode)
    if key in self._compiled:
      return self._compiled[key]

    def generate(params, vae_params, vae_stats, inputs, noise, init_video, guidance, sample_key, known=None,
                 known_mask=None, task=None):
      with axis_rules(self.mesh, self.rules):
        dit = nnx.merge(self.networks["dit"][0], params["dit"])
        vae = nnx.merge(self.vae_graph, vae_params, vae_stats)
        if init_video is not None:  # SDEdit: start from the clip's latents, noised to t = strength.
          alpha, sigma = self.schedule.alpha_sigma(jnp.float32(strength))
          noise = alpha * vae.normalize(vae.encode(init_video).mode()) + sigma * noise
        if "ids" in inputs:
          text = nnx.merge(self.networks["text"][0], params["text"])(inputs["ids"], inputs["mask"])
          cond = Conditioning(text=text, text_mask=inputs["mask"])
        elif "text" in inputs:  # A frozen encoder's caption tokens, computed outside this program.
          cond = Conditioning(text=inputs["text"], text_mask=inputs["mask"])
        elif "labels" in inputs:
          cond = Conditioning(labels=inputs["labels"])
        else:
          cond = Conditioning()
        model = lambda z, t, c: dit(z, t, c)[..., :self.prediction_channels]
        if known is not None:  # frame condition: known latents in the task channels and clean in the input
          cond = cond.replace(task=tasks.task_inputs(known, known_mask))
        elif task is not None:  # a condition on every frame (a cascade stage's low-resolution clip)
          cond = cond.replace(task=task)
        counter = _Progress(steps) if progress else None

        def denoise(z, t, x_prev=None):
          c = cond if x_prev is None else cond.replace(self_cond=x_prev)  # self-conditioning: the last estimate
          if known is not None:
            z = tasks.fill_known(z, known, known_mask)
          if progress:
            jax.debug.callback(counter.tick, t[0], ordered=True)
          if guided:
            return diffusion.classifier_free_guidance(model, c, null_conditioning(c, self.num_classes),
                                                      scale=guidance, interval=interval)(z, t)
          return model(z, t, c)

        z0 = diffusion.sample(denoise, noise, schedule=self.schedule, sampler=sampler, num_steps=steps,
                              prediction=self.objective.prediction, key=sample_key,
                              self_condition=self.self_condition, t_start=strength)
        if known is not None:
          z0 = tasks.fill_known(z0, known, known_mask)
        z0 = vae.denormalize(z0)
        return jnp.clip(vae.decode(z0), -1.0, 1.0) if decode else z0

    fn = jax.jit(generate)
    self._compiled[key] = fn
    return fn

  def __call__(self, prompt: str | Sequence[str], num_frames: int | Sequence[int] = 17,
               height: int | Sequence[int | None] | None = None, width: int | Sequence[int | None] | None = None,
               steps: int = 50, guidance: float = 4.0, seed: int = 0,
               sampler: str = "ddim", guidance_interval: Sequence[float] = (0.0, 1.0),
               init_video: np.ndarray | None = None, strength: float = 1.0, progress: bool = False,
               output: str = "video", aspect_ratio: float | Sequence[float | None] | None = None,
               image: np.ndarray | None = None, video: np.ndarray | None = None, extend: str | None = None,
               first: np.ndarray | None = None, last: np.ndarray | None = None, loop: bool = False,
               overlap: int | None = None, window: int | None = None) -> np.ndarray | list[np.ndarray]:
    """Generates one video per prompt.

    Args:
      prompt: a caption, or a list of captions (batched).
      num_frames: 1 + 4k frames (1 gives an image), at most `config.sampling.max_size[0]` where set.
      height, width: pixels, multiples of VAE factor x patch (at most `config.sampling.max_size`); default the
        training size.
      aspect_ratio: width / height; with one side given it sets the other, with neither the area stays about the
        training size's (sides rounded to the allowed multiple).
      num_frames, height, width and aspect_ratio take one value per prompt as well: prompts of different sizes are
        generated in one call (batched by size), each with the noise it gets at its index in any call.
      steps: sampler steps; guidance: classifier-free guidance scale (1 = conditional only, 0 = unconditional);
      seed: noise seed; sampler: one of `diffusion.SAMPLERS` ("ddim", "ddpm", "dpmpp_2m", "euler"), for a v or a
        flow run alike (the run's `diffusion.objective` says what the model predicts).
      guidance_interval: (t_lo, t_hi): guide only at noise levels t in that range, conditional-only (w = 1) elsewhere
        (see `vidgen.diffusion.guidance`); the default guides at every step.
      init_video: uint8 [T, H, W, 3] (one prompt) or [B, T, H, W, 3]: video-to-video (SDEdit). The clip is encoded,
        noised to t = strength and denoised under the prompt; its size sets num_frames, height and width.
      strength: in (0, 1], with init_video: how much of the sampling path is redone (1 keeps nothing of the clip).
        The sampler takes `steps` steps over [0, strength].
      progress: print a progress line over sampling steps (to stderr).
      output: "video" (decoded frames) or "latent" (the sampled latents, before VAE decoding).
      image, video, extend, first, last, loop, overlap, window: frame conditions, for a run trained with frame tasks
        (`config.tasks`; see `vidgen.frame_conditions` for shapes and where each frame goes). Frames are uint8 or
        float in [0, 1] and set the size; the output holds every given frame as given, with the generated ones
        around it.
        image: animate an image (it is the first frame).
        video, extend: continue a clip ("forward", the default) or generate what came before it ("backward").
        first, last: connect two clips or images (interpolation).
        loop: the video's end leads back into its start (a second window bridges them), for seamless repeats.
        window: frames generated at once (default: the run's training clip length). With num_frames > window the
          video is generated window by window, each extending the last by `overlap` latent frames (default
          T // 2 of a T-latent-frame window), in memory that does not grow with num_frames.
        overlap: latent frames taken from a given clip per side.

    Returns:
      uint8 [T, H, W, 3] for one prompt, [B, T, H, W, 3] for a list of one size, a list of [T, H, W, 3] for a list
      of several sizes; with output="latent", float32 [T', H', W', C] latents in the VAE's (un-normalized) scale
      likewise, ready for `vae.decode`.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
      raise InputError("prompt: got an empty list; give a caption or a list of captions")
    for p in prompts:
      if not isinstance(p, str) or not p.strip():
        raise InputError(f"prompt {p!r}: must be a non-empty string")
    if init_video is not None:
      init_video = np.asarray(init_video)
      if init_video.dtype != np.uint8 or init_video.shape[-1:] != (3,) or init_video.ndim != (4 if single else 5):
        raise InputError(f"init_video: expected uint8 {'[T, H, W, 3]' if single else '[B, T, H, W, 3]'}, got "
                         f"{init_video.dtype} {init_video.shape}")
      if not single and init_video.shape[0] != len(prompts):
        raise InputError(f"init_video: got {init_video.shape[0]} clips for {len(prompts)} prompts")
      num_frames, height, width = init_video.shape[-4:-1]
      init_video = to_model_range(init_video.reshape((len(prompts),) + init_video.shape[-4:]))
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
      raise InputError(f"strength={strength!r}: must be a number in (0, 1]")
    if strength != 1.0 and init_video is None:
      raise InputError(f"strength={strength!r} needs init_video, the clip to start from")
    interval = self.check_sampling(sampler, steps, guidance, guidance_interval, output)
    frames_given = any(v is not None for v in (image, video, first, last)) or extend is not None or loop
    if window is not None or frames_given or overlap is not None:
      self._check_frame_tasks()
    window = self.config.data.num_frames if window is None and self.frame_tasks else window
    long_video = (init_video is None and window is not None and isinstance(num_frames, (int, np.integer))
                  and num_frames > window)
    if frames_given or long_video:
      if init_video is not None or output != "video":
        raise InputError("frame conditions and long videos: give no init_video and keep output='video'")
      return self._with_frames(prompts, single, num_frames=num_frames, height=height, width=width,
                               aspect_ratio=aspect_ratio, window=window, overlap=overlap, loop=bool(loop),
                               conditions=dict(image=image, video=video, extend=extend, first=first, last=last),
                               steps=int(steps), sampler=sampler, guidance=guidance, interval=interval, seed=seed,
                               progress=progress)
    sizes = self._sizes(len(prompts), num_frames, height, width, aspect_ratio)
    if init_video is not None and len(set(sizes)) > 1:
      raise InputError("init_video: every prompt takes its clip's size; give no per-prompt sizes")
    inputs = self._condition_inputs(prompts)
    base = jax.random.key(seed)
    sample_key = jax.random.fold_in(base, -1 & 0x7FFFFFFF)
    guided = self.config.conditioning != "none" and guidance != 1.0
    fn = self._generate_fn(int(steps), sampler, guided, interval, float(strength), progress, output == "video")
    params = {name: p for name, (_, p) in self.networks.items()}
    outputs: list[np.ndarray] = [None] * len(prompts)  # type: ignore[list-item]
    for size in dict.fromkeys(sizes):  # one batch per size, in order of first appearance
      index = [i for i, s in enumerate(sizes) if s == size]
      shape = (*latent_grid(self.vae_config, *size), self.vae_config["latent_channels"])
      noise = jnp.stack([jax.random.normal(jax.random.fold_in(base, i), shape) for i in index])
      group = jax.tree.map(lambda a: a[np.asarray(index)], inputs)
      video = fn(params, self.vae_params, self.vae_stats, group, noise, init_video, jnp.float32(guidance), sample_key)
      if progress:
        print(file=sys.stderr)
      video = to_uint8(np.asarray(video)) if output == "video" else np.asarray(video, np.float32)
      for i, v in zip(index, video):
        outputs[i] = v
    if single:
      return outputs[0]
    return np.stack(outputs) if len(set(sizes)) == 1 else outputs

  def check_sampling(self, sampler: str, steps: int, guidance: float, guidance_interval: Sequence[float],
                     output: str) -> tuple[float, float]:
    """Checks the sampling arguments of a call (InputError naming the argument); returns the guidance interval."""
    if sampler not in diffusion.SAMPLERS:
      raise InputError(f"sampler={sampler!r}: allowed {diffusion.SAMPLERS}")
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.schedule.num_train_steps:
      raise InputError(f"steps={steps!r}: must be an integer in [1, {self.schedule.num_train_steps}]")
    if guidance < 0:
      raise InputError(f"guidance={guidance!r}: must be >= 0")
    try:
      interval = diffusion.check_interval(guidance_interval, "guidance_interval")
    except ValueError as e:
      raise InputError(str(e)) from None
    if output not in ("video", "latent"):
      raise InputError(f"output={output!r}: must be 'video' or 'latent'")
    return interval

  # -- frame conditions and long videos -----------------------------------------------------------------------------

  @property
  def frame_tasks(self) -> bool:
    """Whether the run was trained with frame tasks (`config.tasks`), so it takes frame conditions."""
    return tasks.uses_frame_tasks(self.config.get("tasks"))

  def _check_frame_tasks(self) -> None:
    if not self.frame_tasks:
      raise InputError("image=, video=, first=, last=, loop, overlap and window need a run trained with frame tasks "
                       "(config.tasks with image_to_video, extend_* or interpolate); this run trained text-to-video "
                       "only")

  def _encode_fn(self):
    """Frames `[B, F, H, W, 3]` in [-1, 1] -> normalized latents `[B, F', H', W', C]` (the posterior mean)."""
    if "encode" not in self._compiled:
      def encode(vae_params, vae_stats, frames):
        with axis_rules(self.mesh, self.rules):
          vae = nnx.merge(self.vae_graph, vae_params, vae_stats)
          return vae.normalize(vae.encode(frames).mode())
      self._compiled["encode"] = jax.jit(encode)
    return self._compiled["encode"]

  def _known_latents(self, plan: WindowPlan, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The window's known latents `[B, T, H', W', C]` and mask `[B, T]` from a plan's head and tail frames."""
    encode = self._encode_fn()
    known, mask = np.zeros(shape, np.float32), np.zeros(shape[:2], bool)
    if plan.head is not None:
      known[:, :plan.head_latents] = np.asarray(encode(self.vae_params, self.vae_stats, plan.head))
      mask[:, :plan.head_latents] = True
    if plan.tail is not None:
      # Coded after a copy of its first frame, so that its groups of 4 line up with the window's (module
      # vidgen.frame_conditions); the copy's own latent frame is dropped.
      coded = encode(self.vae_params, self.vae_stats, np.concatenate([plan.tail[:, :1], plan.tail], axis=1))
      known[:, shape[1] - plan.tail_latents:] = np.asarray(coded)[:, 1:]
      mask[:, shape[1] - plan.tail_latents:] = True
    return known, mask

  def _window(self, generate, inputs: dict, plan: WindowPlan | None, size: tuple[int, int, int], seeds: list,
              guidance: float, sample_key) -> np.ndarray:
    """One window of the given plan (None: text-to-video) -> the output frames it contributes, uint8
    `[B, F, H, W, 3]`: the plan's given frames and the generated ones between them."""
    shape = (*latent_grid(self.vae_config, *size), self.vae_config["latent_channels"])
    noise = jnp.stack([jax.random.normal(k, shape) for k in seeds])
    params = {name: p for name, (_, p) in self.networks.items()}
    known = mask = None
    if plan is not None:
      known, mask = self._known_latents(plan, noise.shape)
    video = to_uint8(np.asarray(generate(params, self.vae_params, self.vae_stats, inputs, noise, None,
                                         jnp.float32(guidance), sample_key, known, mask)))
    if plan is None:
      return video
    parts = ([to_uint8(plan.prefix)] if plan.prefix is not None else []) + [video[:, plan.keep[0]:plan.keep[1]]] \
        + ([to_uint8(plan.suffix)] if plan.suffix is not None else [])
    return np.concatenate(parts, axis=1)

  def _with_frames(self, prompts: list[str], single: bool, *, num_frames, height, width, aspect_ratio, window,
                   overlap, loop: bool, conditions: dict, steps: int, sampler: str, guidance: float,
                   interval: tuple[float, float], seed: int, progress: bool) -> np.ndarray:
    """Frame-conditioned generation, loops and long videos (see `__call__`): uint8 `[T, H, W, 3]` or
    `[B, T, H, W, 3]`."""
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                        ("aspect_ratio", aspect_ratio)):
      if isinstance(value, (list, tuple, np.ndarray)):
        raise InputError(f"{name}: frame conditions and long videos take one size for every prompt")
    given = [v for k, v in conditions.items() if k != "extend" and v is not None]
    if given:  # the frames set the size
      sides = {tuple(np.shape(v)[-3:-1]) for v in given}
      if len(sides) > 1:
        raise InputError(f"the given frames have different sizes {sorted(sides)}; give frames of one size")
      height, width = sides.pop()
      if aspect_ratio is not None:
        raise InputError("aspect_ratio: the given frames set the size")
    else:
      height, width = self._resolve_size(height, width, aspect_ratio)
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
      raise InputError(f"num_frames={num_frames!r}: must be a positive integer")
    long_video = num_frames > window
    frames = window if long_video else num_frames
    self._check_size(frames, height, width)
    size = (int(frames), int(height), int(width))
    latents = latent_grid(self.vae_config, *size)[0]
    ft = self.vae_config["temporal_downsample"]
    plan = plan_window(latents, **conditions, overlap=None if long_video else overlap, batch=len(prompts),
                       temporal=ft)
    if loop and (conditions["video"] is not None or conditions["last"] is not None):
      raise InputError("loop: it starts from text, image= or first=; not with video= or last=")
    if long_video and (loop or plan is not None and plan.suffix is not None):
      raise InputError("a long video (num_frames > window) extends forwards: no loop, last= or backward extension")
    inputs = self._condition_inputs(prompts)
    base = jax.random.key(seed)
    sample_key = jax.random.fold_in(base, -1 & 0x7FFFFFFF)
    guided = self.config.conditioning != "none" and guidance != 1.0
    generate = self._generate_fn(steps, sampler, guided, interval, 1.0, progress, True)
    # Example i's first window draws the noise a plain call would (fold_in(key(seed), i)); later windows their own.
    seeds = lambda j: [jax.random.fold_in(base, i) if j == 0 else jax.random.fold_in(jax.random.fold_in(base, i), j)
                       for i in range(len(prompts))]  # noqa: E731
    window_fn = lambda p, j: self._window(generate, inputs, p, size, seeds(j), guidance, sample_key)  # noqa: E731
    video = window_fn(plan, 0)
    if loop:  # a second window from the video's end back to its start
      bridge = plan_window(latents, first=video, last=video[:, :ft], overlap=overlap, batch=len(prompts), temporal=ft)
      joined = window_fn(bridge, 1)
      video = np.concatenate([video, joined[:, video.shape[1]:joined.shape[1] - ft]], axis=1)
    count = 1
    while long_video and video.shape[1] < num_frames:
      k = overlap or max(1, latents // 2)
      step = plan_window(latents, video=video[:, -(1 + ft * (k - 1)):], overlap=k, batch=len(prompts), temporal=ft)
      video = np.concatenate([video, window_fn(step, count)[:, step.prefix.shape[1]:]], axis=1)
      count += 1
    if long_video:
      video = video[:, :num_frames]
    if progress:
      print(file=sys.stderr)
    return video[0] if single else video

  def _sizes(self, count: int, num_frames, height, width, aspect_ratio) -> list[tuple[int, int, int]]:
    """(frames, height, width) of each of `count` prompts, checked; each argument one value or one per prompt."""
    def per_prompt(name, value):
      if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != count:
          raise InputError(f"{name}: got {len(value)} values for {count} prompts")
        return list(value)
      return [value] * count

    sizes = []
    for frames, h, w, aspect in zip(*(per_prompt(n, v) for n, v in (("num_frames", num_frames), ("height", height),
                                                                    ("width", width),
                                                                    ("aspect_ratio", aspect_ratio)))):
      h, w = self._resolve_size(h, w, aspect)
      self._check_size(frames, h, w)
      sizes.append((int(frames), int(h), int(w)))
    return sizes


def dit_config_dict(dit) -> dict[str, Any]:
  """A VideoDiT's config fields as a dict (what `config.dit` holds)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(dit.spec).items()}


def _class_names(model_index: str) -> dict[str, int]:
  """{lower-case name: class id} from a diffusers DiT pipeline's model_index.json ("id2label", comma-separated
  synonyms per class), or {} without one."""
  if not os.path.exists(model_index):
    return {}
  with open(model_index) as f:
    id2label = json.load(f).get("id2label") or {}
  return {name.strip().lower(): int(i) for i, names in id2label.items() for name in names.split(",")}


def _class_id(prompt: str, names: dict[str, int], num_classes: int) -> int:
  text = prompt.strip().lower()
  if text.isdigit() and int(text) < num_classes:
    return int(text)
  if text in names:
    return names[text]
  raise InputError(f"prompt {prompt!r}: not a class id in [0, {num_classes})"
                   + (" nor a class name of the checkpoint's model_index.json" if names else
                      " (the checkpoint has no class names: give ids)"))


class _Progress:
  """Prints `sampling: step i/n` as the jitted sampler calls back once per denoiser evaluation."""

  def __init__(self, total: int):
    self.total, self.done = total, 0

  def tick(self, t) -> None:
    self.done = self.done % self.total + 1
    print(f"\rsampling: step {self.done}/{self.total} (t={float(t):.3f})", end="", file=sys.stderr, flush=True)


def _lora_list(lora) -> list[tuple[str, float]]:
  """`from_workdir`'s `lora` argument as [(workdir, weight)]: None, one workdir, or (workdir, weight) pairs."""
  if lora is None:
    return []
  if isinstance(lora, (str, os.PathLike)):
    return [(os.fspath(lora), 1.0)]
  pairs = []
  for item in lora:
    if (not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], (str, os.PathLike))
        or isinstance(item[1], bool) or not isinstance(item[1], (int, float))):
      raise InputError(f"lora: expected a workdir or a list of (workdir, weight) pairs, got {item!r} in {lora!r}")
    pairs.append((os.fspath(item[0]), float(item[1])))
  return pairs
