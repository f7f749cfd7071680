"""Errors raised by the encoder registry, the encoders and the heads."""

from __future__ import annotations

from seqbucket_plugin.errors import SeqBucketError


class EncoderRegistrationError(SeqBucketError, ValueError):
    """A name (or alias) is already registered and overriding was not asked for, or is invalid."""


class UnknownEncoderError(SeqBucketError, KeyError):
    """No encoder is registered under a name; the message suggests the closest names."""

    def __init__(self, name: str, suggestions: list[str], available: list[str]):
        self.name = name
        self.suggestions = list(suggestions)
        self.available = list(available)
        hint = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"no encoder registered as {name!r}{hint} (registered: {self.available})")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class EncoderInputError(SeqBucketError, ValueError):
    """The inputs given to an encoder or head are malformed (shape, lengths, mask with holes...)."""


class EncoderOptionError(SeqBucketError, TypeError):
    """An option was given that the encoder's factory does not accept; the message names the
    option and lists the ones it does accept."""
