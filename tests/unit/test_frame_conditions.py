"""Frame conditions of the pipeline (vidgen.frame_conditions): where given frames go in a window, what the output
keeps, and bad input refused with the argument's name."""

import numpy as np
import pytest

from vidgen.errors import InputError
from vidgen.frame_conditions import as_frames, plan_window

H = W = 8


def clip(frames, value=0):
  return np.full((frames, H, W, 3), value, np.uint8)


def test_text_to_video_has_no_plan():
  assert plan_window(5) is None


def test_image_to_video():
  plan = plan_window(5, image=clip(1, 255)[0])
  assert plan.head.shape == (1, 1, H, W, 3) and plan.head_latents == 1 and plan.tail is None
  assert plan.keep == (1, 17) and plan.prefix.shape[1] == 1
  np.testing.assert_array_equal(plan.head, 1.0)


def test_forward_extension_codes_the_clips_last_frames():
  video = np.arange(13)[:, None, None, None] * np.ones((1, H, W, 3), np.uint8)
  plan = plan_window(5, video=video.astype(np.uint8))  # default overlap T // 2 = 2 latent frames = 5 frames
  assert plan.head_latents == 2 and plan.head.shape[1] == 5 and plan.keep == (5, 17)
  np.testing.assert_allclose((plan.head[0, :, 0, 0, 0] + 1) * 127.5, np.arange(8, 13), atol=1e-4)
  assert plan.prefix.shape[1] == 13  # the output is the whole clip, then the new frames
  assert plan_window(5, video=video.astype(np.uint8), overlap=3).head_latents == 3
  assert plan_window(5, video=clip(1), overlap=3).head_latents == 1  # a 1-frame clip gives one latent frame


def test_backward_extension_codes_the_clips_first_frames():
  plan = plan_window(5, video=clip(13), extend="backward")
  assert plan.head is None and plan.tail.shape[1] == 8 and plan.tail_latents == 2
  assert plan.keep == (0, 9) and plan.suffix.shape[1] == 13


def test_interpolation_of_images_and_clips():
  plan = plan_window(5, first=clip(1)[0], last=clip(1)[0])
  assert (plan.head_latents, plan.tail_latents) == (1, 1)
  assert plan.tail.shape[1] == 4  # an image as the last frame is held for the last group of 4 frames
  assert plan.keep == (1, 13) and plan.prefix.shape[1] == 1 and plan.suffix.shape[1] == 1
  plan = plan_window(5, first=clip(9), last=clip(8), overlap=2)
  assert (plan.head_latents, plan.tail_latents) == (2, 2) and plan.keep == (5, 9)


def test_per_prompt_frames_and_float_input():
  plan = plan_window(3, video=np.zeros((2, 5, H, W, 3), np.float32), batch=2)
  assert plan.head.shape[0] == 2
  np.testing.assert_array_equal(plan.head, -1.0)  # float frames are [0, 1]; the VAE reads [-1, 1]
  assert as_frames("image", np.ones((H, W, 3), np.float32), batch=3, image=True).shape == (3, 1, H, W, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=clip(1)[0], video=clip(5)), "image"),
    (dict(video=clip(5), first=clip(1)[0]), "video"),
    (dict(extend="forward"), "extend"),
    (dict(video=clip(5), extend="up"), "extend"),
    (dict(video=clip(3), extend="backward"), "at least 4"),
    (dict(first=clip(9), last=clip(8), overlap=3), "at least one"),
    (dict(video=clip(5), overlap=0), "overlap"),
    (dict(image=np.zeros((H, W, 3), np.int32)), "dtype"),
    (dict(image=np.full((H, W, 3), 2.0)), r"\[0, 1\]"),
    (dict(image=np.zeros((H, W)), ), "image"),
    (dict(video=np.zeros((3, 5, H, W, 3), np.uint8)), "3 for 1 prompts"),
])
def test_bad_input_is_refused(kwargs, match):
  with pytest.raises(InputError, match=match):
    plan_window(5, **kwargs)


def test_a_window_of_one_latent_frame_takes_no_condition():
  with pytest.raises(InputError, match="at least 2 latent frames"):
    plan_window(1, image=clip(1)[0])
