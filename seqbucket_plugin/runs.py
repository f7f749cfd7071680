"""Trained runs as Python objects: :func:`load_run` returns a predictor for a run directory written
by either recipe (``recipes/text_classification.py``, ``recipes/tagging.py``).

A run directory is **untrusted input**, like a checkpoint: it may come from someone else.

* ``config.json`` is read by a declared schema (:data:`CLASSIFICATION_CONFIG`,
  :data:`TAGGING_CONFIG`): only the model and tokenization settings, each with its type and range.
  Every other key (data files, ``output_dir``, ``predict``, ``predictions``, ``device``...) is
  ignored: nothing that names a file, a path or an action is ever taken from a run directory.
* ``labels.json`` must be a list of unique strings, as many as the model has outputs;
  ``chars.json`` (tagging with character features) a list of unique characters matching the
  character embedding; the tokenizer's vocabulary must match the word embedding; every weight in
  ``best_model.pt`` must have the shape the config implies (checked on the ``meta`` device
  before any memory is allocated for the model).
* ``best_model.pt`` is loaded by :func:`~seqbucket_plugin.training.checkpoint.load_checkpoint`
  (checksums first, ``weights_only=True``); the tokenizer is JSON parsed by ``tokenizers``.

Every violation raises :class:`~seqbucket_plugin.errors.RunDirectoryError` naming the file and
the key (a damaged ``best_model.pt``: :class:`~seqbucket_plugin.errors.CheckpointError`). Loading
and predicting write nothing.

Predictions are computed in length-bucketed batches (a :class:`BucketBatcher` with
``shuffle=False``, which still yields the shortest batch first) and returned in input order by
contract: each batch carries its examples' dataset positions (``PackedBatch.positions``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqbucket_plugin.errors import RunDirectoryError, SeqBucketError

__all__ = [
    "CLASSIFICATION_CONFIG",
    "TAGGING_CONFIG",
    "ClassificationPredictor",
    "ConfigKey",
    "RunPredictor",
    "TaggingPredictor",
    "load_run",
    "read_run_config",
]

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.json"
CHARS_FILE = "chars.json"
MODEL_FILE = "best_model.pt"
TOKENIZER_DIR = "tokenizer"
MAX_JSON_BYTES = 64 << 20
"""Largest ``config.json`` / ``labels.json`` / ``chars.json`` read (a guard against memory exhaustion)."""
DEFAULT_MAX_TOKENS = 4096
"""Token budget per prediction batch when neither the caller nor the run's config gives one."""
_MAX_DIM = 1 << 16


@contextlib.contextmanager
def _no_progress_bars():
    """``datasets`` progress bars off while a predictor tokenizes (a library call stays quiet),
    restored afterwards to what the caller had."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


# ------------------------------------------------------------------------------------------ schema
@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """One declared ``config.json`` key: its type (``int``, ``float`` or ``str``), whether it must
    be present, whether ``null`` is allowed, its range (``low``..``high``, inclusive) or choices,
    and the value used when an optional key is absent."""

    name: str
    type: type
    required: bool = True
    nullable: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    default: Any = None
    check: Callable[[Any], None] | None = None
    """Raises ``ValueError`` (its message is reported) for a value the type and range allow but
    the model does not (an unregistered encoder, an unknown pooling)."""

    def validate(self, value: Any, path: str) -> Any:
        def fail(expected: str) -> RunDirectoryError:
            return RunDirectoryError(f"must be {expected}, got {json.dumps(value)[:80]}", path, self.name)

        if value is None:
            if self.nullable:
                return None
            raise fail(f"a {self.type.__name__}{self._range()}")
        if self.type is int:
            if type(value) is not int:
                raise fail(f"an integer{self._range()}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(f"a finite number{self._range()}")
            value = float(value)
        elif self.type is str:
            if not isinstance(value, str) or len(value) > 200:
                raise fail("a string" + (f" among {list(self.choices)}" if self.choices else ""))
        if self.low is not None and not value >= self.low or self.high is not None and not value <= self.high:
            raise fail(f"a {self.type.__name__}{self._range()}")
        if self.choices is not None and value not in self.choices:
            raise fail(f"one of {list(self.choices)}")
        if self.check is not None:
            try:
                self.check(value)
            except (ValueError, SeqBucketError) as err:
                raise RunDirectoryError(str(err), path, self.name) from err
        return value

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        return f" in [{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]"


def _registered_encoder(name: str) -> None:
    from seqbucket_plugin.encoders import list_encoders

    if name not in list_encoders(include_aliases=True):
        raise ValueError(f"encoder {name!r} is not registered here; registered: {list_encoders()}")


def _encoder_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The run's encoder options that its encoder takes (a custom encoder may take no num_layers;
    the recipe then trained it without)."""
    from seqbucket_plugin.encoders.registry import supported_options

    return supported_options(config["encoder"], {"num_layers": config["num_layers"]})[0]


def _pooling(value: str) -> None:
    from seqbucket_plugin.encoders.pooling import parse_pooling

    parse_pooling(value)  # EncoderInputError (a SeqBucketError) names the bad mode


_COMMON = (
    ConfigKey("encoder", str, check=_registered_encoder),
    ConfigKey("embedding_dim", int, low=1, high=_MAX_DIM),
    ConfigKey("hidden_size", int, low=1, high=_MAX_DIM),
    ConfigKey("num_layers", int, low=1, high=64),
    ConfigKey("max_length", int, required=False, nullable=True, low=0, high=2**31 - 1),
    ConfigKey("batching", str, required=False, choices=("bucket", "naive"), default="bucket"),
    ConfigKey("max_tokens", int, required=False, nullable=True, low=1, high=2**31 - 1),
    ConfigKey("batch_size", int, required=False, nullable=True, low=1, high=2**24),
    ConfigKey("max_batch_size", int, required=False, nullable=True, low=1, high=2**24),
    ConfigKey("num_buckets", int, required=False, low=1, high=4096, default=66),
)
CLASSIFICATION_CONFIG: tuple[ConfigKey, ...] = _COMMON + (
    ConfigKey("pooling", str, check=_pooling),
    ConfigKey("truncation", str, required=False, choices=("head", "tail", "head+tail"), default="head+tail"),
    ConfigKey("head_fraction", float, required=False, low=0.0, high=1.0, default=0.25),
    ConfigKey("tbptt_chunk", int, required=False, nullable=True, low=0, high=2**31 - 1, default=0),
)
"""The ``config.json`` keys a text-classification run is rebuilt from (all others are ignored)."""
TAGGING_CONFIG: tuple[ConfigKey, ...] = _COMMON + (
    ConfigKey("char_encoder", str, required=False, nullable=True, choices=("cnn", "bilstm", "lstm", "none")),
    ConfigKey("char_dim", int, required=False, nullable=True, low=1, high=4096),
    ConfigKey("char_filters", int, required=False, nullable=True, low=1, high=_MAX_DIM),
    ConfigKey("decoder", str, choices=("crf", "softmax")),
)
"""The ``config.json`` keys a tagging run is rebuilt from (all others are ignored)."""


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunDirectoryError(f"missing: a run directory needs {what}", path)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise RunDirectoryError(f"larger than {MAX_JSON_BYTES >> 20} MiB; not read", path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RunDirectoryError(f"not UTF-8 ({err})", path) from err
    except json.JSONDecodeError as err:
        raise RunDirectoryError(f"not valid JSON ({err})", path) from err
    except RecursionError as err:
        raise RunDirectoryError("JSON nested too deeply", path) from err


def read_run_config(path: str | os.PathLike, schema: Sequence[ConfigKey]) -> dict[str, Any]:
    """The declared keys of a run's ``config.json`` (``path``: the file), validated by ``schema``;
    absent optional keys get their defaults, undeclared keys are ignored.

    Raises:
        RunDirectoryError: the file is missing or not a JSON object, a required key is absent, or
            a value has the wrong type or is out of range (naming the file and the key).
    """
    path = Path(path)
    raw = _read_json(path, "the config the model was trained with")
    if not isinstance(raw, dict):
        raise RunDirectoryError(f"must be a JSON object, got {type(raw).__name__}", path)
    config = {}
    for key in schema:
        if key.name not in raw:
            if key.required:
                raise RunDirectoryError("missing (a run of this recipe always has it)", path, key.name)
            config[key.name] = key.default
            continue
        config[key.name] = key.validate(raw[key.name], os.fspath(path))
    return config


# ------------------------------------------------------------------------------------------ loading
def _resolve(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from seqbucket_plugin.training.engine import resolve_device

    return resolve_device(str(device))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from seqbucket_plugin.training.checkpoint import load_checkpoint

    if not path.is_file():
        raise RunDirectoryError("missing: no trained model (a finished or interrupted run writes it)", path)
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or not state:
        raise RunDirectoryError("not a model state dict (a non-empty mapping of names to tensors)", path)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise RunDirectoryError("not a model state dict: every entry must be a tensor", path, str(name)[:80])
    return state


def _task_of(state: dict[str, torch.Tensor], path: Path) -> str:
    if "proj.weight" in state:
        return "tagging"
    if any(k.startswith("mlp.") for k in state):
        return "classification"
    raise RunDirectoryError("holds neither a SequenceClassifier (mlp.*) nor a SequenceTagger (proj.*)", path)


def _labels(path: Path, num_outputs: int, model_file: Path) -> list[str]:
    labels = _read_json(path, "the label names")
    if not isinstance(labels, list) or not labels:
        raise RunDirectoryError(f"must be a non-empty JSON list of label names, got {type(labels).__name__}", path)
    seen: dict[str, int] = {}
    for i, name in enumerate(labels):
        if not isinstance(name, str):
            raise RunDirectoryError(f"entry {i} must be a string, got {json.dumps(name)[:80]}", path)
        if name in seen:
            raise RunDirectoryError(f"label {name!r} appears twice (entries {seen[name]} and {i})", path)
        seen[name] = i
    if len(labels) != num_outputs:
        raise RunDirectoryError(f"{len(labels)} labels, but the model in {model_file} has {num_outputs} outputs",
                                path)
    return labels


def _tokenizer(folder: Path, state: dict[str, torch.Tensor], model_file: Path):
    from seqbucket_plugin.datapipes import TextTokenizer

    file = folder / "tokenizer.json"
    try:
        tokenizer = TextTokenizer.load(folder)
    except FileNotFoundError as err:
        raise RunDirectoryError("missing: the tokenizer the model was trained with", file) from err
    except SeqBucketError as err:
        raise RunDirectoryError(str(err), file) from err
    rows = state.get("embedding.weight")
    if rows is None or rows.dim() != 2:
        raise RunDirectoryError("no 2-d word embedding", model_file, "embedding.weight")
    if tokenizer.vocab_size != rows.shape[0]:
        raise RunDirectoryError(f"vocabulary of {tokenizer.vocab_size} tokens, but the word embedding in "
                                f"{model_file} has {rows.shape[0]} rows", file, "vocabulary")
    if tokenizer.pad_id is None:
        raise RunDirectoryError("no padding token", file, "pad_token")
    return tokenizer


def _chars(path: Path, state: dict[str, torch.Tensor], model_file: Path):
    from seqbucket_plugin.datapipes import CharVocab

    raw = _read_json(path, "the character vocabulary of the character encoder")
    chars = raw.get("chars") if isinstance(raw, dict) else None
    if not isinstance(chars, list):
        raise RunDirectoryError("must be a JSON object with a list of characters", path, "chars")
    seen: set[str] = set()
    for i, ch in enumerate(chars):
        if not isinstance(ch, str) or len(ch) != 1:
            raise RunDirectoryError(f"entry {i} must be one character, got {json.dumps(ch)[:80]}", path, "chars")
        if ch in seen:
            raise RunDirectoryError(f"character {ch!r} appears twice", path, "chars")
        seen.add(ch)
    vocab = CharVocab(chars)
    rows = state.get("char_encoder.embedding.weight")
    if rows is None or rows.dim() != 2 or rows.shape[0] != len(vocab):
        got = "none" if rows is None else f"{rows.shape[0]} rows"
        raise RunDirectoryError(f"{len(chars)} characters (+2 special ids), but the character embedding in "
                                f"{model_file} has {got}", path, "chars")
    return vocab


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], model_file: Path, config_file: Path) -> None:
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise RunDirectoryError(f"missing, but the model that {config_file} describes has it", model_file, name)
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise RunDirectoryError(f"shape {tuple(state[name].shape)}, but the model that {config_file} describes "
                                    f"needs {tuple(tensor.shape)}", model_file, name)


def _build(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], model_file: Path, config_file: Path,
           device: torch.device) -> nn.Module:
    try:
        with torch.device("meta"):  # shapes first: no memory is allocated for a config that lies
            shell = make()
    except (SeqBucketError, ValueError, TypeError) as err:
        raise RunDirectoryError(f"the settings do not make a model ({err})", config_file) from err
    _check_shapes(shell, state, model_file, config_file)
    model = make()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RunDirectoryError(f"does not fit the model that {config_file} describes ({err})", model_file) from err
    return model.to(device).eval()


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", *, max_tokens: int | None = None,
             batch_size: int | None = None) -> RunPredictor:
    """A predictor for the run directory ``path`` (written by either recipe), on ``device``
    (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``).

    Returns a :class:`ClassificationPredictor` or a :class:`TaggingPredictor` (the recipe is told
    by the weights in ``best_model.pt``). ``max_tokens`` / ``batch_size`` set the prediction
    batches (default: the run's own, else ``max_tokens=4096``); an example longer than the budget
    gets a batch of its own, it is never cut.

    Only ``config.json``'s declared model and tokenization keys are read (see the module
    docstring); nothing is written.

    Raises:
        RunDirectoryError: a file is missing, malformed or inconsistent with the model (the
            message names the file and the key).
        CheckpointError: ``best_model.pt`` is truncated, corrupt or holds code.
        SeqBucketError: ``device`` is unavailable.
    """
    root = Path(path)
    if not root.is_dir():
        raise RunDirectoryError("not a directory (a run directory is a recipe's --output-dir)", root)
    for name, value in (("max_tokens", max_tokens), ("batch_size", batch_size)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    device = _resolve(device)
    model_file = root / MODEL_FILE
    state = _state_dict(model_file)
    task = _task_of(state, model_file)
    cls = ClassificationPredictor if task == "classification" else TaggingPredictor
    return cls(root, state, device, max_tokens=max_tokens, batch_size=batch_size)


# ------------------------------------------------------------------------------------------ predictors
class RunPredictor:
    """What :func:`load_run` returns: the validated ``config`` (the declared keys only), the
    ``labels``, the ``tokenizer`` and the ``model`` (in eval mode on ``device``). Subclasses
    implement :meth:`predict`; :meth:`export` writes an ONNX model."""

    task: str = ""
    schema: tuple[ConfigKey, ...] = ()

    def __init__(self, root: Path, state: dict[str, torch.Tensor], device: torch.device, *,
                 max_tokens: int | None, batch_size: int | None):
        self.path = root
        self.device = device
        self.config_file = root / CONFIG_FILE
        self.model_file = root / MODEL_FILE
        self.config = read_run_config(self.config_file, self.schema)
        self.tokenizer = _tokenizer(root / TOKENIZER_DIR, state, self.model_file)
        self.labels = _labels(root / LABELS_FILE, self._num_outputs(state), self.model_file)
        self._prepare(state)
        self.model = _build(self._make_model, state, self.model_file, self.config_file, device)
        self.batch_size = batch_size if batch_size is not None else (
            None if max_tokens is not None else self.config["batch_size"])
        self.max_tokens = max_tokens or self.config["max_tokens"] or DEFAULT_MAX_TOKENS
        if self.naive:
            self.batch_size = self.batch_size or 32

    @property
    def naive(self) -> bool:
        """The run trained with ``--batching naive``: the model reads the padding, as in training."""
        return self.config["batching"] == "naive"

    def _num_outputs(self, state: dict[str, torch.Tensor]) -> int:
        raise NotImplementedError

    def _prepare(self, state: dict[str, torch.Tensor]) -> None:
        """Task-specific files read before the model is built."""

    def _make_model(self) -> nn.Module:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({os.fspath(self.path)!r}, encoder={self.config['encoder']!r}, "
                f"labels={len(self.labels)}, device={str(self.device)!r})")

    def _batches(self, dataset, after_pack: Callable | None = None):
        """``PackedBatch``es of ``dataset`` (tokenized; ``length`` column), length-bucketed,
        with ``positions``; an example longer than the budget gets a batch of its own."""
        from seqbucket_plugin.datapipes import Pipe

        longest = int(max(dataset["length"], default=0))
        if self.batch_size:
            size = {"batch_size": self.batch_size}
        else:
            size = {"max_tokens": max(self.max_tokens, longest, 1), "max_batch_size": self.config["max_batch_size"]}
        pipe = (Pipe.from_hf(dataset)
                .bucket_batch(**size, num_buckets=1 if self.naive else self.config["num_buckets"], shuffle=False,
                              seed=0, rank=0, world_size=1)
                .pack(pad_id=self.tokenizer.pad_id))
        if after_pack is not None:
            pipe = pipe.map(after_pack)
        for batch in pipe:
            if batch.positions is None:  # pragma: no cover - the batcher always sets them
                raise RuntimeError("a batch without dataset positions")
            yield batch

    def predict(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def export(self, path: str | os.PathLike, **kwargs: Any) -> str:
        """Write the model as ONNX to ``path``; returns it (see :func:`seqbucket_plugin.export.export_onnx`)."""
        from seqbucket_plugin.export import export_onnx

        return export_onnx(self, path, **kwargs)


def _as_strings(items: Sequence[Any], what: str) -> list[str]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"predict takes a list of {what}, not a single string")
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise TypeError(f"{what} {i} is a {type(item).__name__}, not a str")
    return out


class ClassificationPredictor(RunPredictor):
    """A text-classification run: ``predict(texts)`` -> ``[{"label", "probability",
    "probabilities": {name: p}}]`` in input order."""

    task = "classification"
    schema = CLASSIFICATION_CONFIG

    def _num_outputs(self, state):
        heads = sorted((k for k in state if k.startswith("mlp.") and k.endswith(".weight")),
                       key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1)
        if not heads or state[heads[-1]].dim() != 2:
            raise RunDirectoryError("no output layer (mlp.N.weight)", self.model_file)
        return int(state[heads[-1]].shape[0])

    def _make_model(self) -> nn.Module:
        from seqbucket_plugin.heads import SequenceClassifier

        c = self.config
        return SequenceClassifier(
            self.tokenizer.vocab_size, len(self.labels), embedding_dim=c["embedding_dim"],
            hidden_size=c["hidden_size"], encoder=c["encoder"], pooling=c["pooling"],
            padding_idx=self.tokenizer.pad_id, encoder_kwargs=_encoder_kwargs(c))

    def tokenize(self, texts: list[str]):
        """The texts as the run's training tokenized them (``max_length``, ``truncation``)."""
        import datasets

        from seqbucket_plugin.datapipes import tokenize_dataset

        c = self.config
        max_length = None if c["tbptt_chunk"] or not c["max_length"] else c["max_length"]
        ds = datasets.Dataset.from_dict({"text": texts})
        with _no_progress_bars():
            return tokenize_dataset(ds, self.tokenizer, max_length=max_length, truncation=c["truncation"],
                                    head_fraction=c["head_fraction"], label_column=None)

    @torch.no_grad()
    def logits(self, batch) -> torch.Tensor:
        """``(B, C)`` logits of a ``PackedBatch`` (on ``device``), as the run evaluated them."""
        from seqbucket_plugin.training.classification import chunked_logits, naive_batch

        if self.config["tbptt_chunk"]:
            return chunked_logits(self.model, batch, self.config["tbptt_chunk"])
        return self.model(naive_batch(batch) if self.naive else batch).logits

    @torch.no_grad()
    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify ``texts``; one dict per text, in input order: ``label`` (the most probable),
        ``probability`` (its probability) and ``probabilities`` (every label's)."""
        texts = _as_strings(texts, "text")
        if not texts:
            return []
        results: list[dict[str, Any] | None] = [None] * len(texts)
        for batch in self._batches(self.tokenize(texts)):
            probs = self.logits(batch.to(self.device)).float().softmax(-1).cpu()
            best = probs.argmax(-1).tolist()
            for row, position in enumerate(batch.positions.tolist()):
                p = probs[row].tolist()
                results[position] = {"label": self.labels[best[row]], "probability": p[best[row]],
                                     "probabilities": dict(zip(self.labels, p))}
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


class TaggingPredictor(RunPredictor):
    """A tagging run: ``predict(sentences)`` -> ``[{"tokens", "tags"}]`` in input order, one tag
    per input token. A sentence longer than the run's ``max_length`` is tagged in consecutive
    windows of ``max_length`` tokens (the lengths the model was trained on), never cut."""

    task = "tagging"
    schema = TAGGING_CONFIG

    def _num_outputs(self, state):
        proj = state["proj.weight"]
        if proj.dim() != 2:
            raise RunDirectoryError("must be 2-d", self.model_file, "proj.weight")
        return int(proj.shape[0])

    @property
    def uses_chars(self) -> bool:
        return self.config["char_encoder"] not in (None, "none")

    def _prepare(self, state):
        self.chars = None
        if self.uses_chars:
            for key in ("char_dim", "char_filters"):
                if self.config[key] is None:
                    raise RunDirectoryError(f"required with char_encoder {self.config['char_encoder']!r}",
                                            self.config_file, key)
            self.chars = _chars(self.path / CHARS_FILE, state, self.model_file)

    def _make_model(self) -> nn.Module:
        from seqbucket_plugin.heads import SequenceTagger

        c = self.config
        char_kwargs = None
        if self.uses_chars:
            key = "num_filters" if c["char_encoder"] == "cnn" else "hidden_size"
            char_kwargs = {"char_dim": c["char_dim"], key: c["char_filters"]}
        return SequenceTagger(
            self.tokenizer.vocab_size, len(self.labels), embedding_dim=c["embedding_dim"],
            hidden_size=c["hidden_size"], encoder=c["encoder"], encoder_kwargs=_encoder_kwargs(c),
            char_encoder=c["char_encoder"] if self.uses_chars else None,
            num_chars=len(self.chars) if self.chars is not None else None, char_kwargs=char_kwargs,
            decoder=c["decoder"], padding_idx=self.tokenizer.pad_id)

    @property
    def window(self) -> int | None:
        """Tokens per window (the run's ``max_length``; None: whole sentences)."""
        return self.config["max_length"] or None

    def _after_pack(self, batch):
        from seqbucket_plugin.datapipes import CharIds
        from seqbucket_plugin.training.classification import naive_batch

        if self.chars is not None:
            batch = CharIds(self.chars)(batch)
        else:
            batch.extras.pop("tokens", None)
        return naive_batch(batch) if self.naive else batch

    @torch.no_grad()
    def predict(self, sentences: Sequence[Sequence[str] | str]) -> list[dict[str, Any]]:
        """Tag ``sentences`` (lists of tokens, or strings split on whitespace); one
        ``{"tokens", "tags"}`` per sentence, in input order, with one tag per token."""
        import datasets

        from seqbucket_plugin.datapipes import tokenize_tagged_dataset

        if isinstance(sentences, (str, bytes)):
            raise TypeError("predict takes a list of sentences, not a single string")
        sents = [s.split() if isinstance(s, str) else _as_strings(s, "token") for s in sentences]
        tags: list[list[str | None]] = [[None] * len(s) for s in sents]
        windows = []  # (sentence, start, tokens)
        for i, words in enumerate(sents):
            step = self.window or max(len(words), 1)
            windows += [(i, start, words[start:start + step]) for start in range(0, len(words), step)]
        if windows:
            unk = self.tokenizer.unk_token or ""
            # the word lookup: an empty or blank token (possible in a list) would encode to no id at all
            lookup = [[w if w.strip() else unk for w in win] for _, _, win in windows]
            ds = datasets.Dataset.from_dict({"lookup": lookup, "tokens": [w for _, _, w in windows],
                                             "tags": [[0] * len(w) for _, _, w in windows]})
            with _no_progress_bars():
                tokenized = tokenize_tagged_dataset(ds, self.tokenizer, tokens_column="lookup", subword=False,
                                                    keep_columns=["tokens"])
            for batch in self._batches(tokenized, self._after_pack):
                pred = self.model.decode(batch.to(self.device)).cpu()
                for row, (position, n) in enumerate(zip(batch.positions.tolist(), batch.lengths.tolist())):
                    i, start, words = windows[position]
                    if n != len(words) and not self.naive:
                        raise RuntimeError(f"window of {len(words)} words encoded to {n} ids")
                    tags[i][start:start + len(words)] = [self.labels[t] for t in pred[row, :len(words)].tolist()]
        return [{"tokens": list(words), "tags": row} for words, row in zip(sents, tags)]
