"""``MedCLIPEstimator``: MedCLIP as an ART classifier (zero-shot over class prompts) that can also train unpaired.

ART attacks and detectors see an ordinary image classifier: pixel-space images in [0, 1] in, class
probabilities (or, with ``output="logits"``, logits) out. The class prompts live inside the estimator; MedCLIP's
normalisation happens inside too, so ART's own ``preprocessing`` stays off (``None``) and nothing is normalised twice.

``est.model`` stays the ``MedCLIPModel`` (artmed trains, saves, prunes and fine-tunes it, and a pixel-only forward
would lose the text encoder), so it is not a pixel -> class forward. ART code that calls ``estimator.model(x)`` or
``estimator._model(x)`` is written for ``PyTorchClassifier`` (APGD/ACG with an explicit ``loss_type``, the FBF, AWP,
TRADES and OAAT trainers, which also need its optimizer) or needs kornia (CompositeAdversarialAttackPyTorch); for those,
wrap ``est.classifier_module`` (pixels -> this estimator's class outputs, sharing its model, prompts fixed) in a
``PyTorchClassifier``. ART's other PyTorch attacks go through ``_predict_framework``, ``compute_loss``,
``loss_gradient`` and ``class_gradient``, all implemented here.
"""

from __future__ import annotations

import copy
import os
import warnings
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.pytorch import PyTorchEstimator

from artmed.constants import CHEXPERT_LABELS, IMAGE_SIZE, NUM_LABELS
from artmed.device import resolve_device
from artmed.inputs import (
    PIXEL_TOLERANCE,
    BatchSource,
    Images,
    as_images,
    check_batch_size,
    check_image_array,
    check_label_matrix,
    check_texts,
    normalize_pixels,
    num_images,
)
from artmed.loader import check_num_workers, image_batches
from artmed.prompts import ENSEMBLES, PromptBank, check_prompts, encode_sentences
from artmed.training import train_unpaired

if TYPE_CHECKING:
    from typing import Protocol

    class _Verbs(Protocol):
        """What ``_UnfilteredVerbs`` uses of the ``MedCLIPEstimator`` it is mixed into."""

        amp: bool
        num_workers: int
        tokenizer: Any
        preprocessing_operations: list[Any]
        _bank: PromptBank

        @property
        def model(self) -> torch.nn.Module: ...
        @property
        def input_shape(self) -> tuple[int, int, int]: ...
        @property
        def device(self) -> torch.device: ...
        def _outputs(self, pixels: torch.Tensor) -> torch.Tensor: ...
        def _map_images(
            self,
            x: Any,
            batch_size: int | None,
            fn: Callable[[torch.Tensor], torch.Tensor],
            training_mode: bool = False,
        ) -> np.ndarray: ...
        def _apply_postprocessing(self, preds: np.ndarray, fit: bool) -> np.ndarray: ...
        def _apply_preprocessing(self, x: Any, y: Any, fit: bool = False, no_grad: bool = True) -> tuple[Any, Any]: ...
        def _resolve_batch_size(self, batch_size: int | None) -> int: ...
        def _training_texts(self, texts: Any, text_labels: Any) -> tuple[Any, Any]: ...
        def _training_labels(self, y: Any, n: int) -> np.ndarray: ...
        def _images(self, x: Any) -> Images: ...
        def _pixels(self, x: Any) -> np.ndarray: ...


LAYERS: dict[str, str] = {
    "vision_last_stage": "last_stage",
    "image_embedding": "embedding",
    "image_pooled": "pooled",
}
"""Layer names offered to ``get_activations`` -> keys of ``MedCLIPModel.image_features``. ART's poison detectors
analyse the last one listed (the pooled features before the projection)."""


OUTPUTS: tuple[str, ...] = ("probabilities", "logits")
"""What ``predict`` returns and ``class_gradient`` differentiates: softmax probabilities or the zero-shot logits."""
DECISIONS: tuple[str, ...] = ("argmax", "released_sigmoid")
"""How ``predict_classes`` turns zero-shot logits into a class: their ``argmax`` (artmed's scoring: of the softmax
probabilities), or as the
released ``medclip/evaluator.py`` does: a two-class task takes ``argmax(sigmoid(logits))`` in float32, where both
sigmoids round to 1.0 above a logit of ~16.6 (MedCLIP's logits reach exp(logit_scale) = 100) and the tie goes to
class 0; a task of more classes takes ``argmax(logits)``."""
CLASS_ALIASES: dict[str, str] = {"normal": "No Finding", "covid": "Pneumonia", "covid-19": "Pneumonia"}
"""Task class names (lower case) that are not CheXpert names -> the CheXpert label ``fit`` trains them as, as
``artmed.data.adapt_medclip.task_labels`` labels those tasks' images."""
CLIP_WARNING = (
    "images outside [0, 1] were clipped to [0, 1] (MedCLIP normalisation happens inside the estimator: "
    "pass pixel values in [0, 1], e.g. 8-bit images divided by 255)"
)


def decide(logits: np.ndarray, decision: str = "argmax") -> np.ndarray:
    """The class (N,) int64 of each row of zero-shot logits (N, K) under ``decision`` (see ``DECISIONS``); the
    ``released_sigmoid`` rule computes as ``medclip/evaluator.py`` does (``torch.tensor(pred).sigmoid()`` in float32,
    then ``np.argmax``, first maximum on ties)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    logits = np.asarray(logits, dtype=np.float32)
    if decision == "released_sigmoid" and logits.shape[1] == 2:
        return np.argmax(torch.from_numpy(logits).sigmoid().numpy(), axis=1).astype(np.int64)
    return logits.argmax(axis=1).astype(np.int64)


def class_label_vectors(classes: Sequence[str]) -> np.ndarray:
    """(K, 14) float32 one-hot CheXpert label vectors of task classes named after a CheXpert label (any case) or an
    alias in ``CLASS_ALIASES``; ValueError naming every class without a counterpart."""
    names = {label.lower(): label for label in CHEXPERT_LABELS} | CLASS_ALIASES
    vectors = np.zeros((len(classes), NUM_LABELS), dtype=np.float32)
    unknown = []
    for k, name in enumerate(classes):
        label = names.get(str(name).strip().lower())
        if label is None:
            unknown.append(name)
        else:
            vectors[k, CHEXPERT_LABELS.index(label)] = 1.0
    if unknown:
        raise ValueError(
            f"class(es) {unknown} have no CheXpert counterpart, so class labels cannot be turned into "
            f"training labels; name the classes after CheXpert labels {list(CHEXPERT_LABELS)} or "
            f"{sorted(CLASS_ALIASES)}, or pass y as (N, 14) CheXpert label vectors"
        )
    return vectors


class ClassOutputs(torch.nn.Module):
    """Pixel-space images (N, C, H, W) -> an estimator's class outputs (its ``output`` mode), differentiable.

    The estimator's MedCLIP model is a submodule, so ``parameters()``, ``train()`` and ``zero_grad()`` act on it; the
    prompt embeddings are constants (no gradient reaches the text encoder through this module).
    """

    def __init__(self, estimator: MedCLIPEstimator) -> None:
        super().__init__()
        self.medclip = estimator.model
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class outputs (N, K) of pixel tensors on the estimator's device."""
        return self.estimator._outputs(x)


class _UnfilteredVerbs(ABC):  # noqa: B024 (an ABC for ART's re-classing, see below; nothing abstract)
    """``predict`` and ``fit`` defined outside ``ClassifierMixin``'s metaclass.

    That metaclass wraps verbs defined in a class body with ``np.array(x)``, which would read a whole lazy
    ``ImageSet`` into memory; the verbs here take arrays *or* ImageSets and convert arrays themselves. The ``ABC``
    base, as ART's own mixins have, lets ART's STRIP re-class an estimator (with a plain ``object`` base, its
    ``__class__`` assignment fails: "object layout differs").
    """

    def predict(
        self: _Verbs, x: Any, batch_size: int | None = None, training_mode: bool = False, **kwargs: Any
    ) -> np.ndarray:
        """Zero-shot class outputs (N, K) float32: softmax probabilities of the prompt-ensemble scaled cosine logits,
        or those logits with ``output="logits"``."""
        preds = self._map_images(x, batch_size, self._outputs, training_mode)
        return self._apply_postprocessing(preds=preds, fit=False)

    def fit(
        self: _Verbs,
        x: Any,
        y: Any = None,
        texts: Any = None,
        text_labels: Any = None,
        batch_size: int | None = None,
        nb_epochs: int = 1,
        steps: int | None = None,
        **kwargs: Any,
    ) -> dict[str, list[float]]:
        """Unpaired MedCLIP training on images ``x`` with labels ``y`` and sentences with (M, 14) labels.

        ``y``: (N, 14) CheXpert label vectors, or ART's label space, (N,) class ids or (N, K) one-hot/probabilities
        (a row's argmax), turned into CheXpert vectors by ``class_label_vectors(classes)``; for a 14-class task,
        (N, 14) means CheXpert vectors. ``x`` may be an ImageSet (then ``y`` defaults to its labels). The sentences are
        ``texts`` (a list with ``text_labels``, or a TextPool), else the estimator's pool (``set_texts``). Preprocessing
        defences with ``apply_fit=True`` are applied to array ``x`` first. Other keyword arguments go to
        ``artmed.training.train_unpaired`` (``lr``, ``weight_decay``, ``warmup``, ``max_grad_norm``, ``seed``,
        ``text_batch_size``, ``train_vision``, ``train_text``, ``amp``, ``verbose``, and the released protocol's
        ``eda`` and ``report_sampler``). Returns the per-step history
        ``{"loss": [...], "lr": [...]}``. Label values are CheXpert's 1 (positive), 0 (negative or blank) and -1
        (uncertain); others raise ValueError.
        """
        batch_size = self._resolve_batch_size(batch_size)
        sentences, text_labels = self._training_texts(texts, text_labels)
        images = self._images(x)
        if y is None:
            if not hasattr(x, "labels"):
                raise ValueError("fit needs y: (N, 14) CheXpert label vectors, (N,) class ids or (N, K) one-hot")
            y = x.labels
        if any(op.apply_fit for op in self.preprocessing_operations):
            if not isinstance(images, np.ndarray):
                raise ValueError("preprocessing defences with apply_fit=True need x as an array, not an ImageSet")
            images, y = self._apply_preprocessing(images, y, fit=True)
            images = self._pixels(images)
        kwargs.setdefault("amp", self.amp)
        kwargs.setdefault("num_workers", self.num_workers)
        history = train_unpaired(
            self.model,
            self.tokenizer,
            images,
            self._training_labels(y, num_images(images)),
            sentences,
            text_labels,
            input_shape=self.input_shape,
            device=self.device,
            batch_size=batch_size,
            nb_epochs=nb_epochs,
            steps=steps,
            **kwargs,
        )
        self.model.eval()
        self._bank.clear()
        return history


class MedCLIPEstimator(_UnfilteredVerbs, ClassGradientsMixin, ClassifierMixin, PyTorchEstimator):
    """An ART classifier around a ``MedCLIPModel``: zero-shot prediction over ``prompts``, gradients, activations.

    Images are float32 (N, 1|3, H, W) in [0, 1] with ``(H, W) == input_shape[1:]``; ``classes`` = ``list(prompts)``.
    Image arrays outside [0, 1] are clipped (with a warning beyond rounding), NaN or inf raise; ImageSets must be in
    range. ``output`` ("probabilities" or "logits") is what ``predict`` returns and ``class_gradient`` differentiates;
    the loss (``loss_gradient``, ``compute_loss``) is the cross-entropy of the logits in both modes. Attacks that
    expect logits (DeepFool, C&W, APGD, UniversalPerturbation's default, ``clever_u``) need ``output="logits"``;
    STRIP needs probabilities. ``texts``/``text_labels`` (or ``set_texts``) give ``fit`` its text side, so ART's
    trainers and refitting defences can call ``fit(x, y)`` with class labels.
    ``amp`` uses bf16 autocast for inference and training on CUDA (never on CPU; gradients are float32).
    ``num_workers`` processes read image batches ahead of the model (``artmed.loader``; through pinned memory on
    CUDA) in ``fit`` and every batched image verb; 0 reads them in the calling process.
    ``ensemble`` combines a class's prompt scores ``exp(logit_scale) * cos(image, prompt)``: "mean" (default) or "max"
    (MedCLIP's ``PromptClassifier(ensemble=False)``). ``decision`` (one of ``DECISIONS``) is the rule
    ``predict_classes`` (and so artmed's CA/ASR scoring) applies; ``predict`` is unaffected.
    """

    estimator_params = (
        PyTorchEstimator.estimator_params
        + ClassifierMixin.estimator_params
        + ["tokenizer", "prompts", "input_shape", "batch_size", "amp", "num_workers", "output", "ensemble", "decision"]
    )

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        prompts: Mapping[str, list[str]],
        input_shape: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE),
        device: str | torch.device = "auto",
        batch_size: int = 64,
        clip_values: tuple[float, float] = (0.0, 1.0),
        amp: bool = True,
        num_workers: int = 0,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        output: str = "probabilities",
        texts: Any = None,
        text_labels: Any = None,
        ensemble: str = "mean",
        decision: str = "argmax",
    ) -> None:
        resolved = resolve_device(device)
        if resolved.type == "cuda" and resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        super().__init__(
            model=model,
            clip_values=clip_values,
            channels_first=True,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
            preprocessing=None,
            device_type="gpu" if resolved.type == "cuda" else "cpu",
        )
        self._device = resolved
        self._input_shape = input_shape
        self.batch_size = batch_size
        self.amp = amp
        self.num_workers = num_workers
        self.output = output
        self.ensemble = ensemble
        self.decision = decision
        self._check_params()
        self.tokenizer = tokenizer
        self._bank = PromptBank(prompts)
        self.nb_classes = len(self._bank.prompts)
        self._layer_names = list(LAYERS)
        self._texts: list[str] | None = None
        self._text_labels: np.ndarray | None = None
        if texts is not None:
            self.set_texts(texts, text_labels)
        elif text_labels is not None:
            raise ValueError("text_labels given without texts")
        self._model.to(self._device).eval()

    # ------------------------------------------------------------------ properties
    def _check_params(self) -> None:
        """ART's checks plus this estimator's settings (also run by ``set_params``): ``input_shape`` (1|3, H, W),
        ``batch_size`` a positive integer, ``amp`` a bool, ``num_workers`` a worker count, ``output`` in ``OUTPUTS``,
        ``ensemble`` in ``artmed.prompts.ENSEMBLES``, ``decision`` in ``DECISIONS``."""
        super()._check_params()
        self._input_shape = self._check_input_shape(self._input_shape)
        self.batch_size = check_batch_size(self.batch_size)
        if not isinstance(self.amp, (bool, np.bool_)):
            raise ValueError(f"amp must be True or False, got {self.amp!r}")
        self.amp = bool(self.amp)
        self.num_workers = check_num_workers(self.num_workers)
        if not isinstance(self.output, str) or self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if not isinstance(self.ensemble, str) or self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if not isinstance(self.decision, str) or self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")

    def set_params(self, **kwargs: Any) -> None:
        """ART's ``set_params``, all or nothing: when ``_check_params`` refuses a value, every setting keeps its
        previous value (ART would leave the refused one set)."""
        state, operations = dict(self.__dict__), list(self.preprocessing_operations)
        try:
            super().set_params(**kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            self.preprocessing_operations[:] = operations
            raise

    @staticmethod
    def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError) as err:
            raise ValueError(f"input_shape must be (1|3, H, W), got {input_shape!r}") from err
        if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
            raise ValueError(f"input_shape must be (1|3, H, W), got {tuple(input_shape)}")
        return shape

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input image, (C, H, W)."""
        return self._input_shape

    @property
    def device(self) -> torch.device:
        """The torch device the model runs on."""
        return self._device

    @property
    def prompts(self) -> dict[str, list[str]]:
        """Class name -> prompt sentences (a copy); setting it switches the zero-shot task."""
        return {k: list(v) for k, v in self._bank.prompts.items()}

    @prompts.setter
    def prompts(self, prompts: Mapping[str, list[str]]) -> None:
        bank = PromptBank(prompts)
        self._bank = bank
        self.nb_classes = len(bank.prompts)

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the prediction columns."""
        return self._bank.classes

    @property
    def texts(self) -> list[str] | None:
        """The text pool's sentences (a copy), or None when no pool is set."""
        return None if self._texts is None else list(self._texts)

    @property
    def text_labels(self) -> np.ndarray | None:
        """The text pool's (M, 14) CheXpert labels (a copy), or None when no pool is set."""
        return None if self._text_labels is None else self._text_labels.copy()

    @property
    def classifier_module(self) -> ClassOutputs:
        """A ``torch.nn.Module`` from pixel tensors to this estimator's class outputs, sharing its model."""
        return ClassOutputs(self)

    def set_texts(self, texts: Any, text_labels: Any = None) -> None:
        """Hold ``texts`` (sentences, or a TextPool) and their (M, 14) CheXpert ``text_labels`` (default: the pool's)
        as the text side of ``fit``."""
        if text_labels is None:
            if not hasattr(texts, "labels"):
                raise ValueError("set_texts needs text_labels, the (M, 14) CheXpert label vectors of texts")
            text_labels = texts.labels
        sentences = check_texts(texts.sentences if hasattr(texts, "sentences") else texts)
        self._text_labels = check_label_matrix(text_labels, len(sentences), "text_labels")
        self._texts = sentences

    # ------------------------------------------------------------------ internals
    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self._device.type, dtype=torch.bfloat16, enabled=self.amp and self._device.type == "cuda"
        )

    def _text_matrix(self) -> torch.Tensor:
        return self._bank.matrix(self._model, self.tokenizer, self._device, self.batch_size, self.amp)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prompt-ensemble zero-shot logits (B, K) of pixel-space images on the device (similarities in float32)."""
        image = self._model.encode_image(normalize_pixels(pixels)).float()
        with torch.autocast(device_type=self._device.type, enabled=False):
            return self._bank.logits(
                image,
                self._model.scale().float(),
                self._model,
                self.tokenizer,
                self._device,
                self.batch_size,
                self.amp,
                ensemble=self.ensemble,
            )

    def _outputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """What ``predict`` returns for pixel-space images on the device: logits, or their softmax."""
        logits = self._logits(pixels)
        return logits if self.output == "logits" else torch.softmax(logits, dim=1)

    def _pixels(self, x: Any) -> np.ndarray:
        """``x`` as checked float32 (N, C, H, W) pixels, clipped to [0, 1]: ART attacks may overshoot (e.g.
        UniversalPerturbation adds unclipped noise). Beyond rounding (``PIXEL_TOLERANCE``) that warns, once per
        call; NaN or inf raise ValueError."""
        arr = np.asarray(x, dtype=np.float32)
        if arr.size:
            lo, hi = float(arr.min()), float(arr.max())
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError("images hold NaN or inf values (pixel values must be in [0, 1])")
            if lo < -PIXEL_TOLERANCE or hi > 1.0 + PIXEL_TOLERANCE:
                warnings.warn(CLIP_WARNING, stacklevel=2)
            if lo < 0.0 or hi > 1.0:
                arr = np.clip(arr, 0.0, 1.0)
        return check_image_array(arr, self._input_shape)

    def _images(self, x: Any) -> Images:
        """A batch source as is (checked by ``as_images``, which refuses pixels outside [0, 1]), else ``_pixels(x)``."""
        if isinstance(x, BatchSource) and not isinstance(x, np.ndarray):
            return as_images(x, self._input_shape)
        return self._pixels(x)

    def _training_texts(self, texts: Any, text_labels: Any) -> tuple[Any, Any]:
        """``fit``'s sentences and their labels: the given ``texts`` (a TextPool's labels by default), else the pool."""
        if texts is None:
            if text_labels is not None:
                raise ValueError("fit got text_labels without texts")
            if self._texts is None:
                raise ValueError(
                    "fit needs texts: set the estimator's text pool once with set_texts(texts, "
                    "text_labels), or pass texts= and text_labels= to fit"
                )
            return self._texts, self._text_labels
        if text_labels is None:
            if not hasattr(texts, "labels"):
                raise ValueError("fit needs text_labels, the (M, 14) label vectors of texts")
            text_labels = texts.labels
        return (texts.sentences if hasattr(texts, "sentences") else texts), text_labels

    def _training_labels(self, y: Any, n: int) -> np.ndarray:
        """``fit``'s ``y`` as CheXpert label vectors: (N, 14) as given; class ids or one-hot/probabilities through
        ``class_label_vectors(classes)``."""
        arr = np.asarray(y)
        if arr.ndim == 2 and arr.shape[1] == NUM_LABELS:
            return arr
        if not (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == self.nb_classes)):
            raise ValueError(
                f"y must be (N, 14) CheXpert label vectors, (N,) class ids or (N, {self.nb_classes}) "
                f"one-hot/probabilities, got shape {arr.shape}"
            )
        return class_label_vectors(self.classes)[self._class_indices(arr, n)]

    def _framework(self, x: torch.Tensor, y: Any, forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Any, Any]:
        """``forward`` of a pixel tensor with its graph, after framework preprocessing (no range check or clipping)."""
        x_pre, y_pre = self._apply_preprocessing(x, y=y, fit=False, no_grad=False)
        self._model.eval()
        return forward(x_pre.to(self._device)), y_pre

    def _resolve_batch_size(self, batch_size: int | None) -> int:
        """``batch_size`` checked (a positive integer), or the estimator's own when None."""
        return self.batch_size if batch_size is None else check_batch_size(batch_size)

    def _map_images(
        self, x: Any, batch_size: int | None, fn: Callable[[torch.Tensor], torch.Tensor], training_mode: bool = False
    ) -> np.ndarray:
        """Apply ``fn`` (pixel tensor -> tensor) batch-wise without gradients; concatenate as float32 numpy."""
        bs = self._resolve_batch_size(batch_size)
        images = self._images(x)
        n = num_images(images)
        if n == 0:
            raise ValueError("no images given (x is empty)")
        batches = [np.arange(start, min(start + bs, n)) for start in range(0, n, bs)]
        self._model.train(training_mode)
        outputs = []
        with torch.no_grad():
            for pixels in image_batches(images, batches, self._input_shape, self._device, self.num_workers):
                if self.preprocessing_operations:
                    batch, _ = self._apply_preprocessing(pixels.cpu().numpy(), y=None, fit=False)
                    pixels = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
                with self._autocast():
                    out = fn(pixels)
                outputs.append(out.float().cpu().numpy())
        self._model.eval()
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _layer_key(self, layer: int | str) -> str:
        names = self._layer_names
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and -len(names) <= layer < len(names):
            return LAYERS[names[layer]]
        if isinstance(layer, str) and layer in LAYERS:
            return LAYERS[layer]
        raise ValueError(f"unknown layer {layer!r}; layers are {names} (or indices 0..{len(names) - 1})")

    def _class_indices(self, y: Any, n: int) -> np.ndarray:
        arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if arr.ndim == 2:
            if arr.shape != (n, self.nb_classes):
                raise ValueError(f"one-hot y must have shape ({n}, {self.nb_classes}), got {arr.shape}")
            return arr.argmax(axis=1).astype(np.int64)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"y must be ({n},) class indices or ({n}, {self.nb_classes}) one-hot, got {arr.shape}")
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= self.nb_classes):
            raise ValueError(f"class indices in y must be integers in [0, {self.nb_classes - 1}]")
        return arr.astype(np.int64)

    def _input_gradients(
        self,
        x: np.ndarray,
        forward: Callable[[torch.Tensor], torch.Tensor],
        objectives: Callable[[torch.Tensor, slice], list[torch.Tensor]],
        n_objectives: int,
        batch_size: int | None,
        training_mode: bool,
    ) -> np.ndarray:
        """Gradients (n_objectives, N, C, H, W) w.r.t. checked pixels ``x`` of scalar objectives of ``forward``.

        ``objectives(outputs, rows)`` gets a batch's outputs and its slice of the whole input. ART preprocessing
        defences are differentiated through when they are torch-based, else via their gradient estimates.
        """
        bs = self._resolve_batch_size(batch_size)
        grads = np.empty((n_objectives, *x.shape), dtype=np.float32)
        self._model.train(training_mode)
        for start in range(0, x.shape[0], bs):
            rows = slice(start, min(start + bs, x.shape[0]))
            x_batch = x[rows]
            if self.all_framework_preprocessing:
                x_leaf = torch.tensor(x_batch, device=self._device, requires_grad=True)
                x_in, _ = self._apply_preprocessing(x_leaf, y=None, fit=False, no_grad=False)
            else:
                x_pre, _ = self._apply_preprocessing(x_batch, y=None, fit=False, no_grad=True)
                x_leaf = torch.tensor(x_pre, device=self._device, requires_grad=True)
                x_in = x_leaf
            scalars = objectives(forward(x_in), rows)
            for k, scalar in enumerate(scalars):
                (g,) = torch.autograd.grad(scalar, x_leaf, retain_graph=k < len(scalars) - 1)
                grad = g.detach().cpu().numpy()
                if not self.all_framework_preprocessing:
                    grad = self._apply_preprocessing_gradient(x_batch, grad)
                grads[k, rows] = grad
        self._model.eval()
        return grads

    # ------------------------------------------------------------------ ART interface
    def loss_gradient(
        self, x: np.ndarray, y: np.ndarray, training_mode: bool = False, batch_size: int | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Gradient w.r.t. pixel-space ``x`` of the mean cross-entropy of the zero-shot logits (``compute_loss``'s
        "mean"), in both output modes, as ART's PyTorchClassifier with ``CrossEntropyLoss``.

        ``y``: one-hot (N, K) or class indices (N,). Returns float32 of ``x``'s shape.
        """
        x = self._pixels(x)
        target = torch.from_numpy(self._class_indices(y, x.shape[0])).to(self._device)
        n = x.shape[0]

        def objective(logits: torch.Tensor, rows: slice) -> list[torch.Tensor]:
            return [F.cross_entropy(logits, target[rows], reduction="sum") / n]

        return self._input_gradients(x, self._logits, objective, 1, batch_size, training_mode)[0]

    def class_gradient(
        self,
        x: np.ndarray,
        label: int | list[int] | np.ndarray | None = None,
        training_mode: bool = False,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Gradients w.r.t. ``x`` of what ``predict`` returns (probabilities or logits, per ``output``).

        (N, K, C, H, W) for all classes; (N, 1, C, H, W) for ``label`` (one int or one index per sample).
        """
        x = self._pixels(x)
        n, k = x.shape[0], self.nb_classes
        if label is None:

            def objective(outputs: torch.Tensor, rows: slice) -> list[torch.Tensor]:
                return [outputs[:, c].sum() for c in range(k)]

            return np.swapaxes(self._input_gradients(x, self._outputs, objective, k, batch_size, training_mode), 0, 1)
        if isinstance(label, (int, np.integer)):
            labels = np.full(n, int(label))
        else:
            labels = np.asarray(label)
            if labels.shape != (n,):
                raise ValueError(f"label must be an int or {n} class indices, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"label values must be integers in [0, {k - 1}]")
        index = torch.from_numpy(labels.astype(np.int64)).to(self._device)

        def chosen(outputs: torch.Tensor, rows: slice) -> list[torch.Tensor]:
            return [outputs.gather(1, index[rows, None]).sum()]

        return np.swapaxes(self._input_gradients(x, self._outputs, chosen, 1, batch_size, training_mode), 0, 1)

    def compute_loss(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        reduction: str = "none",
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Cross-entropy of the zero-shot logits, the loss ``loss_gradient`` differentiates (ART's signature).

        ``y``: one-hot (N, K) or class indices (N,); ``reduction``: "none" (per image, (N,)), "mean" or "sum". A torch
        ``x`` gives a torch loss with its graph (framework preprocessing only; no range check), numpy gives numpy.
        """
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if isinstance(x, torch.Tensor):
            logits, _ = self._framework(x, None, self._logits)
        else:
            logits = torch.from_numpy(self._map_images(x, batch_size, self._logits))
        target = torch.from_numpy(self._class_indices(y, logits.shape[0])).to(logits.device)
        loss = F.cross_entropy(logits, target, reduction=reduction)
        return loss if isinstance(x, torch.Tensor) else loss.numpy()

    def _predict_framework(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """What ``predict`` returns, for a pixel tensor and with its graph, and ``y`` (ART's PyTorch attacks' hook)."""
        return self._framework(x, y, self._outputs)

    def get_activations(
        self, x: Any, layer: int | str, batch_size: int = 128, framework: bool = False
    ) -> np.ndarray | torch.Tensor:
        """Image features of ``layer`` (name or index into ``layer_names``): numpy, or a torch tensor with a graph."""
        bs = self._resolve_batch_size(batch_size)
        key = self._layer_key(layer)
        if framework:
            pixels = x if isinstance(x, torch.Tensor) else torch.from_numpy(self._pixels(x))
            return self._model.image_features(normalize_pixels(pixels.to(self._device)))[key]
        return self._map_images(x, bs, lambda pix: self._model.image_features(normalize_pixels(pix))[key])

    def clone_for_refitting(self) -> MedCLIPEstimator:
        """ART's refitting copy: the same architecture (model config), prompts, text pool and settings, with freshly
        initialised weights (from torch's global random state)."""
        fresh = type(self._model)(copy.deepcopy(self._model.config))
        return MedCLIPEstimator(fresh, self.tokenizer, self.prompts, **self._settings())

    # ------------------------------------------------------------------ artmed API
    def embed_images(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """L2-normalised image embeddings (N, D) float32 of pixel-space images (array or ImageSet)."""
        return self._map_images(x, batch_size, lambda pix: self._model.encode_image(normalize_pixels(pix)).float())

    def embed_texts(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """L2-normalised text embeddings (M, D) float32; the sentences are padded together, as one batch."""
        bs = self._resolve_batch_size(batch_size)
        self._model.eval()
        out = encode_sentences(self._model, self.tokenizer, check_texts(texts), self._device, bs, self.amp)
        return out.cpu().numpy()

    def zero_shot_logits(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """Prompt-ensemble logits (N, K): per class, the mean (``ensemble="max"``: the max) over its prompts of
        ``exp(logit_scale) * cos``."""
        return self._map_images(x, batch_size, self._logits)

    def predict_classes(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The predicted class (N,) int64 of each pixel-space image under ``decision``; a ValueError when a logit is
        NaN or infinite (argmax would pick class 0, which can be the attack's target)."""
        logits = self.zero_shot_logits(x, batch_size)
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():
            raise ValueError(f"the model's logits are NaN or infinite on {int(bad.sum())} of {len(bad)} images")
        return decide(logits, self.decision)

    def clear_cache(self) -> None:
        """Forget the cached prompt embeddings (they are also refreshed automatically when text weights change)."""
        self._bank.clear()

    def _settings(self) -> dict[str, Any]:
        return {
            "input_shape": self._input_shape,
            "device": self._device,
            "batch_size": self.batch_size,
            "clip_values": tuple(float(v) for v in np.asarray(self._clip_values).ravel()[:2]),
            "amp": self.amp,
            "num_workers": self.num_workers,
            "preprocessing_defences": self.preprocessing_defences,
            "postprocessing_defences": self.postprocessing_defences,
            "output": self.output,
            "texts": self._texts,
            "text_labels": self._text_labels,
            "ensemble": self.ensemble,
            "decision": self.decision,
        }

    def with_prompts(self, prompts: Mapping[str, list[str]]) -> MedCLIPEstimator:
        """A new estimator for another zero-shot task that shares this one's model (training one trains both)."""
        return MedCLIPEstimator(self._model, self.tokenizer, check_prompts(prompts), **self._settings())

    def clone(self) -> MedCLIPEstimator:
        """A deep copy with its own model (attacks and defences fine-tune copies, never the original)."""
        return MedCLIPEstimator(copy.deepcopy(self._model), self.tokenizer, self.prompts, **self._settings())

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write model weights, model config, tokenizer, prompts, settings and text pool as the folder ``directory``,
        atomically: a crash leaves the previous folder or none (see ``artmed.bundle.save_bundle``)."""
        from artmed.bundle import save_bundle

        save_bundle(self, directory)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device = "auto", **kwargs: Any
    ) -> MedCLIPEstimator:
        """An estimator saved with ``save``; ``kwargs`` override saved settings (e.g. ``batch_size``)."""
        from artmed.bundle import load_bundle

        return load_bundle(cls, directory, device=device, **kwargs)

    @classmethod
    def tiny(
        cls,
        prompts: Mapping[str, list[str]],
        image_size: int = 64,
        seed: int = 0,
        tokenizer: Any = None,
        model_overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> MedCLIPEstimator:
        """A seeded, freshly initialised tiny MedCLIP (small ResNet + 2-layer BERT) over the built-in vocabulary.

        ``model_overrides`` go to ``build_medclip`` (e.g. ``{"masked_mean": True}``); ``kwargs`` to the estimator.
        """
        from artmed.models import build_medclip, default_tokenizer

        tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_medclip("tiny", vocab_size=len(tokenizer), **dict(model_overrides or {}))
        return cls(model, tokenizer, prompts, input_shape=(1, image_size, image_size), **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        variant: str = "resnet50",
        tokenizer_dir: str | os.PathLike[str] | None = None,
        *,
        prompts: Mapping[str, list[str]],
        **kwargs: Any,
    ) -> MedCLIPEstimator:
        """A released MedCLIP ("resnet50" or "swin_tiny") from local weights and a local ``vocab.txt`` directory.

        ``tokenizer_dir`` defaults to ``path`` when that directory holds ``vocab.txt``. Input is (1, 224, 224).
        """
        from artmed.models import load_medclip, load_tokenizer

        if tokenizer_dir is None:
            if not (Path(path).is_dir() and (Path(path) / "vocab.txt").is_file()):
                raise ValueError(
                    f"no tokenizer_dir given and {str(path)!r} holds no vocab.txt; "
                    "pass the directory of the Bio_ClinicalBERT tokenizer"
                )
            tokenizer_dir = path
        check_prompts(prompts)
        return cls(load_medclip(path, variant=variant), load_tokenizer(tokenizer_dir), prompts, **kwargs)
