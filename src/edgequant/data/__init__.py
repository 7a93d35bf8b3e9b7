"""Data sources (SRC) for calibration, evaluation and benchmarking, streamed one sample at a time.

Source kinds (``open_source(spec, inputs)``):

* ``file.npz`` -- one array per model input, keyed by input name, first axis = samples; an
  optional ``labels`` array (first axis = samples). Any other array is an error (a typo'd
  input name is the common bug, so it is not silently ignored).
* ``file.npy`` -- single-input models, first axis = samples.
* a folder of ``.npy``/``.npz`` files -- one sample per file, sorted by file name; a per-file
  ``labels`` or ``label`` array is allowed in .npz files (all files or none).
* a folder of images (.png/.jpg/.jpeg/.bmp, or a single image file) plus a :class:`Preprocess`
  spec (required). Images directly in the folder are unlabeled; images one level down in class
  folders are labeled: by the folder name when every folder name is an integer, otherwise by
  the index of the folder name in sorted order (the torchvision ImageFolder convention).
* ``random:N`` -- N synthetic samples, deterministic per (seed, index), for latency only
  (``DataSource.synthetic`` is True). Floats ~ N(0, 1); integers in [0, 2) (valid token ids,
  types and positions for any vocabulary); inputs named ``*mask*`` are all ones; bools are
  random. A dynamic *leading* dim becomes 1, any other dynamic dim 128 (one value per
  symbol name across inputs); each guess is recorded in ``DataSource.notes``.

Sample-shape rule, for a model input of rank R:

* a *sample* is one entry along the first axis of a stacked file (.npz/.npy), or the whole
  array of a per-sample file (folder source);
* a sample of rank R is fed as is (it already has the model's batch dim);
* a sample of rank R-1 gets a leading batch dim of 1 -- allowed only when the model's first
  dim is 1 or dynamic. For a stacked file this means: an array of rank R+1 is
  ``[samples, *input]`` and an array of rank R is ``[samples along the batch axis, *input[1:]]``,
  fed as ``arr[i:i+1]``;
* every other rank is an error, and static dims must match exactly; dynamic dims are taken
  from the data (a symbol shared by several inputs must take one value per sample).

dtypes: float data is cast to the model's float type (float64 -> float32 is fine) and ints
to its int type (narrowing is range-checked per sample); int <-> float or bool mismatches are
errors. NaN/Inf is detected per sample while streaming: ``calib.npz: sample 17 of input 'x'
contains NaN``.

Everything is validated when the source is opened, reading headers only, so a bad file fails
before any quantization runs. Pickle is never allowed. Iteration streams: .npy files are
memory-mapped and .npz members (zip entries, possibly compressed) are read one sample's bytes
at a time, so memory does not grow with the number of samples.
"""

from .preprocess import Preprocess
from .readers import calibration_reader, stack_feeds
from .sources import DataSource, Sample, open_source

__all__ = ["DataSource", "Preprocess", "Sample", "calibration_reader", "open_source", "stack_feeds"]
