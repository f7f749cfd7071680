"""Encoder registry and pack-aware recurrent encoders.

>>> from seqbucket_plugin.encoders import create_encoder
>>> enc = create_encoder("bilstm", input_size=64, hidden_size=128, pooling="last+max")
>>> out = enc(embedded, lengths)        # or enc(packed_sequence), or enc(batch, embed=emb)
>>> out.states, out.pooled, out.final   # (B, T, 256), (B, 512), (h_n, c_n)
"""

from seqbucket_plugin.encoders.base import (
    EncoderOutput,
    SequenceEncoder,
    resolve_inputs,
    resolve_lengths,
)
from seqbucket_plugin.encoders.char import CharBiLSTM, CharCNN, create_char_encoder
from seqbucket_plugin.encoders.errors import (
    EncoderInputError,
    EncoderOptionError,
    EncoderRegistrationError,
    UnknownEncoderError,
)
from seqbucket_plugin.encoders.pooling import POOLING_MODES, Pooler, parse_pooling
from seqbucket_plugin.encoders.recurrent import RecurrentEncoder
from seqbucket_plugin.encoders.registry import (
    ENTRY_POINT_GROUP,
    accepted_options,
    canonical_encoder_name,
    create_encoder,
    get_encoder_factory,
    list_encoders,
    register_encoder,
    unregister_encoder,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "POOLING_MODES",
    "accepted_options",
    "CharBiLSTM",
    "CharCNN",
    "EncoderInputError",
    "EncoderOptionError",
    "EncoderOutput",
    "EncoderRegistrationError",
    "Pooler",
    "RecurrentEncoder",
    "SequenceEncoder",
    "UnknownEncoderError",
    "canonical_encoder_name",
    "create_char_encoder",
    "create_encoder",
    "get_encoder_factory",
    "list_encoders",
    "parse_pooling",
    "register_encoder",
    "resolve_inputs",
    "resolve_lengths",
    "unregister_encoder",
]
