"""The errors of the encoder registry, the encoders and the heads (defined with every other
bad-input error in :mod:`seqbucket_plugin.errors`)."""

from seqbucket_plugin.errors import (
    EncoderInputError,
    EncoderOptionError,
    EncoderRegistrationError,
    UnknownEncoderError,
)

__all__ = ["EncoderInputError", "EncoderOptionError", "EncoderRegistrationError", "UnknownEncoderError"]
