"""Frame tasks (vidgen.diffusion.tasks): the known-frame masks of each task, the task channels, the loss on
generated frames only, and a denoiser that always sees the known frames clean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen import diffusion
from vidgen.diffusion import tasks


def only(task):
  return {name: float(name == task) for name in tasks.TASKS}


def masks(task, frames=5, n=512, seed=0):
  return np.asarray(tasks.draw_known(jax.random.key(seed), n, frames, only(task)))


def test_each_task_knows_the_right_frames():
  assert not masks("text_to_video").any()
  i2v = masks("image_to_video")
  assert i2v[:, 0].all() and not i2v[:, 1:].any()
  forward, backward = masks("extend_forward"), masks("extend_backward")
  for m, counts in ((forward, forward.sum(1)), (backward, backward.sum(1))):
    assert set(counts.tolist()) == {1, 2, 3, 4}  # k uniform in [1, T - 1]: every value occurs, never all frames
  # Forward: a prefix (known frames are contiguous from frame 0); backward: a suffix.
  assert all(row[:k].all() and not row[k:].any() for row, k in zip(forward, forward.sum(1)))
  assert all(row[5 - k:].all() and not row[:5 - k].any() for row, k in zip(backward, backward.sum(1)))
  interp = masks("interpolate")
  assert interp[:, 0].all() and interp[:, -1].all() and (interp.sum(1) <= 4).all()
  # The first a and the last b frames, the gap between them unknown.
  for row in interp:
    a = int(np.argmin(row))
    b = int(np.argmin(row[::-1]))
    assert not row[a:5 - b].any() and a >= 1 and b >= 1
  assert {(int(np.argmin(r)), int(np.argmin(r[::-1]))) for r in interp} == {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2),
                                                                             (3, 1)}


def test_images_and_short_clips_train_text_to_video():
  uniform = tasks.task_probabilities({name: 1.0 for name in tasks.TASKS})
  assert not np.asarray(tasks.draw_known(jax.random.key(0), 64, 1, uniform)).any()
  two = np.asarray(tasks.draw_known(jax.random.key(0), 64, 2, only("interpolate")))
  assert not two.any()


def test_task_frequencies_follow_the_weights():
  p = tasks.task_probabilities(dict(text_to_video=2.0, image_to_video=1.0, extend_forward=1.0))
  assert p["text_to_video"] == 0.5 and p["interpolate"] == 0.0
  m = np.asarray(tasks.draw_known(jax.random.key(1), 4000, 5, p))
  none = (~m.any(1)).mean()
  assert abs(none - 0.5) < 0.03  # binomial sd 0.008


@pytest.mark.parametrize("bad", [dict(text_to_video=-1.0), dict(zoom=1.0), dict(text_to_video=0.0),
                                 dict(text_to_video="1")])
def test_bad_task_weights_are_refused(bad):
  with pytest.raises(ValueError, match="tasks"):
    tasks.task_probabilities(bad)


def test_task_inputs_hold_the_known_latents_and_the_mask():
  x = jax.random.normal(jax.random.key(0), (2, 3, 2, 2, 4))
  known = jnp.asarray([[True, False, False], [False, False, True]])
  inputs = np.asarray(tasks.task_inputs(x, known))
  assert inputs.shape == (2, 3, 2, 2, tasks.task_channels(4))
  np.testing.assert_array_equal(inputs[0, 0, ..., :4], np.asarray(x)[0, 0])
  np.testing.assert_array_equal(inputs[1, 2, ..., :4], np.asarray(x)[1, 2])
  assert not inputs[0, 1:, ..., :4].any() and not inputs[1, :2, ..., :4].any()
  np.testing.assert_array_equal(inputs[..., 4], np.broadcast_to(np.asarray(known)[:, :, None, None], (2, 3, 2, 2)))


def test_loss_counts_only_generated_frames():
  """Changing the prediction on the given frames leaves the loss unchanged; on a generated frame it does not."""
  schedule = diffusion.CosineSchedule()
  x = jax.random.normal(jax.random.key(0), (2, 3, 2, 2, 4))
  known = jnp.asarray([[True, False, False], [True, True, False]])
  offset = jnp.zeros_like(x)

  def loss(offset):
    model = lambda z, t: jnp.zeros_like(z) + offset  # noqa: E731
    return diffusion.denoising_loss(model, x, jax.random.key(1), schedule, mask=tasks.loss_mask(known),
                                    t=jnp.full((2,), 0.5))

  base = loss(offset)
  np.testing.assert_allclose(loss(offset.at[0, 0].set(5.0).at[1, :2].set(-3.0)), base, rtol=1e-6)
  assert not np.allclose(loss(offset.at[0, 1].set(5.0)), base)


def test_denoiser_sees_known_frames_clean():
  x = jax.random.normal(jax.random.key(0), (1, 3, 2, 2, 4))
  known = jnp.asarray([[False, True, False]])
  seen = []
  denoise = tasks.frame_conditioned(lambda z, t: seen.append(z) or z, x, known)
  z_t = jax.random.normal(jax.random.key(1), x.shape)
  out = denoise(z_t, jnp.zeros(1))
  np.testing.assert_array_equal(np.asarray(out)[:, 1], np.asarray(x)[:, 1])
  np.testing.assert_array_equal(np.asarray(out)[:, ::2], np.asarray(z_t)[:, ::2])
  np.testing.assert_array_equal(np.asarray(tasks.fill_known(z_t, x, known)), np.asarray(out))
