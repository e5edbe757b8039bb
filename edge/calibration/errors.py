"""Errors of `edge calibrate`: each names what is wrong and what to do about it (one line for the user)."""

from __future__ import annotations

from edge.errors import EdgeError


class CalibrationError(EdgeError):
    """Base class: the calibration cannot be done, or trusted, with the given input."""


class BoardNotFoundError(CalibrationError):
    """The board was detected in none (or too few) of the images."""


class TooFewViewsError(CalibrationError):
    """Fewer usable views than the model needs."""


class PoorCoverageError(CalibrationError):
    """The views cover too little of the image to constrain the lens model."""


class UnknownModelError(CalibrationError):
    """A camera or distortion model name the tool does not know."""


class FormatError(CalibrationError):
    """A calibration file (camera_info, camchain, targets) is malformed; the message names the file and key."""


class InvalidOutputError(CalibrationError):
    """The result would not pass the rig validator; nothing is written."""
