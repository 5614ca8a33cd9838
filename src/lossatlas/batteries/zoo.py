"""Model zoo: the papers' architectures, sized to any dataset's input shape and class count.

``build(name, ...)`` returns a fresh ``nn.Module`` mapping a batch ``(N, *input_shape)`` to
logits ``(N, num_classes)``. The shape comes from ``dataset=`` (an ``ArrayDataset``: its
``input_shape``, ``num_classes`` and ``vocab_size``), or from ``input_shape=`` / ``in_features=``
and ``num_classes=``.

| name | input | paper |
|---|---|---|
| ``mlp`` | any float shape (flattened) | |
| ``cnn`` | ``(C, H, W)`` (Conv2d) or ``(C, L)`` (Conv1d) | |
| ``resnet20/32/56/110`` | ``(C, H, W)`` | He et al. 2016; ``shortcut=False``: Li et al.'s -NS |
| ``resnet18`` | ``(C, H, W)`` | widths ``k, 2k, 4k, 8k`` as in Yang et al. 2021 |
| ``vgg9``, ``vgg11`` | ``(C, H, W)`` | Li et al. 2018's VGG-9; VGG-11 (Simonyan & Zisserman 2015) |
| ``transformer`` | ``(L,)`` int64 tokens | encoder classifier for the ``tokens`` dataset |
| ``hf:gpt2-tiny``, ``hf:bert-tiny`` | ``(L,)`` int64 tokens | transformers models (:mod:`.hf`) |

>>> import lossatlas as la
>>> model = la.zoo.build("mlp", in_features=64, num_classes=10, width=128)
>>> train, _ = la.datasets.load("digits", image=True)
>>> net = la.zoo.build("resnet20", dataset=train, width=0.5, seed=0)
>>> tuple(net(train.X[:2]).shape)
(2, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lossatlas.batteries import hf
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.registry import (
    absolute_spec,
    accepts,
    add_to_registry,
    check_options,
    import_spec,
)

__all__ = [
    "BasicBlock", "EncoderLayer", "ResNet", "TokenTransformer", "build", "names", "register",
    "registered",
]

Shape = tuple[int, ...]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_SHAPE: dict[str, Shape] = {}


def register(name: str, factory: Callable[..., nn.Module], *, overwrite: bool = False) -> None:
    """Make ``build(name, **kw)`` call ``factory(**kw)``.

    The factory also receives ``input_shape``, ``num_classes``, ``vocab_size`` and (for 1-D
    inputs) ``in_features`` when they are known and it takes keywords of those names (or
    ``**kwargs``).
    """
    add_to_registry(_REGISTRY, name, factory, overwrite=overwrite, kind="model")


def registered(name: str) -> Callable[..., nn.Module] | None:
    """The factory registered as ``name``, or None."""
    return _REGISTRY.get(name)


def names() -> list[str]:
    """The registered model names, sorted (the transformers presets are ``hf:`` +
    ``lossatlas.batteries.hf.PRESETS``)."""
    return sorted(_REGISTRY)


def build(
    name: str,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    in_features: int | None = None,
    dataset: Any = None,
    seed: int | None = None,
    **kw: Any,
) -> nn.Module:
    """A new model ``(N, *input_shape) -> (N, num_classes)`` by name or ``"pkg.mod:factory"``.

    ``dataset`` (an ``ArrayDataset``) supplies ``input_shape``, ``num_classes`` and
    ``vocab_size``; ``in_features=d`` means ``input_shape=(d,)``; ``num_classes`` defaults to 10
    and the ResNets' and VGGs' ``input_shape`` to CIFAR's ``(3, 32, 32)``.
    ``seed`` makes the initialization reproducible without touching the global generator.
    ``kw`` are the model's options (``width``, ``depth``, ``shortcut``, ...).
    """
    if not isinstance(name, str):
        raise _unknown_name(name)
    options = dict(kw)  # the user's options, recorded on the model (see _record)
    if name.startswith("hf:"):  # a transformers preset or config file (lossatlas.batteries.hf)
        factory, what = hf.factory(name[3:]), f"model {name!r}"
    elif ":" in name:
        factory, what = import_spec(name, "name"), f"factory {name!r}"
    elif name in _REGISTRY:
        factory, what = _REGISTRY[name], f"model {name!r}"
    else:
        raise _unknown_name(name)
    shape, classes, vocab = _resolve_shape(name, input_shape, num_classes, in_features, dataset)
    resolved = {"input_shape": shape, "num_classes": classes, "vocab_size": vocab,
                "in_features": shape[0] if shape is not None and len(shape) == 1 else None}
    for key, value in resolved.items():
        if value is None or not accepts(factory, key):
            continue
        if key in kw and kw[key] != value:
            raise LossAtlasError(
                f"{key}={kw[key]!r} differs from the dataset's {key}={value!r}; pass one of them."
            )
        kw[key] = value
    check_options(factory, kw, what)
    if seed is None:
        return _record(factory(**kw), name, options, seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LossAtlasError(f"seed={seed!r} must be a non-negative integer or None; pass seed=0.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _record(factory(**kw), name, options, seed)


#: The attribute where :func:`build` leaves how it built a model; ``la.train`` copies it into
#: the run's manifest (``model.build``) so that a run can be rebuilt from its folder alone.
BUILD_ATTR = "lossatlas_build"


def _record(model: Any, name: str, options: dict, seed: int | None) -> Any:
    """Attach ``{"name", "options", "seed"}`` to the model (a file path made absolute)."""
    if isinstance(model, nn.Module):
        setattr(model, BUILD_ATTR, {"name": absolute_spec(name), "options": options,
                                    "seed": seed})
    return model


def _unknown_name(name: Any) -> LossAtlasError:
    return LossAtlasError(
        f"name={name!r} is not a known model; use one of {', '.join(names())}, "
        f"{', '.join('hf:' + p for p in hf.PRESETS)}, a "
        "'package.module:factory' string, or add it with lossatlas.batteries.zoo.register."
    )


def _resolve_shape(name, input_shape, num_classes, in_features, dataset):
    vocab = None
    shapes: list[tuple[str, Shape]] = []
    classes: list[tuple[str, int]] = []
    if dataset is not None:
        if not hasattr(dataset, "input_shape") or not hasattr(dataset, "num_classes"):
            raise LossAtlasError(
                f"dataset={type(dataset).__name__} has no input_shape / num_classes; pass a "
                "la.datasets.ArrayDataset or give input_shape= and num_classes= instead."
            )
        shapes.append(("dataset", tuple(dataset.input_shape)))
        classes.append(("dataset", int(dataset.num_classes)))
        vocab = getattr(dataset, "vocab_size", None)
    if input_shape is not None:
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        shapes.append(("input_shape", tuple(int(s) for s in input_shape)))
    if in_features is not None:
        shapes.append(("in_features", (int(in_features),)))
    if num_classes is not None:
        classes.append(("num_classes", num_classes))
    for kind, given in (("input shape", shapes), ("class count", classes)):
        if len({v for _, v in given}) > 1:
            listed = " vs ".join(f"{k}={v}" for k, v in given)
            raise LossAtlasError(f"the {kind} is given twice and differs ({listed}); pass one.")
    shape = shapes[0][1] if shapes else _DEFAULT_SHAPE.get(name)
    C = classes[0][1] if classes else 10
    if shape is not None and (not shape or any(s < 1 for s in shape)):
        raise LossAtlasError(f"input_shape={shape} must be non-empty and positive; e.g. (64,).")
    if isinstance(C, bool) or not isinstance(C, int) or C < 1:
        raise LossAtlasError(f"num_classes={C!r} must be a positive integer; e.g. 10.")
    return shape, C, vocab


# -- checks shared by the built-in models ------------------------------------------------------


def _need_shape(model: str, input_shape: Shape | None, ranks: Sequence[int], hint: str) -> Shape:
    if input_shape is None:
        raise LossAtlasError(
            f"model {model!r} needs input_shape=, in_features= or dataset=; e.g. "
            f"build({model!r}, dataset=train)."
        )
    if len(input_shape) not in ranks:
        raise LossAtlasError(
            f"input_shape={tuple(input_shape)} does not fit model {model!r}, which takes {hint}."
        )
    return tuple(input_shape)


def _no_tokens(model: str, vocab_size: int | None) -> None:
    if vocab_size is not None:
        raise LossAtlasError(
            f"dataset holds integer token sequences (vocab_size={vocab_size}), which model "
            f"{model!r} cannot read; use name='transformer'."
        )


def _positive(model: str, **values: float) -> None:
    for arg, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise LossAtlasError(f"{arg}={v!r} for model {model!r} must be a positive number.")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
}


def _activation(model: str, activation: str) -> Callable[[], nn.Module]:
    if activation not in _ACTIVATIONS:
        raise LossAtlasError(
            f"activation={activation!r} for model {model!r} is unknown; use one of "
            f"{', '.join(_ACTIVATIONS)}."
        )
    return _ACTIVATIONS[activation]


def _scaled(channels: float) -> int:
    return max(1, round(channels))


# -- MLP and small CNN -------------------------------------------------------------------------


def mlp(
    *,
    input_shape: Shape | None = None,
    num_classes: int = 10,
    width: int = 128,
    depth: int = 1,
    activation: str = "relu",
    vocab_size: int | None = None,
) -> nn.Module:
    """Flatten, then ``depth`` hidden layers Linear(width) + activation, then Linear(num_classes).

    ``depth=0`` is a linear (softmax regression) model.
    """
    shape = _need_shape("mlp", input_shape, range(1, 8), "any sample shape")
    _no_tokens("mlp", vocab_size)
    _positive("mlp", width=width)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise LossAtlasError(f"depth={depth!r} for model 'mlp' must be an integer >= 0.")
    act = _activation("mlp", activation)
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(shape)
    for _ in range(depth):
        layers += [nn.Linear(d, int(width)), act()]
        d = int(width)
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def cnn(
    *,
    input_shape: Shape | None = None,
    num_classes: int = 10,
    width: int = 32,
    depth: int = 3,
    batchnorm: bool = True,
    vocab_size: int | None = None,
) -> nn.Module:
    """``depth`` blocks conv3x3 (width·2^i channels) + BatchNorm + ReLU + max-pool 2, then
    global average pooling and Linear(num_classes).

    ``(C, H, W)`` inputs use Conv2d, ``(C, L)`` inputs Conv1d; a block skips its pooling once
    the feature map is down to size 1, so 8x8 digits and length-40 signals both fit.
    """
    shape = _need_shape(
        "cnn", input_shape, (2, 3),
        "(C, H, W) images or (C, L) signals; load digits with image=True or mnist1d with "
        "channels=True",
    )
    _no_tokens("cnn", vocab_size)
    _positive("cnn", width=width, depth=depth)
    two_d = len(shape) == 3
    conv, bn, pool, gap = (
        (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d) if two_d
        else (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
    )
    layers: list[nn.Module] = []
    c_in, size = shape[0], min(shape[1:])
    for i in range(int(depth)):
        c_out = _scaled(width * 2**i)
        layers += [conv(c_in, c_out, 3, padding=1, bias=not batchnorm)]
        layers += [bn(c_out)] if batchnorm else []
        layers += [nn.ReLU()]
        if size >= 2:
            layers.append(pool(2))
            size //= 2
        c_in = c_out
    layers += [gap(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


# -- ResNets -----------------------------------------------------------------------------------


class _PadShortcut(nn.Module):
    """He et al.'s option A: subsample by ``stride`` and append zero channels (no parameters)."""

    def __init__(self, extra: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU: (N, c_in, H, W) -> (N, c_out,
    H/stride, W/stride).

    ``shortcut=False`` drops the skip connection (Li et al. 2018's ResNet-NS). When the shape
    changes the shortcut is a 1x1 conv + BN projection (``option="B"``) or zero padding
    (``option="A"``); otherwise it is the identity.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, *, shortcut: bool = True,
        option: str = "B", batchnorm: bool = True,
    ):
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else nn.Identity
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = norm(c_out)
        self.shortcut: nn.Module | None = None
        if shortcut:
            if stride == 1 and c_in == c_out:
                self.shortcut = nn.Identity()
            elif option == "A" and c_out >= c_in:
                self.shortcut = _PadShortcut(c_out - c_in, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=not batchnorm), norm(c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU (no max-pool), stages of basic blocks (the first at stride 1, the
    others at stride 2), global average pooling, Linear: (N, C, H, W) -> (N, num_classes)."""

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int],
        blocks: Sequence[int], *, shortcut: bool = True, option: str = "B",
        batchnorm: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(widths[0]) if batchnorm else nn.Identity()
        c_in = widths[0]
        for i, (c, n) in enumerate(zip(widths, blocks)):
            stage = [
                BasicBlock(c_in if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1,
                           shortcut=shortcut, option=option, batchnorm=batchnorm)
                for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            c_in = c
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet_options(model, input_shape, vocab_size, width, option):
    shape = _need_shape(model, input_shape, (3,), "(C, H, W) images; load digits with image=True")
    _no_tokens(model, vocab_size)
    _positive(model, width=width)
    if option not in ("A", "B"):
        raise LossAtlasError(
            f"option={option!r} for model {model!r} must be 'A' (zero-padding shortcut) or 'B' "
            "(1x1 conv projection)."
        )
    return shape


def _cifar_resnet(n: int) -> Callable[..., nn.Module]:
    model = f"resnet{6 * n + 2}"

    def factory(
        *,
        input_shape: Shape | None = None,
        num_classes: int = 10,
        width: float = 1,
        shortcut: bool = True,
        option: str = "B",
        batchnorm: bool = True,
        vocab_size: int | None = None,
    ) -> nn.Module:
        shape = _resnet_options(model, input_shape, vocab_size, width, option)
        widths = [_scaled(c * width) for c in (16, 32, 64)]
        return ResNet(shape[0], num_classes, widths, [n] * 3, shortcut=shortcut, option=option,
                      batchnorm=batchnorm)

    factory.__name__ = model
    factory.__doc__ = (
        f"He et al. 2016's CIFAR {model}: 3 stages of {n} basic blocks with 16/32/64 channels "
        "times ``width``, BatchNorm. ``option='B'`` (default) projects with a 1x1 conv + BN where "
        "the shape changes, as in Li et al. 2018's code; ``option='A'`` zero-pads (the paper's "
        "0.27M-parameter ResNet-20). ``shortcut=False``: the -NS net without skips."
    )
    return factory


def resnet18(
    *,
    input_shape: Shape | None = None,
    num_classes: int = 10,
    width: int = 64,
    shortcut: bool = True,
    option: str = "B",
    batchnorm: bool = True,
    vocab_size: int | None = None,
) -> nn.Module:
    """ResNet-18 with channel widths ``k, 2k, 4k, 8k`` (``width=k``, 64 is the usual net,
    11.2M parameters on CIFAR-10), 2 blocks a stage, CIFAR stem: conv3x3, no max-pool.
    Yang et al. 2021 vary ``k`` as the load-like parameter."""
    shape = _resnet_options("resnet18", input_shape, vocab_size, width, option)
    widths = [_scaled(width * m) for m in (1, 2, 4, 8)]
    return ResNet(shape[0], num_classes, widths, [2, 2, 2, 2], shortcut=shortcut, option=option,
                  batchnorm=batchnorm)


# -- VGG ---------------------------------------------------------------------------------------

_VGG = {
    "vgg9": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
}


def _vgg(model: str) -> Callable[..., nn.Module]:
    def factory(
        *,
        input_shape: Shape | None = None,
        num_classes: int = 10,
        width: float = 64,
        batchnorm: bool = True,
        vocab_size: int | None = None,
    ) -> nn.Module:
        shape = _need_shape(
            model, input_shape, (3,), "(C, H, W) images; load digits with image=True"
        )
        _no_tokens(model, vocab_size)
        _positive(model, width=width)
        layers: list[nn.Module] = []
        c_in, h, w = shape
        for v in _VGG[model]:
            if v == "M":
                if min(h, w) >= 2:  # small inputs: stop pooling at 1x1
                    layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                    h, w = -(-h // 2), -(-w // 2)
                continue
            c = _scaled(v * width / 64)
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=not batchnorm)]
            layers += [nn.BatchNorm2d(c)] if batchnorm else []
            layers += [nn.ReLU()]
            c_in = c
        layers.append(nn.Flatten())
        if model == "vgg9":  # Li et al.: Linear(c·h·w, c) + BN + ReLU, then the classifier
            layers += [nn.Linear(c_in * h * w, c_in)]
            layers += [nn.BatchNorm1d(c_in)] if batchnorm else []
            layers += [nn.ReLU(), nn.Linear(c_in, num_classes)]
        else:
            layers.append(nn.Linear(c_in * h * w, num_classes))
        return nn.Sequential(*layers)

    factory.__name__ = model
    factory.__doc__ = (
        f"{model.upper()} for CIFAR, channel counts scaled by ``width/64`` (64: the paper's net), "
        "conv3x3 + BatchNorm (``batchnorm=False`` drops it) + ReLU, max-pool 2 (skipped once the "
        "map is 1x1)." + (" Li et al. 2018's VGG-9: 7 convs, then Linear(256·4·4, 256) + BN + "
                          "ReLU + Linear(num_classes)." if model == "vgg9" else "")
    )
    return factory


# -- Transformer -------------------------------------------------------------------------------


class EncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without the fused fast path, attention computed explicitly.

    PyTorch's fused kernels (the encoder fast path, scaled_dot_product_attention on CPU) have no
    forward-mode derivative, so ``torch.func.jvp`` (forward-over-reverse Hessian-vector
    products) would fail; this layer runs the same parameters through plain ops instead.
    (N, L, width) -> (N, L, width).
    """

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        # need_weights=True selects MultiheadAttention's explicit softmax(QK^T/sqrt(d))V path
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=True)[0]
        return self.dropout1(x)


class TokenTransformer(nn.Module):
    """Token embedding + learned positions, a Transformer encoder (batch_first), mean pooling over
    the sequence, LayerNorm, Linear: (N, L) int64 tokens -> (N, num_classes)."""

    def __init__(
        self, vocab_size: int, seq_len: int, num_classes: int, *, width: int = 64,
        depth: int = 2, heads: int = 4, ff: int | None = None, dropout: float = 0.0,
        activation: str = "gelu",
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq_len, width))
        layer = EncoderLayer(
            width, heads, ff or 2 * width, dropout, activation=activation, batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise LossAtlasError(
                f"the transformer takes int64 token ids, got {x.dtype} input; pass token "
                "sequences such as lossatlas.batteries.datasets.load('tokens')."
            )
        h = self.embed(x) + self.pos[:, : x.shape[1]]
        return self.head(self.norm(self.encoder(h).mean(dim=1)))


def transformer(
    *,
    input_shape: Shape | None = None,
    num_classes: int = 10,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    ff: int | None = None,
    dropout: float = 0.0,
    activation: str = "gelu",
) -> nn.Module:
    """A small pre-LN Transformer encoder classifier for ``(L,)`` token sequences.

    ``vocab_size`` and ``seq_len`` (= ``input_shape[0]``) come from a token dataset or are given;
    ``dropout`` defaults to 0 so that evaluation is deterministic even in train mode; the
    feed-forward ``activation`` ("gelu" or "relu") defaults to the smooth GELU.
    """
    if vocab_size is None:
        raise LossAtlasError(
            "vocab_size is required for model 'transformer', which reads integer tokens; pass "
            "dataset= a token dataset (e.g. load('tokens')) or vocab_size= and seq_len=."
        )
    if input_shape is not None:
        shape = _need_shape("transformer", input_shape, (1,), "(L,) token sequences")
        if seq_len is not None and seq_len != shape[0]:
            raise LossAtlasError(
                f"seq_len={seq_len} differs from input_shape={shape}; pass one of them."
            )
        seq_len = shape[0]
    if seq_len is None:
        raise LossAtlasError(
            "seq_len is required for model 'transformer'; pass seq_len=, input_shape=(L,) or "
            "dataset=."
        )
    _positive("transformer", vocab_size=vocab_size, seq_len=seq_len, width=width, depth=depth,
              heads=heads)
    if width % heads:
        raise LossAtlasError(
            f"width={width} for model 'transformer' must be a multiple of heads={heads}."
        )
    if activation not in ("gelu", "relu"):
        raise LossAtlasError(
            f"activation={activation!r} for model 'transformer' must be 'gelu' or 'relu'."
        )
    if not 0.0 <= dropout < 1.0:
        raise LossAtlasError(f"dropout={dropout!r} for model 'transformer' must be in [0, 1).")
    return TokenTransformer(int(vocab_size), int(seq_len), num_classes, width=int(width),
                            depth=int(depth), heads=int(heads), ff=ff, dropout=dropout,
                            activation=activation)


for _name, _factory in {
    "mlp": mlp,
    "cnn": cnn,
    **{f"resnet{6 * n + 2}": _cifar_resnet(n) for n in (3, 5, 9, 18)},
    "resnet18": resnet18,
    "vgg9": _vgg("vgg9"),
    "vgg11": _vgg("vgg11"),
    "transformer": transformer,
}.items():
    register(_name, _factory)
for _name in ("resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "vgg9", "vgg11"):
    _DEFAULT_SHAPE[_name] = (3, 32, 32)
