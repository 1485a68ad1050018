"""protjax: pretrain, export, embed with and probe protein language models in JAX/Flax."""
from setuptools import find_packages, setup

# seqio pins nothing on TensorFlow itself; tensorflow-text drags in a matching
# tensorflow, which seqio's pipelines run on (CPU only: data never touches the
# accelerators).
INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "seqio>=0.0.20",
    "tensorflow-datasets",
    # Prepared corpora (protjax.data.prepared) are ArrayRecord files, read
    # directly; tensorflow-datasets pulls it in too, but we import it ourselves.
    "array-record>=0.8",
    "gin-config>=0.5",
    "ml-collections",
    "numpy",
    "h5py",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "scikit-learn",
]
HF = ["torch==2.13.0", "transformers>=5", "safetensors"]
TEST = ["pytest", "pytest-timeout"] + HF
# libtpu, the XLA:TPU compiler and runtime, at the version jax pins: on a TPU
# VM it runs protjax; anywhere, protjax-plan compiles for a TPU slice with it.
# Not in `test`: installed, every jax process without JAX_PLATFORMS=cpu tries
# (and fails, with error lines) to start a TPU backend on a machine with none.
TPU = ["jax[tpu]"]

setup(
    name="protjax",
    version="0.1.0",
    description="ProtTrans-style protein language models in JAX/Flax: "
    "pretraining, export, embedding and frozen-embedding probes.",
    packages=find_packages(include=["protjax", "protjax.*", "tasks", "tasks.*",
                                    "gin_configs", "gin_configs.*"]),
    package_data={"protjax": ["data/sample/*"], "gin_configs": ["*.gin"],
                  "gin_configs.models": ["*.gin"], "gin_configs.runs": ["*.gin"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"hf": HF, "test": TEST, "tpu": TPU},
    entry_points={
        "console_scripts": [
            "protjax-data=protjax.data.cli:main",
            "protjax-train=protjax.train:main",
            "protjax-plan=protjax.plan:main",
            "protjax-export=protjax.export:export_main",
            "protjax-import=protjax.export:import_main",
            "protjax-embed=protjax.embed:main",
            "protjax-probe=protjax.probes.cli:main",
        ]
    },
)
