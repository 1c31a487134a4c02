"""Typed errors: each names what is wrong and what to do about it.

Every error the library raises on bad input derives from :class:`DiffractError`, so callers (the CLI,
the ComfyUI nodes) can catch one type and show the message as it is. Every such class is defined
here (tests/test_errors.py checks both); what only a bug in the library can cause is an `assert`.
"""

from __future__ import annotations


class DiffractError(Exception):
    """Base class of every error the library raises on bad input."""


class UnsafeCheckpointError(DiffractError):
    """A checkpoint holds something other than tensors, or would run code when unpickled."""


class UnknownFileNameError(DiffractError):
    """A file name follows none of the release naming patterns."""


class CorruptFileError(DiffractError):
    """A weights or config file cannot be read as what it claims to be (truncated, damaged)."""


class UnreadableFileError(DiffractError):
    """A path that is not a readable regular file (permission denied, a folder, a FIFO or a device)."""


class MissingPathError(DiffractError, FileNotFoundError):
    """A file or folder that was named does not exist."""


class DestinationError(DiffractError):
    """An output folder that cannot be written (read-only, or a file stands where the folder should be)."""


class OutputExistsError(DiffractError, FileExistsError):
    """An output already exists, and replacing it was not asked for."""


class ConfigMismatchError(DiffractError):
    """A config contradicts the tensors stored beside it."""


class ShapeMismatchError(DiffractError):
    """Tensors have shapes that do not fit the architecture."""


class NonFiniteWeightsError(DiffractError):
    """Weights contain NaN or Inf values."""


class DimensionMismatchError(DiffractError):
    """A transcoder does not fit the model it is meant for (hidden size, layer count)."""


class SiteNotLoadedError(DiffractError, KeyError):
    """A transcoder site was asked for that the set does not hold."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class FeatureIndexError(DiffractError, IndexError):
    """A feature index is outside a transcoder's dictionary."""


class FeatureSpecError(DiffractError, ValueError):
    """A feature spec string is not `stream:layer:feature`."""


class BatchIndexError(DiffractError, IndexError):
    """An image index is outside the batch."""


class SettingsError(DiffractError, ValueError):
    """A setting, config value or argument is out of range or not one of its choices."""


class InvalidDataError(DiffractError, ValueError):
    """Data given to the library cannot be used as it is (empty, non-finite, or too uniform)."""


class HubUnavailableError(DiffractError):
    """The Hugging Face Hub could not be reached (offline mode, no network, missing files)."""


class InputShapeError(DiffractError):
    """Activations or latents passed to a model have the wrong shape."""


class UnsupportedModelError(DiffractError):
    """A model the transcoders cannot be attached to (not FLUX, or its MLPs are hidden)."""


class GraphStructureError(DiffractError):
    """The edges of a graph form a cycle, or chain deeper than any attribution graph does."""


class CircuitFileError(DiffractError):
    """A circuit file that is not a valid DifFRACT circuit."""


class QuantisedWeightsError(DiffractError, AttributeError):
    """A transcoder's matrix read directly where it is held quantised (fp8): read it through its accessor."""
