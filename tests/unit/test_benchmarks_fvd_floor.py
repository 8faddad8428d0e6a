"""The FVD floor runs end to end on a data config (the number itself is measured in docs/results.md)."""

from conftest import experiment_config
from vidgen.benchmarks.fvd_floor import real_fvd


def test_real_clips_sit_at_a_small_fvd():
  data = experiment_config("shapes_t2v", "runlocal").data
  data.num_frames = 9  # I3D needs 9 frames
  fvd = real_fvd(data, num_clips=4, batch=4)
  assert 0.0 < fvd < float("inf")
