"""FID InceptionV3: features against an independent PyTorch reference of pytorch-fid's network, preprocessing against
torch's bilinear resize, and the weight file's errors.

The reference below is written from pytorch-fid 0.3.0 / torchvision's InceptionV3 with torch.nn only (no
torchvision), under pytorch-fid's state-dict names; its random weights (BatchNorm statistics included) go through a
.pth file and `load_fid_inception` exactly as the real weights would.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.errors import InputError
from vidgen.metrics.inception import FID_WEIGHTS_URL, fid_inception_from_state_dict, load_fid_inception, preprocess

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

# ----------------------------------------------------------------------------------------------------------------------
# The PyTorch reference. A block is chains of convs (name, out, kernel, stride, padding) read in sequence from the
# block's input; a list inside a chain is a split (convs reading the same tensor, all kept); then a pool branch.


class _Conv(nn.Module):

  def __init__(self, cin, cout, kernel, stride, padding):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class _Mixed(nn.Module):

  def __init__(self, in_ch, chains, pool, pool_conv=None):
    super().__init__()
    self.chains, self.pool, self.has_pool_conv = [], pool, pool_conv is not None
    for chain in chains:
      steps, ch = [], in_ch
      for step in chain:
        for name, out, kernel, stride, padding in (step if isinstance(step, list) else [step]):
          setattr(self, name, _Conv(ch, out, kernel, stride, padding))
        steps.append([n for n, *_ in step] if isinstance(step, list) else step[0])
        ch = step[1] if not isinstance(step, list) else None
      self.chains.append(steps)
    if self.has_pool_conv:
      self.branch_pool = _Conv(in_ch, pool_conv, 1, 1, 0)

  def forward(self, x):
    outs = []
    for steps in self.chains:
      y = x
      for step in steps:
        if isinstance(step, list):
          outs += [getattr(self, n)(y) for n in step]
        else:
          y = getattr(self, step)(y)
      if not isinstance(steps[-1], list):
        outs.append(y)
    if self.pool == "avg_same":  # pytorch-fid's patch: TF leaves the padding out of the average
      p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    elif self.pool == "max_same":  # pytorch-fid's patch for Mixed_7c
      p = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
      p = F.max_pool2d(x, 3, stride=2)
    outs.append(self.branch_pool(p) if self.has_pool_conv else p)
    return torch.cat(outs, 1)


def _block_a(c, pool_features):
  return _Mixed(c, [
      [("branch1x1", 64, 1, 1, 0)],
      [("branch5x5_1", 48, 1, 1, 0), ("branch5x5_2", 64, 5, 1, 2)],
      [("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1), ("branch3x3dbl_3", 96, 3, 1, 1)],
  ], "avg_same", pool_conv=pool_features)


def _block_c(c, c7):
  return _Mixed(c, [
      [("branch1x1", 192, 1, 1, 0)],
      [("branch7x7_1", c7, 1, 1, 0), ("branch7x7_2", c7, (1, 7), 1, (0, 3)), ("branch7x7_3", 192, (7, 1), 1, (3, 0))],
      [("branch7x7dbl_1", c7, 1, 1, 0), ("branch7x7dbl_2", c7, (7, 1), 1, (3, 0)),
       ("branch7x7dbl_3", c7, (1, 7), 1, (0, 3)), ("branch7x7dbl_4", c7, (7, 1), 1, (3, 0)),
       ("branch7x7dbl_5", 192, (1, 7), 1, (0, 3))],
  ], "avg_same", pool_conv=192)


def _block_e(c, pool):
  return _Mixed(c, [
      [("branch1x1", 320, 1, 1, 0)],
      [("branch3x3_1", 384, 1, 1, 0),
       [("branch3x3_2a", 384, (1, 3), 1, (0, 1)), ("branch3x3_2b", 384, (3, 1), 1, (1, 0))]],
      [("branch3x3dbl_1", 448, 1, 1, 0), ("branch3x3dbl_2", 384, 3, 1, 1),
       [("branch3x3dbl_3a", 384, (1, 3), 1, (0, 1)), ("branch3x3dbl_3b", 384, (3, 1), 1, (1, 0))]],
  ], pool, pool_conv=192)


class TorchFIDInception(nn.Module):
  """pytorch-fid's network (InceptionV3 with FIDInceptionA/C/E_1/E_2, 1008 classes) to pool3, NCHW in [-1, 1]."""

  def __init__(self):
    super().__init__()
    for name, cin, cout, k, s, p in [("Conv2d_1a_3x3", 3, 32, 3, 2, 0), ("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                                     ("Conv2d_2b_3x3", 32, 64, 3, 1, 1), ("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
                                     ("Conv2d_4a_3x3", 80, 192, 3, 1, 0)]:
      setattr(self, name, _Conv(cin, cout, k, s, p))
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _block_a(192, 32), _block_a(256, 64), _block_a(288, 64)
    self.Mixed_6a = _Mixed(288, [
        [("branch3x3", 384, 3, 2, 0)],
        [("branch3x3dbl_1", 64, 1, 1, 0), ("branch3x3dbl_2", 96, 3, 1, 1), ("branch3x3dbl_3", 96, 3, 2, 0)],
    ], "max_down")
    self.Mixed_6b, self.Mixed_6c = _block_c(768, 128), _block_c(768, 160)
    self.Mixed_6d, self.Mixed_6e = _block_c(768, 160), _block_c(768, 192)
    self.Mixed_7a = _Mixed(768, [
        [("branch3x3_1", 192, 1, 1, 0), ("branch3x3_2", 320, 3, 2, 0)],
        [("branch7x7x3_1", 192, 1, 1, 0), ("branch7x7x3_2", 192, (1, 7), 1, (0, 3)),
         ("branch7x7x3_3", 192, (7, 1), 1, (3, 0)), ("branch7x7x3_4", 192, 3, 2, 0)],
    ], "max_down")
    self.Mixed_7b, self.Mixed_7c = _block_e(1280, "avg_same"), _block_e(2048, "max_same")
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _torch_resize(images_uint8):
  """pytorch-fid's input path: x / 255, bilinear resize to 299 (align_corners=False), 2x - 1; NHWC -> NCHW."""
  x = torch.from_numpy(np.asarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
  return 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1


# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A random-weight torch reference (He-scaled convs, non-trivial BatchNorm statistics) and its .pth file."""
  torch.manual_seed(0)
  net = TorchFIDInception().eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
      elif isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
  torch.save(net.state_dict(), path)
  return net, path


@pytest.fixture(scope="module")
def model(reference):
  return load_fid_inception(reference[1])


@nnx.jit
def _features(model, images):
  return model(images)


def _check_features(ours, ref):
  ours, ref = np.asarray(ours), ref.numpy()
  assert ours.shape == ref.shape and ref.std() > 0.1  # features of a healthy scale, not all zero
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_features_match_torch_reference(reference, model):
  net, _ = reference
  # Non-square and smaller than 299, yet large enough for a 3x2 map at Mixed_7b/c (75 would leave 1x1, where their
  # pools are identities): a transposed H/W, a wrong padding or pool would show.
  x = np.random.default_rng(0).uniform(-1, 1, size=(2, 139, 115, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    ref_logits = net.fc(ref)
  features = _features(model, jnp.asarray(x))
  _check_features(features, ref)
  np.testing.assert_allclose(np.asarray(model.logits(features)), ref_logits.numpy(), rtol=1e-4, atol=1e-4)


def test_uint8_images_at_299_match_pytorch_fid_pipeline(reference, model):
  net, _ = reference
  images = np.random.default_rng(1).integers(0, 256, size=(1, 48, 64, 3), dtype=np.uint8)
  with torch.no_grad():
    ref = net(_torch_resize(images))
  _check_features(_features(model, preprocess(images)), ref)


@pytest.mark.parametrize("shape", [(2, 40, 56), (1, 400, 333), (1, 299, 299), (2, 299, 150)])
def test_preprocess_matches_torch_bilinear(shape):
  images = np.random.default_rng(2).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
  ours = preprocess(images)
  assert ours.shape == (shape[0], 299, 299, 3) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), _torch_resize(images).permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_preprocess_uint8_and_float_agree():
  images = np.random.default_rng(3).integers(0, 256, size=(2, 3, 37, 45, 3), dtype=np.uint8)  # a video: [B, T, ...]
  from_uint8 = preprocess(images)
  from_float = preprocess(jnp.asarray(images, jnp.float32) / 127.5 - 1.0)
  assert from_uint8.shape == (2, 3, 299, 299, 3)
  np.testing.assert_allclose(np.asarray(from_uint8), np.asarray(from_float), atol=1e-6)
  # Traced (no value check possible) gives the same.
  np.testing.assert_allclose(np.asarray(jax.jit(preprocess)(images)), np.asarray(from_uint8), atol=1e-6)


@pytest.mark.parametrize("images,match", [
    (np.zeros((2, 32, 32, 4), np.uint8), r"RGB images \[..., H, W, 3\]"),
    (np.zeros((32, 32, 3), np.uint8), "at least one leading"),
    (np.full((1, 32, 32, 3), 255.0, np.float32), r"must be in \[-1, 1\], got values in \[255, 255\]"),
    (np.zeros((1, 32, 32, 3), np.int32), "uint8 or float"),
])
def test_preprocess_refuses_bad_images(images, match):
  with pytest.raises(InputError, match=match):
    preprocess(images)


def test_network_refuses_bad_inputs(model):
  with pytest.raises(InputError, match="H, W >= 75"):
    model(jnp.zeros((1, 74, 299, 3)))
  with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
    model(jnp.zeros((299, 299, 3)))


def test_missing_weight_file_says_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as info:
    load_fid_inception(tmp_path / "nowhere.pth")
  assert FID_WEIGHTS_URL in str(info.value) and "nowhere.pth" in str(info.value)


def test_bad_keys_named(reference, tmp_path):
  state = reference[0].state_dict()
  del state["Mixed_6c.branch7x7dbl_4.bn.running_var"]
  state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
  path = tmp_path / "bad.pth"
  torch.save(state, path)
  with pytest.raises(ValueError, match=r"missing weights \(1\): Mixed_6c.branch7x7dbl_4.bn.running_var; "
                                       r"unexpected weights \(1\): AuxLogits.fc.weight") as info:
    load_fid_inception(path)
  assert str(path) in str(info.value)


def test_bad_shapes_named_and_counters_optional(reference):
  state = {k: v for k, v in reference[0].state_dict().items() if not k.endswith("num_batches_tracked")}
  fid_inception_from_state_dict(state)  # the counters are not needed
  state["fc.weight"] = torch.zeros(1000, 2048)
  with pytest.raises(ValueError, match=r"fc.weight: expected \(1008, 2048\), got \(1000, 2048\)"):
    fid_inception_from_state_dict(state)


def test_unreadable_file_and_missing_torch(reference, tmp_path, monkeypatch):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a pickle")
  with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
    load_fid_inception(garbage)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match="needs torch"):
    load_fid_inception(reference[1])
