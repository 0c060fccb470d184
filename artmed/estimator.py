"""``MedCLIPEstimator``: MedCLIP as an ART classifier (zero-shot over class prompts) that can also train unpaired.

ART attacks and detectors see an ordinary image classifier: pixel-space images in [0, 1] in, class
probabilities out. The class prompts live inside the estimator; MedCLIP's normalisation happens inside too,
so ART's own ``preprocessing`` stays off (``None``) and nothing is normalised twice.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from art.estimators.classification.classifier import ClassGradientsMixin, ClassifierMixin
from art.estimators.pytorch import PyTorchEstimator

from artmed.constants import IMAGE_SIZE
from artmed.device import resolve_device
from artmed.inputs import as_images, check_batch_size, check_image_array, check_texts, normalize_pixels, num_images
from artmed.loader import check_num_workers, image_batches
from artmed.prompts import PromptBank, check_prompts, encode_sentences
from artmed.training import train_unpaired

LAYERS: dict[str, str] = {
    "vision_last_stage": "last_stage",
    "image_embedding": "embedding",
    "image_pooled": "pooled",
}
"""Layer names offered to ``get_activations`` -> keys of ``MedCLIPModel.image_features``. ART's poison detectors
analyse the last one listed (the pooled features before the projection)."""


class _UnfilteredVerbs:
    """``predict`` and ``fit`` defined outside ``ClassifierMixin``'s metaclass.

    That metaclass wraps verbs defined in a class body with ``np.array(x)``, which would read a whole lazy
    ``ImageSet`` into memory; the verbs here take arrays *or* ImageSets and convert arrays themselves.
    """

    def predict(self, x: Any, batch_size: int | None = None, training_mode: bool = False,
                **kwargs: Any) -> np.ndarray:
        """Zero-shot class probabilities (N, K) float32: softmax of the prompt-ensemble scaled cosine logits."""
        logits = self._map_images(x, batch_size, self._logits, training_mode)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy().astype(np.float32)
        return self._apply_postprocessing(preds=probs, fit=False)

    def fit(self, x: Any, y: Any = None, texts: Any = None, text_labels: Any = None, batch_size: int | None = None,
            nb_epochs: int = 1, steps: int | None = None, **kwargs: Any) -> dict[str, list[float]]:
        """Unpaired MedCLIP training on images ``x`` (labels ``y`` (N, 14)) and sentences ``texts`` (M, 14 labels).

        ``x`` may be an ImageSet (then ``y`` defaults to its labels), ``texts`` a TextPool (then ``text_labels``
        defaults to its labels). Other keyword arguments go to ``artmed.training.train_unpaired`` (``lr``,
        ``weight_decay``, ``warmup``, ``max_grad_norm``, ``seed``, ``text_batch_size``, ``train_vision``,
        ``train_text``, ``amp``, ``verbose``). Returns the per-step history ``{"loss": [...], "lr": [...]}``.
        Label values are CheXpert's 1 (positive), 0 (negative or blank) and -1 (uncertain); others raise ValueError.
        """
        batch_size = self._resolve_batch_size(batch_size)
        if y is None:
            if not hasattr(x, "labels"):
                raise ValueError("fit needs y, the (N, 14) image label vectors")
            y = x.labels
        if texts is None:
            raise ValueError("fit needs texts (a list of sentences or a TextPool) and their (M, 14) text_labels")
        if text_labels is None:
            if not hasattr(texts, "labels"):
                raise ValueError("fit needs text_labels, the (M, 14) label vectors of texts")
            text_labels = texts.labels
        sentences = texts.sentences if hasattr(texts, "sentences") else texts
        kwargs.setdefault("amp", self.amp)
        kwargs.setdefault("num_workers", self.num_workers)
        history = train_unpaired(
            self.model, self.tokenizer, x, y, sentences, text_labels,
            input_shape=self.input_shape, device=self.device,
            batch_size=batch_size, nb_epochs=nb_epochs, steps=steps, **kwargs,
        )
        self.model.eval()
        self._bank.clear()
        return history


class MedCLIPEstimator(_UnfilteredVerbs, ClassGradientsMixin, ClassifierMixin, PyTorchEstimator):
    """An ART classifier around a ``MedCLIPModel``: zero-shot prediction over ``prompts``, gradients, activations.

    Images are float32 (N, 1|3, H, W) in [0, 1] with ``(H, W) == input_shape[1:]``; ``classes`` = ``list(prompts)``.
    ``amp`` uses bf16 autocast for inference and training on CUDA (never on CPU; gradients are float32).
    ``num_workers`` processes read image batches ahead of the model (``artmed.loader``; through pinned memory on
    CUDA) in ``fit`` and every batched image verb; 0 reads them in the calling process.
    """

    estimator_params = (
        PyTorchEstimator.estimator_params
        + ClassifierMixin.estimator_params
        + ["tokenizer", "prompts", "input_shape", "batch_size", "amp", "num_workers"]
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
        self._check_params()
        self.tokenizer = tokenizer
        self._bank = PromptBank(prompts)
        self.nb_classes = len(self._bank.prompts)
        self._layer_names = list(LAYERS)
        self._model.to(self._device).eval()

    # ------------------------------------------------------------------ properties
    def _check_params(self) -> None:
        """ART's checks plus this estimator's settings (also run by ``set_params``): ``input_shape`` (1|3, H, W),
        ``batch_size`` a positive integer, ``amp`` a bool, ``num_workers`` a worker count."""
        super()._check_params()
        self._input_shape = self._check_input_shape(self._input_shape)
        self.batch_size = check_batch_size(self.batch_size)
        if not isinstance(self.amp, (bool, np.bool_)):
            raise ValueError(f"amp must be True or False, got {self.amp!r}")
        self.amp = bool(self.amp)
        self.num_workers = check_num_workers(self.num_workers)

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
        return shape  # type: ignore[return-value]

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

    # ------------------------------------------------------------------ internals
    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self._device.type, dtype=torch.bfloat16,
                              enabled=self.amp and self._device.type == "cuda")

    def _text_matrix(self) -> torch.Tensor:
        return self._bank.matrix(self._model, self.tokenizer, self._device, self.batch_size, self.amp)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Prompt-ensemble zero-shot logits (B, K) of pixel-space images on the device (similarities in float32)."""
        image = self._model.encode_image(normalize_pixels(pixels)).float()
        with torch.autocast(device_type=self._device.type, enabled=False):
            return self._model.scale().float() * image @ self._text_matrix().T

    def _resolve_batch_size(self, batch_size: int | None) -> int:
        """``batch_size`` checked (a positive integer), or the estimator's own when None."""
        return self.batch_size if batch_size is None else check_batch_size(batch_size)

    def _map_images(self, x: Any, batch_size: int | None, fn: Callable[[torch.Tensor], torch.Tensor],
                    training_mode: bool = False) -> np.ndarray:
        """Apply ``fn`` (pixel tensor -> tensor) batch-wise without gradients; concatenate as float32 numpy."""
        bs = self._resolve_batch_size(batch_size)
        images = as_images(x, self._input_shape)
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
        arr = np.asarray(y)
        if arr.ndim == 2:
            if arr.shape != (n, self.nb_classes):
                raise ValueError(f"one-hot y must have shape ({n}, {self.nb_classes}), got {arr.shape}")
            return arr.argmax(axis=1).astype(np.int64)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"y must be ({n},) class indices or ({n}, {self.nb_classes}) one-hot, got {arr.shape}")
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= self.nb_classes):
            raise ValueError(f"class indices in y must be integers in [0, {self.nb_classes - 1}]")
        return arr.astype(np.int64)

    def _input_gradients(self, x: Any, objectives: Callable[[torch.Tensor, slice], list[torch.Tensor]],
                         n_objectives: int, batch_size: int | None, training_mode: bool) -> np.ndarray:
        """Gradients (n_objectives, N, C, H, W) w.r.t. pixel-space ``x`` of scalar objectives of the logits.

        ``objectives(logits, rows)`` gets a batch's logits and its slice of the whole input. ART preprocessing
        defences are differentiated through when they are torch-based, else via their gradient estimates.
        """
        bs = self._resolve_batch_size(batch_size)
        x = check_image_array(x, self._input_shape)
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
            scalars = objectives(self._logits(x_in), rows)
            for k, scalar in enumerate(scalars):
                (g,) = torch.autograd.grad(scalar, x_leaf, retain_graph=k < len(scalars) - 1)
                g = g.detach().cpu().numpy()
                if not self.all_framework_preprocessing:
                    g = self._apply_preprocessing_gradient(x_batch, g)
                grads[k, rows] = g
        self._model.eval()
        return grads

    # ------------------------------------------------------------------ ART interface
    def loss_gradient(self, x: np.ndarray, y: np.ndarray, training_mode: bool = False, batch_size: int | None = None,
                      **kwargs: Any) -> np.ndarray:
        """Gradient w.r.t. pixel-space ``x`` of the mean cross-entropy of the zero-shot logits.

        ``y``: one-hot (N, K) or class indices (N,). Returns float32 of ``x``'s shape.
        """
        x = check_image_array(x, self._input_shape)
        target = torch.from_numpy(self._class_indices(y, x.shape[0])).to(self._device)
        n = x.shape[0]

        def objective(logits: torch.Tensor, rows: slice) -> list[torch.Tensor]:
            return [F.cross_entropy(logits, target[rows], reduction="sum") / n]

        return self._input_gradients(x, objective, 1, batch_size, training_mode)[0]

    def class_gradient(self, x: np.ndarray, label: int | list[int] | np.ndarray | None = None,
                       training_mode: bool = False, batch_size: int | None = None, **kwargs: Any) -> np.ndarray:
        """Gradients of the zero-shot logits w.r.t. ``x``.

        (N, K, C, H, W) for all classes; (N, 1, C, H, W) for ``label`` (one int or one index per sample).
        """
        x = check_image_array(x, self._input_shape)
        n, k = x.shape[0], self.nb_classes
        if label is None:
            def objective(logits: torch.Tensor, rows: slice) -> list[torch.Tensor]:
                return [logits[:, c].sum() for c in range(k)]

            return np.swapaxes(self._input_gradients(x, objective, k, batch_size, training_mode), 0, 1)
        if isinstance(label, (int, np.integer)):
            labels = np.full(n, int(label))
        else:
            labels = np.asarray(label)
            if labels.shape != (n,):
                raise ValueError(f"label must be an int or {n} class indices, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"label values must be integers in [0, {k - 1}]")
        index = torch.from_numpy(labels.astype(np.int64)).to(self._device)

        def chosen(logits: torch.Tensor, rows: slice) -> list[torch.Tensor]:
            return [logits.gather(1, index[rows, None]).sum()]

        return np.swapaxes(self._input_gradients(x, chosen, 1, batch_size, training_mode), 0, 1)

    def get_activations(self, x: Any, layer: int | str, batch_size: int = 128,
                        framework: bool = False) -> np.ndarray | torch.Tensor:
        """Image features of ``layer`` (name or index into ``layer_names``): numpy, or a torch tensor with a graph."""
        bs = self._resolve_batch_size(batch_size)
        key = self._layer_key(layer)
        if framework:
            pixels = x if isinstance(x, torch.Tensor) else torch.from_numpy(check_image_array(x, self._input_shape))
            return self._model.image_features(normalize_pixels(pixels.to(self._device)))[key]
        return self._map_images(x, bs, lambda pix: self._model.image_features(normalize_pixels(pix))[key])

    def clone_for_refitting(self) -> MedCLIPEstimator:
        """A deep copy (ART's name for it)."""
        return self.clone()

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
        """Prompt-ensemble logits (N, K): per class, the mean over its prompts of ``exp(logit_scale) * cos``."""
        return self._map_images(x, batch_size, self._logits)

    def clear_cache(self) -> None:
        """Forget the cached prompt embeddings (they are also refreshed automatically when text weights change)."""
        self._bank.clear()

    def _settings(self) -> dict[str, Any]:
        return {"input_shape": self._input_shape, "device": self._device, "batch_size": self.batch_size,
                "clip_values": tuple(float(v) for v in np.asarray(self._clip_values).ravel()[:2]),
                "amp": self.amp, "num_workers": self.num_workers, "preprocessing_defences": self.preprocessing_defences,
                "postprocessing_defences": self.postprocessing_defences}

    def with_prompts(self, prompts: Mapping[str, list[str]]) -> MedCLIPEstimator:
        """A new estimator for another zero-shot task that shares this one's model (training one trains both)."""
        return MedCLIPEstimator(self._model, self.tokenizer, check_prompts(prompts), **self._settings())

    def clone(self) -> MedCLIPEstimator:
        """A deep copy with its own model (attacks and defences fine-tune copies, never the original)."""
        return MedCLIPEstimator(copy.deepcopy(self._model), self.tokenizer, self.prompts, **self._settings())

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write model weights, model config, tokenizer and prompts as the folder ``directory``, atomically: a crash
        leaves the previous folder or none (see ``artmed.bundle.save_bundle``)."""
        from artmed.bundle import save_bundle

        save_bundle(self, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "auto",
             **kwargs: Any) -> MedCLIPEstimator:
        """An estimator saved with ``save``; ``kwargs`` override saved settings (e.g. ``batch_size``)."""
        from artmed.bundle import load_bundle

        return load_bundle(cls, directory, device=device, **kwargs)

    @classmethod
    def tiny(cls, prompts: Mapping[str, list[str]], image_size: int = 64, seed: int = 0, tokenizer: Any = None,
             model_overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> MedCLIPEstimator:
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
    def from_checkpoint(cls, path: str | os.PathLike[str], variant: str = "resnet50",
                        tokenizer_dir: str | os.PathLike[str] | None = None, *,
                        prompts: Mapping[str, list[str]], **kwargs: Any) -> MedCLIPEstimator:
        """A released MedCLIP ("resnet50" or "swin_tiny") from local weights and a local ``vocab.txt`` directory.

        ``tokenizer_dir`` defaults to ``path`` when that directory holds ``vocab.txt``. Input is (1, 224, 224).
        """
        from artmed.models import load_medclip, load_tokenizer

        if tokenizer_dir is None:
            if not (Path(path).is_dir() and (Path(path) / "vocab.txt").is_file()):
                raise ValueError(f"no tokenizer_dir given and {str(path)!r} holds no vocab.txt; "
                                 "pass the directory of the Bio_ClinicalBERT tokenizer")
            tokenizer_dir = path
        check_prompts(prompts)
        return cls(load_medclip(path, variant=variant), load_tokenizer(tokenizer_dir), prompts, **kwargs)
