"""Installs oneshot_tf: few-shot generative models of Omniglot in TF2/Keras 3/TFP."""

import setuptools

setuptools.setup(
    name="oneshot_tf",
    version="0.1.0",
    description="Few-shot generative modelling (VAE, IWAE, Neural Statistician, GMN, "
    "sequential generative model) in TensorFlow 2, Keras 3 and TF Probability.",
    # configs/ is code too, installed inside our namespace as oneshot_tf.configs
    # (`--model=NAME` loads oneshot_tf.configs.NAME) rather than as a top-level
    # `configs` that could clash with a user's own package.
    packages=setuptools.find_packages(include=["oneshot_tf", "oneshot_tf.*"]) + ["oneshot_tf.configs"],
    package_dir={"oneshot_tf.configs": "configs"},
    package_data={"oneshot_tf": ["web/*.html", "web/*.js", "web/*.css"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",  # tensorflow-probability 0.25 will not import without it.
        "keras==3.15.1",
        "tensorflow-probability==0.25.0",
        "tensorflow-datasets==4.9.10",
        "importlib_resources",  # tensorflow-datasets needs it on Python 3.11.
        "tensorboard==2.21.0",  # tf.summary needs it; tensorflow 2.21 no longer pulls it in.
        "absl-py==2.5.1",
        "ml-collections==1.1.0",
        "numpy",
        "matplotlib",  # per_shot.png and learning curves.
    ],
    # The browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright.
    extras_require={"test": ["pytest", "pytest-xdist", "ruff", "playwright", "hypothesis"]},
    entry_points={"console_scripts": ["oneshot-tf=oneshot_tf.main:run"]},
)
