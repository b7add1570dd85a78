"""The exceptions minibert raises. Every message says what is wrong, where, and what to do.

MiniBertError
├── ModelFileError      files missing, unreadable or corrupt; tensors missing, unexpected or misshapen
├── ConfigError         config.json keys missing, unknown, impossible or unsupported
├── TokenizerError      tokenizer files missing or inconsistent with the model
├── InputError          texts or arrays given to tokenize/forward/encode that cannot be used
├── BackendError        an unknown backend, or one this machine cannot run (e.g. no CUDA device)
├── OutputError         an output that cannot be written, or that would destroy an input or the model
└── TrainingError       a fine-tuning run that diverged (a non-finite loss)

Warnings go through warn_caller, which points them at the user's line.
"""

import os
import sys
import warnings


class MiniBertError(Exception):
    """Root of every error minibert raises on purpose."""


class ModelFileError(MiniBertError):
    """A model file or tensor is missing, unreadable, corrupt, or has the wrong shape or dtype."""


class ConfigError(MiniBertError):
    """config.json is missing a key, has an unknown or impossible value, or asks for an unsupported feature."""


class TokenizerError(MiniBertError):
    """Tokenizer files are missing or do not fit the model."""


class InputError(MiniBertError, ValueError):
    """Texts or arrays passed in by the caller cannot be used."""


class BackendError(MiniBertError):
    """The requested compute backend is unknown or unavailable on this machine."""


class OutputError(MiniBertError):
    """An output cannot be written (full disk, permissions), or writing it would destroy an input, the source
    model or a folder minibert did not write."""


class TrainingError(MiniBertError):
    """Training diverged: a loss or gradient stopped being a finite number."""


def warn_caller(message, category=UserWarning):
    """warnings.warn attributed to the first frame outside minibert: the user's line, however deep the call."""
    package = os.path.dirname(os.path.abspath(__file__))      # minibert/
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
