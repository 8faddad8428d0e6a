"""The frame-task measurements (vidgen.benchmarks.frame_tasks) on ground truth: true clips pass, broken ones do not."""

import numpy as np

from vidgen.benchmarks.frame_tasks import _continuation, _frame_reads, _right, _seams
from vidgen.data.shapes import ShapesDataset


def clips(n=6):
  data = ShapesDataset(split="validation", num_frames=17, height=64, width=64, min_radius=0.14, max_radius=0.25)
  items = [data[i] for i in range(n)]
  return np.stack([c.video for c in items]), [c.caption for c in items]


def test_true_clips_continue_and_cuts_do_not():
  true, prompts = clips()
  ok = _continuation(true, 9)
  assert abs(ok["speed_ratio"]["median"] - 1) < 0.02 and ok["first_frame_miss_px"]["p90"] < 0.1
  assert all(_right(true, prompts))
  # A continuation that jumps back to the start and stops: the miss and the speed ratio say so.
  cut = np.concatenate([true[:, :9], np.repeat(true[:, :1], 8, axis=1)], axis=1)
  bad = _continuation(cut, 9)
  assert bad["first_frame_miss_px"]["median"] > 5 and bad["speed_ratio"]["median"] < 0.2
  # The same cut is a seam: its step is many inside steps.
  seams = _seams(cut, [8])
  assert seams["seam_step"]["median"] > 5 * _seams(true, [8])["seam_step"]["median"]


def test_frames_read_one_at_a_time():
  true, prompts = clips(4)
  reads = _frame_reads(true, prompts, list(range(17)))
  assert reads["color"]["mean"] == 1.0 and reads["shape"]["mean"] > 0.9
  blank = true.copy()
  blank[:, 8:] = 0  # no shape at all in the second half: those frames read as nothing
  half = _frame_reads(blank, prompts, list(range(17)))
  assert half["color"]["mean"] < 9 / 17 + 1e-6
  swapped = _frame_reads(true, prompts[1:] + prompts[:1], list(range(17)))  # the wrong captions
  assert swapped["color"]["mean"] < 1.0
