"""Hugging Face transformers models for the zoo, built from configs (random init, no download).

``la.zoo.build("hf:gpt2-tiny", dataset=train)`` or ``--model hf:gpt2-tiny`` on the command line;
``hf:bert-tiny``; or ``hf:path/to/config.json``, a transformers config file (its ``model_type``,
and ``architectures`` when given, choose the class). The models are the library's own classes
(``GPT2LMHeadModel``, ``BertForSequenceClassification``, ...), so parameter names are the usual
ones (``transformer.h.0.attn.c_attn.weight``) and ``--include 'transformer.h.*.attn.*'``
selects them.

| name | class | sizes |
|---|---|---|
| ``gpt2-tiny`` | ``GPT2LMHeadModel`` (tied ``wte`` / ``lm_head``) | width 64, 2 layers, 4 heads |
| ``bert-tiny`` | ``BertForSequenceClassification`` | width 64, 2 layers, 4 heads, FFN 128 |

The vocabulary, the sequence length (positions) and the class count come from the dataset
(``load("tokens", task="lm")`` for the causal LM: per-token next-token targets, already shifted,
so ``loss="cross_entropy"`` on the ``.logits`` is the LM loss; ``load("tokens")`` for the
classifier). Dropout is 0 (a deterministic function of the parameters) and ``use_cache`` off.
Attention runs on PyTorch's ``scaled_dot_product_attention`` (``attn_implementation="sdpa"``,
the fastest forward here); its fused CPU/GPU kernels have no second derivative, so the
Objective runs derivatives on its math kernel (see ``Objective.forward``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lossatlas.core.errors import LossAtlasError

__all__ = ["PRESETS", "config", "factory", "require"]

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-tiny": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4,
                  "bos_token_id": None, "eos_token_id": None,
                  "architectures": ["GPT2LMHeadModel"]},
    "bert-tiny": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "intermediate_size": 128,
                  "architectures": ["BertForSequenceClassification"]},
}
_POSITIONS = ("n_positions", "max_position_embeddings")


def require(what: str):
    """The ``transformers`` module, or one sentence saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise LossAtlasError(
            f"{what} needs the transformers package; install it with pip install "
            "'lossatlas[hf]' (or pip install transformers)."
        ) from None
    return transformers


def _settings(spec: str) -> dict[str, Any]:
    if spec in PRESETS:
        return dict(PRESETS[spec])
    path = Path(spec).expanduser()
    if path.suffix != ".json" or not path.is_file():
        raise LossAtlasError(
            f"model 'hf:{spec}' is neither a preset ({', '.join(sorted(PRESETS))}) nor a "
            "transformers config .json file; pass e.g. --model hf:gpt2-tiny."
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LossAtlasError(f"model 'hf:{spec}': the config file cannot be read as JSON "
                             f"({exc}); pass a transformers config.json.") from None
    if not isinstance(raw, Mapping) or "model_type" not in raw:
        raise LossAtlasError(f"model 'hf:{spec}': the config has no \"model_type\"; write "
                             'e.g. "model_type": "gpt2" into it.')
    return dict(raw)


def config(spec: str, *, vocab_size: int, seq_len: int, num_classes: int | None = None,
           attn_implementation: str = "sdpa", **overrides: Any):
    """The transformers config of preset or file ``spec`` sized for the data: vocabulary,
    positions (``seq_len``), ``num_labels``; dropout 0, no cache; ``overrides`` last."""
    tf = require(f"model 'hf:{spec}'")
    raw = _settings(spec)
    model_type = raw.pop("model_type")
    raw.update(vocab_size=int(vocab_size), use_cache=False)
    for key in _POSITIONS:
        raw[key] = int(seq_len)
    if num_classes is not None:
        raw["num_labels"] = int(num_classes)
    try:
        cfg = tf.AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        raise LossAtlasError(f"model 'hf:{spec}': transformers does not know model_type "
                             f"{model_type!r} ({str(exc).splitlines()[0]}).") from None
    for key in list(cfg.to_dict()):
        if key.endswith(("pdrop", "dropout_prob", "_dropout")) or key == "dropout":
            setattr(cfg, key, 0.0)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = attn_implementation
    return cfg


def _model_class(tf, cfg, architecture: str | None, task: str | None):
    if architecture is not None:
        cls = getattr(tf, architecture, None)
        if cls is None:
            raise LossAtlasError(f"architectures={architecture!r} is not a transformers class; "
                                 "name one such as GPT2LMHeadModel.")
        return cls
    auto = tf.AutoModelForCausalLM if task == "lm" else tf.AutoModelForSequenceClassification
    return lambda c: auto.from_config(c)


def factory(spec: str) -> Callable[..., nn.Module]:
    """A zoo factory for ``hf:<spec>``: builds the model for a dataset's vocabulary, sequence
    length and classes (``task="lm"`` or ``"classify"`` when the config names no class)."""

    def build(*, input_shape: tuple[int, ...] | None = None, num_classes: int = 10,
              vocab_size: int | None = None, seq_len: int | None = None,
              task: str | None = None, attn_implementation: str = "sdpa",
              in_features: int | None = None, **overrides: Any) -> nn.Module:
        tf = require(f"model 'hf:{spec}'")
        if vocab_size is None:
            raise LossAtlasError(
                f"vocab_size is required for model 'hf:{spec}', which reads integer tokens; "
                "pass dataset= a token dataset (e.g. load('tokens')) or vocab_size=."
            )
        if input_shape is not None:
            if len(input_shape) != 1:
                raise LossAtlasError(f"input_shape={tuple(input_shape)} does not fit model "
                                     f"'hf:{spec}', which takes (L,) token sequences.")
            seq_len = int(input_shape[0])
        if seq_len is None:
            raise LossAtlasError(f"seq_len is required for model 'hf:{spec}'; pass seq_len= "
                                 "or dataset=.")
        if task not in (None, "lm", "classify"):
            raise LossAtlasError(f"task={task!r} for model 'hf:{spec}' must be 'lm' or "
                                 "'classify'.")
        arch = (_settings(spec).get("architectures") or [None])[0] if task is None else None
        cfg = config(spec, vocab_size=vocab_size, seq_len=seq_len,
                     num_classes=None if task == "lm" else num_classes,
                     attn_implementation=attn_implementation, **overrides)
        model = _model_class(tf, cfg, arch, task)(cfg)
        return model.eval()

    build.__name__ = f"hf:{spec}"
    build.__doc__ = (f"Hugging Face model {spec!r} from its config, random init "
                     "(lossatlas.batteries.hf).")
    return build
