"""Official DiT checkpoints as VideoDiTs: parity with diffusers' DiTTransformer2DModel and DiTPipeline (random weights).

The reference is diffusers' DiT with random weights from a tiny config (the "mu" size: depth 2, width 64, 4 heads),
its per-block timestep / label embedders set equal as in every converted DiT checkpoint. The official release format
is built from the same weights under the original names (the correspondence diffusers' conversion script uses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from vidgen import diffusion  # noqa: E402
from vidgen.errors import InputError  # noqa: E402
from vidgen.layers.embeddings import timestep_embedding  # noqa: E402
from vidgen.models import load_dit_checkpoint  # noqa: E402
from vidgen.models.dit import Conditioning, null_conditioning  # noqa: E402
from vidgen.models.dit_checkpoint import _dit_position_table  # noqa: E402

CLASSES, SIDE, C = 1000, 8, 4  # 1000: DiTPipeline hard-codes the null label 1000


@pytest.fixture(scope="module")
def reference():
  """A random diffusers DiT (learned sigma: 2C outputs), its embedders shared across blocks as in a real checkpoint."""
  torch.manual_seed(0)
  model = diffusers.DiTTransformer2DModel(
      num_attention_heads=4, attention_head_dim=16, in_channels=C, out_channels=2 * C, num_layers=2,
      sample_size=SIDE, patch_size=2, num_embeds_ada_norm=CLASSES, norm_type="ada_norm_zero")
  with torch.no_grad():
    for p in model.parameters():  # adaLN-Zero starts at zero; random values make every path count
      p.copy_(torch.randn_like(p) * 0.05)
    for block in model.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
  return model.eval()


def _official_state_dict(model) -> dict[str, torch.Tensor]:
  """The diffusers weights under the official DiT release names (as diffusers' conversion script maps them)."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  emb = "transformer_blocks.0.norm1.emb"
  out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
         "t_embedder.mlp.0.weight": sd[f"{emb}.timestep_embedder.linear_1.weight"],
         "t_embedder.mlp.0.bias": sd[f"{emb}.timestep_embedder.linear_1.bias"],
         "t_embedder.mlp.2.weight": sd[f"{emb}.timestep_embedder.linear_2.weight"],
         "t_embedder.mlp.2.bias": sd[f"{emb}.timestep_embedder.linear_2.bias"],
         "y_embedder.embedding_table.weight": sd[f"{emb}.class_embedder.embedding_table.weight"],
         "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
         "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
         "final_layer.linear.weight": sd["proj_out_2.weight"], "final_layer.linear.bias": sd["proj_out_2.bias"],
         "pos_embed": torch.from_numpy(_dit_position_table(SIDE // 2, 64))[None]}
  for i in range(2):
    b = f"transformer_blocks.{i}"
    for kind in ("weight", "bias"):
      out[f"blocks.{i}.adaLN_modulation.1.{kind}"] = sd[f"{b}.norm1.linear.{kind}"]
      out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{b}.attn1.to_{x}.{kind}"] for x in "qkv"])
      out[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{b}.attn1.to_out.0.{kind}"]
      out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[f"{b}.ff.net.0.proj.{kind}"]
      out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[f"{b}.ff.net.2.{kind}"]
  return out


def _inputs(batch=3, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, C, SIDE, SIDE)).astype(np.float32)
  steps = np.array([0, 421, 999][:batch])
  labels = np.array([3, CLASSES, 7][:batch])  # CLASSES is the null label
  return x, steps, labels


def _vidgen_forward(dit, x, steps, labels):
  z = jnp.asarray(x.transpose(0, 2, 3, 1)[:, None])  # [B, 1, H, W, C]
  out = dit(z, jnp.asarray((steps + 1) / 1000.0, jnp.float32), Conditioning(labels=jnp.asarray(labels)))
  return np.asarray(out[:, 0]).transpose(0, 3, 1, 2)


def _torch_forward(model, x, steps, labels):
  with torch.no_grad():
    return model(torch.from_numpy(x), timestep=torch.from_numpy(steps),
                 class_labels=torch.from_numpy(labels)).sample.numpy()


def test_diffusers_folder_matches_diffusers_forward(reference, tmp_path):
  reference.save_pretrained(tmp_path)
  dit = load_dit_checkpoint(str(tmp_path), dtype="float32")
  assert (dit.spec.depth, dit.spec.width, dit.spec.num_heads) == (2, 64, 4) and dit.spec.out_channels == 2 * C and dit.spec.num_classes == CLASSES
  x, steps, labels = _inputs()
  want = _torch_forward(reference, x, steps, labels)
  got = _vidgen_forward(dit, x, steps, labels)
  assert np.abs(want).max() > 0.5  # the outputs carry signal, not adaLN-Zero's zeros
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_official_release_file_loads_the_same_network(reference, tmp_path):
  path = tmp_path / "DiT-mu-2.pt"
  torch.save(_official_state_dict(reference), path)
  x, steps, labels = _inputs()
  want = _torch_forward(reference, x, steps, labels)
  # The official code spaces its timestep frequencies by half, diffusers' port by half - 1: with diffusers' spacing
  # the official file is the same network; with its own, the outputs move.
  same = load_dit_checkpoint(str(path), dtype="float32", freq_shift=1.0)
  np.testing.assert_allclose(_vidgen_forward(same, x, steps, labels), want, atol=1e-4, rtol=1e-4)
  official = load_dit_checkpoint(str(path), "mu/2", dtype="float32")
  assert official.spec.freq_shift == 0.0 and official.spec.time_offset == -1.0
  assert np.abs(_vidgen_forward(official, x, steps, labels) - want).max() > 1e-3


def test_timestep_features_are_the_dit_formula():
  k = np.array([0.0, 17.0, 999.0])
  half = 128
  for shift in (0.0, 1.0):
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - shift))
    want = np.concatenate([np.cos(k[:, None] * freqs), np.sin(k[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(np.asarray(timestep_embedding(jnp.asarray(k), 256, freq_shift=shift)), want,
                               atol=2e-4)


def test_bad_checkpoints_are_refused(reference, tmp_path):
  sd = _official_state_dict(reference)
  wrong_table = dict(sd, pos_embed=sd["pos_embed"].flip(-1))
  torch.save(wrong_table, tmp_path / "table.pt")
  with pytest.raises(InputError, match="sin-cos table"):
    load_dit_checkpoint(str(tmp_path / "table.pt"))
  torch.save({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}, tmp_path / "missing.pt")
  with pytest.raises(InputError, match="blocks.1.mlp.fc2.bias"):
    load_dit_checkpoint(str(tmp_path / "missing.pt"))
  with pytest.raises(InputError, match=r"\(depth, width, heads, patch\)"):
    load_dit_checkpoint(str(tmp_path / "missing.pt").replace("missing", "table"), "S/2")
  with pytest.raises(InputError, match="no such DiT checkpoint"):
    load_dit_checkpoint(str(tmp_path / "absent.pt"))
  unshared = diffusers.DiTTransformer2DModel(
      num_attention_heads=4, attention_head_dim=16, in_channels=C, out_channels=2 * C, num_layers=2,
      sample_size=SIDE, patch_size=2, num_embeds_ada_norm=CLASSES)
  with torch.no_grad():
    unshared.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
  unshared.save_pretrained(tmp_path / "unshared")
  with pytest.raises(InputError, match="differs from block 0"):
    load_dit_checkpoint(str(tmp_path / "unshared"))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_guided_sampling_matches_dit_pipeline(reference, tmp_path, sampler):
  """Class-conditional sampling with guidance 4 through vidgen's sampler equals diffusers' DiTPipeline (latents before
  the VAE, same initial noise)."""
  reference.save_pretrained(tmp_path)
  dit = load_dit_checkpoint(str(tmp_path), dtype="float32")
  steps, scale, labels = 10, 4.0, np.array([1, 8])
  betas = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
  if sampler == "ddim":
    scheduler = diffusers.DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    spacing = "leading"
  else:
    scheduler = diffusers.DPMSolverMultistepScheduler(**betas, timestep_spacing="trailing")
    spacing = "trailing"
  scheduler.alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
  vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=C, sample_size=SIDE)
  pipe = diffusers.DiTPipeline(transformer=reference, vae=vae, scheduler=scheduler)
  captured = {}

  def decode(latents, **_):
    captured["z"] = latents.clone() * vae.config.scaling_factor  # undo the pipeline's 1 / scaling_factor
    return type("Decoded", (), {"sample": torch.zeros(latents.shape[0], 3, SIDE, SIDE)})()

  pipe.vae.decode = decode
  pipe(class_labels=labels.tolist(), guidance_scale=scale, num_inference_steps=steps,
       generator=torch.manual_seed(5), output_type="np")
  noise = torch.randn((2, C, SIDE, SIDE), generator=torch.manual_seed(5)).numpy().transpose(0, 2, 3, 1)[:, None]

  cond = Conditioning(labels=jnp.asarray(labels))
  eps = lambda z, t, c: dit(z, t, c)[..., :C]  # noqa: E731  the learned variance is not used by DDIM / DPM-Solver
  guided = diffusion.classifier_free_guidance(eps, cond, null_conditioning(cond, CLASSES), scale=scale)
  schedule = diffusion.LinearBetaSchedule()
  z0 = diffusion.sample(guided, jnp.asarray(noise), schedule=schedule, sampler=sampler, num_steps=steps,
                        prediction="eps", timestep_spacing=spacing)
  want = captured["z"].numpy().transpose(0, 2, 3, 1)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(np.asarray(z0[:, 0]), want, atol=1e-4, rtol=1e-4)


def test_eps_sampling_refuses_zero_terminal_snr():
  schedule = diffusion.LinearBetaSchedule(zero_terminal_snr=True)
  with pytest.raises(ValueError, match="alpha = 0"):
    diffusion.sample(lambda z, t: z, jnp.zeros((1, 4)), schedule=schedule, num_steps=4, prediction="eps")
  with pytest.raises(Exception, match="zero_terminal_snr"):
    diffusion.validate_diffusion_config(dict(objective="eps", schedule="linear", zero_terminal_snr=True))


def test_pipeline_and_cli_draw_classes_from_a_dit_folder(reference, tmp_path):
  """A diffusers DiT pipeline folder (transformer/, vae/, model_index.json with class names) samples through
  VideoPipeline and `vidgen sample --checkpoint`."""
  import json
  import os
  import subprocess
  import sys

  from vidgen.pipeline import VideoPipeline

  reference.save_pretrained(tmp_path / "transformer")
  torch.manual_seed(1)
  diffusers.AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=C,
                          sample_size=2 * SIDE).save_pretrained(tmp_path / "vae")
  (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline",
                                                         "id2label": {"8": "hen", "1": "goldfish, Carassius auratus"}}))
  pipe = VideoPipeline.from_dit_checkpoint(str(tmp_path), dtype="float32")
  by_name = pipe(["hen", "Carassius auratus"], num_frames=1, steps=3, output="latent")
  by_id = pipe(["8", "1"], num_frames=1, steps=3, output="latent")
  np.testing.assert_array_equal(by_name, by_id)
  assert by_name.shape == (2, 1, SIDE, SIDE, C)  # the eps half of the learned-sigma output, sampled
  image = pipe("hen", num_frames=1, steps=3)
  assert image.dtype == np.uint8 and image.shape == (1, 2 * SIDE, 2 * SIDE, 3)
  with pytest.raises(InputError, match="not a class id"):
    pipe("zebra", num_frames=1, steps=3)

  out = tmp_path / "hen.png"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--checkpoint", str(tmp_path), "--prompt",
                         "hen", "--output", str(out), "--steps", "3"], capture_output=True, text=True, cwd=root,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-2000:]
  import imageio.v3 as iio
  assert iio.imread(out).shape == (2 * SIDE, 2 * SIDE, 3)
