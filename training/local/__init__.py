"""The offline default backend: trains in seconds on CPU, no network, no pickle.

Answers come from nearest-neighbour retrieval over the trained prompt -> answer pairs: by meaning
with sentence embeddings (``training.embedding``, ``EMBED_MODEL``), or by word matching (TF-IDF over
word 1-2-grams + char 2-4-grams, hashed) when no embedding model could be loaded. When the closest
pair is not close enough, or not clearly ahead of a different answer, the answer is "I don't know"
and how to teach it. Corrections (``!correct``) count at once: they are searched before the trained
pairs, without waiting for the next training. Labelled texts train a linear classifier (logistic
loss, SGD epochs so there is a real loss curve to show) when there are at least two labels.

Every training writes a new numbered version ``space.models/local-v<N>/`` built in a hidden
temp folder and renamed into place (``training.versions``), so a crash never leaves half a model and
older versions stay for rollback. Models are stored as ``.npz``/``.npy``/JSON and loaded with
``allow_pickle=False``: a file dropped into the data folder cannot run code.

Modules: ``retrieval`` (TF-IDF word matching, :class:`LocalModel`, :func:`pairs_from`), ``store`` (a
version's files: write, load), ``fit`` (:func:`train_version`: one training, its quick first stage, its
work folder and progress), ``runner`` (the job runner: progress, cancel, resume after a restart),
``answer`` (the answer rule), ``overlay`` (the corrections that count at once), ``backend``
(:class:`LocalBackend`).
"""

from training.local.backend import LocalBackend
from training.local.fit import train_version
from training.local.retrieval import LocalModel, pairs_from
from training.local.store import VERSIONS, load_version, version_numbers

__all__ = [
    "VERSIONS",
    "LocalBackend",
    "LocalModel",
    "load_version",
    "pairs_from",
    "train_version",
    "version_numbers",
]
