"""tf1compat-recorder: the recorder and the run-directory contract without TensorFlow, absl
or the rest of tf1compat, for a team's own loop in its own environment (Python 3.7 and up,
numpy): a TensorFlow 1.15 Session loop included.

    pip install path/to/checkout/recorder

It installs the checkout's tf1compat/runs/ (the run-directory contract) and the package's
__init__.py, the same files the full distribution holds, so the two never disagree on the
contract: install one or the other in an environment, not both. README: "Check your own
migration"; docs/legacy-stack.md.
"""

import os
import re

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join(os.path.dirname(HERE), 'tf1compat')
# What `from tf1compat import recorder, team_models` needs, and nothing that imports
# TensorFlow or absl (tests/test_legacy.py keeps the wing closed).
PACKAGES = ('tf1compat', 'tf1compat.runs')


def _version():
  with open(os.path.join(PACKAGE_DIR, '__init__.py')) as f:
    return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setuptools.setup(
    name='tf1compat-recorder',
    version=_version(),
    description="tf1compat's recorder: a team's own training loop written as a run directory "
                'that compare_runs judges',
    license='Apache-2.0',
    python_requires='>=3.7',
    install_requires=['numpy'],
    package_dir={'tf1compat': os.path.relpath(PACKAGE_DIR, HERE)},
    packages=list(PACKAGES),
)
