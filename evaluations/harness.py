"""The evaluation harness: config -> per seed: data, base model -> every attack -> zero-shot metrics -> every defense.

Every attack runs once per study seed (an independent replicate: data draw, base model, poison subset, trigger
reference, BadDist). Each finished cell (a seed's base model, one attacked model, one defense on one attacked model)
is written atomically under ``output_dir/cells`` and skipped when the study is re-run, so an interrupted run resumes
where it stopped (failed cells are retried). A cell computed under other settings is never reused (a
``SettingsMismatchError`` names them); a cell computed by other code (another ``source_hash``) is recomputed, unless
``reuse_stale=True`` keeps it. Trained models are saved under ``output_dir/models``; features are extracted once per
model and shared by all its defenses.

No failure becomes a number: a model whose training diverges or whose predictions are not finite is a failed cell
(its defenses are skipped); a defense that raises (``sys.exit()`` included), returns a malformed result or changes
the shared model is recorded as failed, and the study goes on. Defenses see what a defender has (no poison mask,
trigger or target), as read-only arrays in their own copy of the context; the harness alone scores them, the models
a mitigation hands to ``context.report`` included (the record's ``monitor``). Ctrl-C stops the study with the
finished cells in the result (``interrupted=True``).

Nothing is reused that should not be: a run holds the output folder's lock (a second run on it is refused before it
touches a cell), removes what a killed run left half-written, and recomputes a cell whose record lacks a field its
kind needs or holds one of the wrong type (``RECORD_FIELDS``), with a warning naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from artmed.attacks.pipeline import (
    AttackOutcome,
    AttackSpec,
    StepCache,
    poison_training_set,
    run_attack,
    supply_chain_attack,
)
from artmed.attacks.steps import ESTIMATOR, AttackContext, Poisoned
from artmed.attacks.triggers import Trigger
from artmed.data.dataset import FileImageSet, ZeroShotTask
from artmed.data.medclip_prompts import NORMAL_CLASSES, medclip_prompt_draws, no_finding_sentences
from artmed.defenses import registry
from artmed.defenses.base import (
    RESULT_TYPES,
    DetectionResult,
    EvaluationContext,
    InputScreen,
    ModelVerdict,
    UnexaminedRowsWarning,
)
from artmed.device import thread_limit
from artmed.distributed import is_main_process, world_size
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.config import DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.engine import DEFAULT_THREADS, auto_workers, compute_cells
from artmed.evaluations.metrics import defense_effectiveness_rating, detection_metrics, input_screen_metrics
from artmed.evaluations.preflight import check_study_data
from artmed.evaluations.resources import measure
from artmed.evaluations.scoring import score_estimator, score_over_prompt_draws, target_index
from artmed.evaluations.sources import build_base_estimator, load_study_data, own_report_sampler
from artmed.evaluations.store import OutputWriteError, ResultStore, folder_lock, remove_leftovers, to_jsonable
from artmed.progress import study_bar, tqdm


class SettingsMismatchError(ValueError):
    """An output folder holds a cell computed under other settings: the study stops rather than mix them."""


@dataclass
class StudyResult:
    """The finished study: one record per attacked model and one per (model, defense), plus where files went."""

    models: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    output_dir: Path
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    projections: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Model and defense records whose cell did not finish (status "failed" or "skipped"), with their error."""
        return [r for r in self.models + self.defenses if r.get("status", "ok") != "ok"]


class Harness:
    """Runs a ``StudyConfig``; ``run()`` returns a ``StudyResult`` and leaves cells, models and tables on disk.

    ``workers`` > 1 or a Ray cluster's ``address``: the missing cells are computed in Ray tasks first
    (``artmed.evaluations.engine``), then read back; None: as many as the cores allow (``engine.auto_workers``).
    ``threads``: torch's and the BLAS libraries' thread count for every cell, in this process and in the workers
    (default 1, so that a study's numbers do not depend on the machine's core count; None: leave this process's
    torch thread count), since it changes floating-point results."""

    def __init__(
        self,
        config: StudyConfig,
        verbose: bool = True,
        reuse_stale: bool = False,
        workers: int | None = None,
        threads: int | None = DEFAULT_THREADS,
        address: str | None = None,
    ) -> None:
        if not isinstance(config, StudyConfig):
            raise ValueError(f"Harness needs a StudyConfig, got {type(config).__name__}")
        for name, value in (("workers", workers), ("threads", threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        config.check_runnable()
        self.config = config
        self.verbose = verbose
        self.reuse_stale = reuse_stale
        self.threads = threads
        self.workers = workers if workers is not None else auto_workers(config, threads or torch.get_num_threads())
        self.address = address
        self.output_dir = Path(config.output_dir)
        self.store = ResultStore(self.output_dir / "cells")
        self.stale: list[str] = []
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ data and models
    def load_data(self, seed: int) -> _SeedData:
        """One seed's data (checked before its first training), tasks with their sampled prompts and empty caches,
        passed to that seed's cells."""
        cfg = self.config
        data = check_study_data(cfg, load_study_data(cfg, seed))  # refused before this seed's first training
        texts, text_labels = data.texts.sentences, data.texts.labels
        prompt_sets = (
            self._sampled_prompts(data.tasks, texts, text_labels) if cfg.evaluation.prompts == "medclip" else {}
        )
        tasks = {
            name: replace(task, prompts=prompt_sets[name][0]) if prompt_sets else task
            for name, task in data.tasks.items()
        }
        assert cfg.task is not None  # StudyConfig resolves the headline task
        task = tasks[cfg.task]
        return _SeedData(
            seed=seed,
            x_train=data.x_train,
            y_train=data.y_train,
            x_shadow=data.x_shadow,
            y_shadow=data.y_shadow,
            texts=texts,
            text_labels=text_labels,
            tasks=tasks,
            task=task,
            x_test=task.images.to_array(),
            test_targets=task.targets,
            prompt_sets=prompt_sets,
            task_files=data.task_images,
            report_sampler=own_report_sampler(data, seed),
        )

    def _fit_params(self, run: _SeedData, train: TrainConfig) -> dict[str, Any]:
        """``train``'s fit parameters, with the own-report sampler under ``text_sampling: own_report``."""
        params = train.fit_params()
        if train.text_sampling == "own_report":
            params["report_sampler"] = run.report_sampler
        return params

    def _native(self, spec: AttackSpec) -> bool:
        """True when ``spec``'s trigger is pasted on the native image files (``data.native_trigger``, a patch)."""
        return self.config.data.native_trigger and spec.trigger == "patch"

    def _triggered(
        self, run: _SeedData, task: str, spec: AttackSpec, trigger: Any, x: np.ndarray, planted: bool = False
    ) -> np.ndarray:
        """The triggered test images of ``task``: ``trigger(x)``, or with ``data.native_trigger`` the task's image
        files read with the patch pasted on the native image before the padding (stage "raw", the released test set),
        computed once per task and trigger; a trigger a step ``planted`` (``Poisoned.trigger``): ``trigger(x)``."""
        files = run.task_files.get(task)
        if not self._native(spec) or files is None or planted:
            return trigger(x)
        key = (task, json.dumps(to_jsonable(spec.trigger_params), sort_keys=True))
        if key not in run.native_triggered:
            run.native_triggered[key] = files.triggered(trigger, stage="raw").to_array()
        return run.native_triggered[key]

    def _load_model(self, path: Path) -> MedCLIPEstimator:
        """A saved model folder on the study's device, reading images with the study's loader workers."""
        return MedCLIPEstimator.load(path, device=self.config.device, num_workers=self.config.data.num_workers)

    def _sampled_prompts(
        self, tasks: dict[str, ZeroShotTask], texts: list[str], text_labels: np.ndarray
    ) -> dict[str, list[dict[str, list[str]]]]:
        """MedCLIP's sampled prompt sets per task (``config.evaluation``); a normal class's prompts are the text
        pool's No-Finding-only sentences, as the released evaluation draws them from sentence-label.csv."""
        ev = self.config.evaluation
        normal = no_finding_sentences(texts, text_labels)
        return {
            name: medclip_prompt_draws(
                task.class_names,
                draws=ev.prompt_draws,
                n=ev.n_prompts,
                seed=ev.prompt_seed,
                normal_sentences=normal if set(task.class_names) & set(NORMAL_CLASSES) else None,
            )
            for name, task in tasks.items()
        }

    def _base_model(self, run: _SeedData) -> MedCLIPEstimator:
        cfg = self.config
        key = f"base-s{run.seed}"
        path = self.output_dir / "models" / key
        if self._finished("model", key, run.seed) and path.exists():
            return self._load_model(path)
        estimator = build_base_estimator(cfg, run.task.prompts, run.seed)
        if cfg.model.checkpoint is not None:  # released weights are the base model as they are
            return estimator
        with measure() as cost:
            history = estimator.fit(
                run.x_train,
                run.y_train,
                texts=run.texts,
                text_labels=run.text_labels,
                seed=run.seed,
                verbose=self.verbose,
                **self._fit_params(run, cfg.pretrain),
            )
        _save_model(estimator, path)
        record = {"cell": key, "final_loss": float(history["loss"][-1]), "seconds": cost.seconds}
        self.store.save("model", key, self._stamp(record, run.seed))
        return estimator

    def _attacked_model(
        self, run: _SeedData, spec: AttackSpec, base: _LazyBase
    ) -> tuple[dict[str, Any], AttackOutcome | None, MedCLIPEstimator]:
        key = self._key(spec)
        path = self.output_dir / "models" / key
        if self._finished("model", key, run.seed, spec) and path.exists():
            return self.store.load("model", key), None, self._load_model(path)
        with measure() as cost:
            outcome = run_attack(
                spec,
                base.get(),
                run.x_train,
                run.y_train,
                run.texts,
                run.text_labels,
                fit_params={**self._fit_params(run, self.config.train), "verbose": self.verbose},
                context=self._attack_context(run, spec),
                cache=run.steps,
            )
        _save_model(outcome.estimator, path)
        record = {
            "cell": f"model/{key}",
            **_spec_fields(spec, key),
            "n_poison": int(outcome.poison_mask.sum()),
            "train_seconds": cost.seconds,
            "train_peak_mb": cost.peak_mb,
            **_step_fields(spec, outcome.history),
            **self._score_all_tasks(run, outcome.estimator, spec, self._poisoned(run, spec, base).trigger),
        }
        if outcome.poison_mask.any():
            record["arrays"] = self._projection_sample(outcome, spec.seed)
        record = self._stamp(record, run.seed, spec)
        self.store.save("model", key, record)
        return record, outcome, outcome.estimator

    def _model_cell(
        self, run: _SeedData, spec: AttackSpec, base: _LazyBase
    ) -> tuple[dict[str, Any], MedCLIPEstimator | None]:
        """The attacked model's record and estimator; a failure is recorded (status "failed") and gives None."""
        try:
            record, _, estimator = self._attacked_model(run, spec, base)
        except (SettingsMismatchError, OutputWriteError):  # a folder that cannot be written fails every cell
            raise
        except BaseModelFailed as exc:  # the base cell holds the traceback
            return self._failed_model(run.seed, spec, str(exc), None), None
        except Exception as exc:  # a diverged training or an unscorable model must not cost the rest of the study
            return self._failed_model(run.seed, spec, _describe(exc), traceback.format_exc(limit=5)), None
        return {**record, "status": record.get("status", "ok")}, estimator

    def _failed_model(self, seed: int, spec: AttackSpec, error: str, trace: str | None) -> dict[str, Any]:
        key = self._key(spec)
        record = {"cell": f"model/{key}", **_spec_fields(spec, key), "status": "failed", "error": error}
        if trace:
            record["traceback"] = trace
        record = self._stamp(record, seed, spec)
        self.store.save("model", key, record)
        return record

    def _guarded(self, run: _SeedData) -> tuple[MedCLIPEstimator | None, str | None]:
        """The seed's base model, or (None, the error) when building or loading it raises: a failed base model fails
        the cells that need it (``_LazyBase``), not the study."""
        try:
            return self._base_model(run), None
        except (SettingsMismatchError, OutputWriteError):  # a folder that cannot be written fails every cell
            raise
        except Exception as exc:
            key = f"base-s{run.seed}"
            self.store.save(
                "model",
                key,
                self._stamp(
                    {
                        "cell": key,
                        "status": "failed",
                        "error": _describe(exc),
                        "traceback": traceback.format_exc(limit=5),
                    },
                    run.seed,
                ),
            )
            return None, _describe(exc)

    def _attack_context(self, run: _SeedData, spec: AttackSpec) -> AttackContext:
        """What ``spec``'s steps get: its shared settings, the seed's shadow set (the attacker's images), the test
        images as BadDist's held-out probe, and with ``data.native_trigger`` the native stage a data step triggers."""
        native = "padded" if self._native(spec) and isinstance(run.x_train, FileImageSet) else None
        return spec.context(
            x_shadow=run.x_shadow, y_shadow=run.y_shadow, x_probe=run.x_test, verbose=self.verbose, native=native
        )

    def _poisoned(self, run: _SeedData, spec: AttackSpec, base: _LazyBase | None) -> Poisoned:
        """The victim's training set under ``spec``, each data step's output kept in the seed's step cache (shared by
        the attacked model, its defenses, filtered retraining and other attacks with the same steps); a data step that
        uses ``ESTIMATOR`` gets ``base`` after the supply-chain steps (also cached)."""
        context = self._attack_context(run, spec)
        if spec.uses(ESTIMATOR):
            if base is None:
                raise ValueError(f"attack {spec.attack!r} attacks the base model: _poisoned needs the seed's base")
            context = replace(context, estimator=supply_chain_attack(spec, base.get(), context, run.steps)[0])
        return poison_training_set(spec, run.x_train, run.y_train, context, run.steps)

    def _projection_sample(self, outcome: AttackOutcome, seed: int, n_clean: int = 1000) -> dict[str, np.ndarray]:
        """Pooled features of every poisoned row and a seeded sample of clean rows (for the 2-D projection)."""
        mask = outcome.poison_mask
        clean = np.flatnonzero(~mask)
        clean = np.random.default_rng(seed).choice(clean, size=min(n_clean, clean.size), replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(mask), clean]))
        features = outcome.estimator.get_activations(outcome.x_train[rows], "image_pooled")
        return {"projection_features": features.reshape(len(rows), -1), "projection_mask": mask[rows]}

    def _score_all_tasks(
        self, run: _SeedData, estimator: MedCLIPEstimator, spec: AttackSpec, planted: Trigger | None
    ) -> dict[str, Any]:
        """Metrics on the study's task at the top level and on every task under ``tasks``, with the attack's trigger:
        the one a step ``planted`` (``Poisoned.trigger``, cached with the step's output), else the spec's."""
        trigger = planted if planted is not None else spec.build_trigger()
        per_task = {}
        for name, task in run.tasks.items():
            x = run.x_test if name == self.config.task else task.images.to_array()
            target = target_index(task.class_names, spec.target)
            x_triggered = self._triggered(run, name, spec, trigger, x, planted is not None)
            if run.prompt_sets:
                per_task[name] = score_over_prompt_draws(
                    estimator.with_prompts(task.prompts),
                    x,
                    task.targets,
                    x_triggered,
                    target,
                    prompt_sets=run.prompt_sets[name],
                )
            else:
                per_task[name] = score_estimator(
                    estimator.with_prompts(task.prompts), x, task.targets, x_triggered, target
                )
        assert self.config.task is not None  # StudyConfig resolves the headline task
        return {**per_task[self.config.task], "tasks": per_task}

    # ------------------------------------------------------------------ defenses
    def _run_defense(
        self,
        run: _SeedData,
        dspec: DefenseSpec,
        spec: AttackSpec,
        model_record: dict[str, Any],
        estimator: MedCLIPEstimator,
        base: _LazyBase,
        context: EvaluationContext,
        truth: _Truth,
    ) -> bool:
        """Run one defense cell and save its record; True when the defense changed the shared model in place."""
        model_key = self._key(spec)
        key = f"{model_key}+{dspec.name}"
        record: dict[str, Any] = {
            "cell": f"defense/{key}",
            **_spec_fields(spec, model_key),
            "defense": dspec.name,
            "params": dspec.params,
            "ca_before": model_record["ca"],
            "asr_before": model_record["asr"],
        }
        monitored: list[dict[str, Any]] = []

        def monitor(label: str, model: Any) -> None:
            monitored.append(
                {
                    "label": str(label),
                    **score_estimator(model, run.x_test, run.test_targets, truth.x_test_triggered, truth.target_class),
                }
            )

        try:
            defense = registry.create(dspec.name, **dspec.params)
            record["kind"] = defense.kind
            with measure() as cost, warnings.catch_warnings():
                warnings.simplefilter("ignore", UnexaminedRowsWarning)  # said once per defense per run, read back
                # its own context: reassigned fields do not reach the next defense
                result = defense.run(replace(context, monitor=monitor))
            record.update(seconds=cost.seconds, peak_mb=cost.peak_mb)
            _check_result(dspec.name, defense.kind, result, len(truth.poison_mask))
            repaired = None
            if isinstance(result, DetectionResult):
                flags, scores = result.flags, result.scores
                record.update(detection_metrics(flags, truth.poison_mask, scores))
                if result.unexamined is not None:
                    record["unexamined"] = result.unexamined
                record["arrays"] = {"scores": scores, "flags": flags, "poison_mask": truth.poison_mask}
                repaired = self._retrain_filtered(run, spec, base, flags) if dspec.retrain else None
            elif isinstance(result, InputScreen):
                record.update(self._screen_inputs(run, dspec.name, result, truth))
            elif isinstance(result, ModelVerdict):
                record.update(_verdict_fields(result, spec, truth))
            else:
                repaired = result.estimator
                record["history"] = result.history
                record["monitor"] = monitored
                if "clean_indices" in result.extra:  # rows of the training set the defense took for clean
                    record["n_poisoned_in_clean"] = int(truth.poison_mask[result.extra["clean_indices"]].sum())
            if repaired is not None:
                after = score_estimator(
                    repaired, run.x_test, run.test_targets, truth.x_test_triggered, truth.target_class
                )
                record.update({f"{k}_after": v for k, v in after.items() if k in ("ca", "asr", "asr_all", "ra")})
                record["der"] = _der(record)
            record["status"] = "ok"
        except KeyboardInterrupt:
            record.update(status="failed", error="interrupted (KeyboardInterrupt) while the defense ran")
            self.store.save("defense", key, self._stamp(record, run.seed, spec, dspec))
            raise
        except (Exception, SystemExit) as exc:  # a broken plugin must not cost the rest of the study
            record.update(status="failed", error=_describe(exc), traceback=traceback.format_exc(limit=5))
        changed = fingerprint(estimator) != truth.fingerprint
        if changed:
            record.update(
                status="failed",
                error=f"{dspec.name} changed the shared model in place (every defense must "
                "leave context.estimator as it found it); later defenses get it "
                "reloaded from disk",
            )
        self.store.save("defense", key, self._stamp(record, run.seed, spec, dspec))
        return changed

    def _warn_unexamined(self, name: str, unexamined: int, n: int) -> None:
        """Warn, once per defense per run (in the process that gathers the tables, not in Ray's workers), that the
        detector never examined some training rows (groups too small)."""
        if unexamined and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"{name}: {unexamined} of {n} training rows sit in label groups too small to analyse and are "
                "never examined (see its grouping and min_group_size); the 'unexamined' column counts them "
                "in every cell",
                UnexaminedRowsWarning,
                stacklevel=2,
            )

    def _screen_inputs(self, run: _SeedData, name: str, screen: InputScreen, truth: _Truth) -> dict[str, Any]:
        """An input screen scored on the clean test images and their triggered copies (which only the harness has);
        ``screen_seconds``: the time that took (``seconds`` is the screen's set-up: STRIP's threshold)."""
        with measure() as cost:
            clean, triggered = (
                np.asarray(screen.score(x), dtype=np.float64) for x in (run.x_test, truth.x_test_triggered)
            )
        for which, scores, x in (("clean", clean, run.x_test), ("triggered", triggered, truth.x_test_triggered)):
            if scores.shape != (len(x),):
                raise ValueError(f"{name}: score() gave shape {scores.shape} for {len(x)} {which} inputs")
        fields = input_screen_metrics(clean, triggered, screen.threshold)
        return {
            **fields,
            "screen_seconds": cost.seconds,
            "arrays": {"clean_scores": clean, "triggered_scores": triggered},
        }

    def _retrain_filtered(
        self, run: _SeedData, spec: AttackSpec, base: _LazyBase, flags: np.ndarray
    ) -> MedCLIPEstimator:
        """The victim's model retrained by the same pipeline (the seed's cached step outputs) on the training set
        minus the flagged rows."""
        outcome = run_attack(
            spec,
            base.get(),
            run.x_train,
            run.y_train,
            run.texts,
            run.text_labels,
            fit_params={**self._fit_params(run, self.config.train), "verbose": False},
            context=self._attack_context(run, spec),
            keep=~flags,
            cache=run.steps,
        )
        return outcome.estimator

    # ------------------------------------------------------------------ the study
    def run(self) -> StudyResult:
        """Run every missing cell and return all records (finished ones are read back, not recomputed). The output
        folder is locked for the run (``folder_lock``: a second run on it is refused before touching any cell), and
        what a killed run left half-written there (staging folders, temp files) is removed first."""
        result = StudyResult([], [], self.output_dir)
        self._warned = set()
        with folder_lock(self.output_dir):
            if is_main_process():
                for path in remove_leftovers(self.output_dir):
                    warnings.warn(f"removed {path}, left half-written by an interrupted run", stacklevel=2)
            try:
                with thread_limit(self.threads):
                    if self.workers > 1 or self.address is not None:
                        threads = self.threads or torch.get_num_threads()
                        self.stale += compute_cells(self, self.workers, threads, self.address)
                    self._run_cells(result)
            except KeyboardInterrupt:
                result.interrupted = True
                if self.verbose:
                    print("interrupted: the tables hold the cells finished so far; run again to resume")
        if self.stale and self.verbose:
            print(f"recomputed {len(self.stale)} cell(s) computed by other artmed code (--reuse-stale keeps them)")
        return result

    def _run_cells(self, result: StudyResult) -> StudyResult:
        cfg = self.config
        cells = [(seed, replace(spec, seed=seed)) for seed in cfg.seed_list for spec in cfg.attacks]
        bar = study_bar(cells, "attacks x seeds", verbose=self.verbose)
        run: _SeedData | None = None
        for n, (seed, spec) in enumerate(bar):
            if run is None or run.seed != seed:
                run = self.load_data(seed)
                base = _LazyBase(self, run)
            bar.set_postfix_str(self._key(spec))
            self._attack_cells(run, spec, base, result)
            run.forget({k for later_seed, later in cells[n + 1 :] if later_seed == seed for k in later.step_keys()})
        for cell in result.defenses:  # here, not per cell: Ray's workers compute cells but gather no tables
            flags = result.arrays.get(cell["cell"], {}).get("flags")
            if cell.get("unexamined") and flags is not None:
                self._warn_unexamined(cell["defense"], cell["unexamined"], len(flags))
        return result

    def _attack_cells(self, run: _SeedData, spec: AttackSpec, base: _LazyBase, result: StudyResult) -> None:
        """One attacked model's cells (the model, then each defense that runs on it), computed where missing and
        added to ``result``."""
        key = self._key(spec)
        record, estimator = self._model_cell(run, spec, base)
        sample = record.pop("arrays", None) or {}
        if "projection_features" in sample:
            result.projections[key] = (
                np.asarray(sample["projection_features"]),
                np.asarray(sample["projection_mask"], dtype=bool),
            )
        result.models.append(record)
        wanted = [d for d in self.config.defenses if d.runs_on(spec.attack)]
        if estimator is None:
            result.defenses.extend(_skipped(spec, key, d, f"the model failed: {record['error']}") for d in wanted)
            return
        try:
            self._run_defenses(run, spec, record, estimator, base, wanted)
        except BaseModelFailed as exc:  # what the defenses of an attack on the base model see needs it
            result.defenses.extend(
                _skipped(spec, key, d, str(exc)) for d in wanted if self._current("defense", f"{key}+{d.name}") is None
            )
        finally:  # also on Ctrl-C: the tables keep every defense cell written so far
            for dspec in wanted:
                cell = self._current("defense", f"{key}+{dspec.name}")
                if cell is not None:
                    result.arrays[cell["cell"]] = cell.pop("arrays", None) or {}
                    result.defenses.append(cell)

    # ------------------------------------------------------------------ one unit of work at a time (the engine's)
    def pending(self, seed: int, spec: AttackSpec) -> bool:
        """True when a cell of the attacked model ``spec`` (seeded ``seed``) is still to compute: the model or a
        defense that runs on it (``SettingsMismatchError`` when one was computed under other settings)."""
        spec = replace(spec, seed=seed)
        key = self._key(spec)
        if not self._finished("model", key, seed, spec):
            return True
        wanted = [d for d in self.config.defenses if d.runs_on(spec.attack)]
        return any(not self._finished("defense", f"{key}+{d.name}", seed, spec, d) for d in wanted)

    def compute_base(self, run: _SeedData) -> str | None:
        """Build ``run``'s base model unless its cell is finished (its cell written), for the attacked models
        computed apart from it; the error when it failed (the base cell records it), else None."""
        key = f"base-s{run.seed}"
        if self._finished("model", key, run.seed) and (self.output_dir / "models" / key).exists():
            return None
        return self._guarded(run)[1]

    def compute_attack(self, run: _SeedData, spec: AttackSpec, base_error: str | None) -> None:
        """Compute the missing cells of one attacked model (``spec`` seeded ``run.seed``), its base model read from
        its finished cell, or failed with ``base_error`` (``compute_base``'s)."""
        base = _LazyBase(self, run, base_error)
        self._attack_cells(run, replace(spec, seed=run.seed), base, StudyResult([], [], self.output_dir))

    def score_saved(self, run: _SeedData, model: AttackSpec, under: AttackSpec) -> dict[str, Any]:
        """The finished model of the cell ``model`` (seeded ``run.seed``) scored on ``run``'s tasks under ``under``'s
        trigger and target (e.g. a clean model under an attack's trigger: what the trigger alone does); a
        ValueError names a model that is not finished and saved."""
        model = replace(model, seed=run.seed)
        key = self._key(model)
        path = self.output_dir / "models" / key
        if not (self._finished("model", key, run.seed, model) and path.exists()):
            raise ValueError(
                f"no finished, saved model {key!r} of this code in {self.output_dir}: run the study (or pass "
                "reuse_stale=True to score a model other artmed code saved)"
            )
        with thread_limit(self.threads):
            return self._score_all_tasks(run, self._load_model(path), replace(under, seed=run.seed), None)

    def _run_defenses(
        self,
        run: _SeedData,
        spec: AttackSpec,
        record: dict[str, Any],
        estimator: MedCLIPEstimator,
        base: _LazyBase,
        wanted: list[DefenseSpec],
    ) -> None:
        """Every defense cell of one model not finished yet; a defense that changed the model gets it reloaded."""
        key = self._key(spec)
        pending = [d for d in wanted if not self._finished("defense", f"{key}+{d.name}", run.seed, spec, d)]
        if not pending:
            return
        context, truth = self._context(run, spec, estimator, base)
        for dspec in tqdm(pending, desc=f"defenses on {key}", disable=not self.verbose, leave=False):
            if self._run_defense(run, dspec, spec, record, estimator, base, context, truth):
                estimator = self._load_model(self.output_dir / "models" / key)
                context, truth = self._context(run, spec, estimator, base)

    def _context(
        self, run: _SeedData, spec: AttackSpec, estimator: MedCLIPEstimator, base: _LazyBase | None
    ) -> tuple[EvaluationContext, _Truth]:
        """What the defenses of one model see, and the harness's own copy of the truth it scores them with (triggered
        test images: with the trigger a step planted, ``Poisoned.trigger``, else the spec's)."""
        poisoned = self._poisoned(run, spec, base)
        planted = poisoned.trigger is not None
        trigger = poisoned.trigger if planted else spec.build_trigger()
        target = target_index(run.task.class_names, spec.target)
        assert self.config.task is not None  # StudyConfig resolves the headline task
        truth = _Truth(
            poisoned.mask,
            self._triggered(run, self.config.task, spec, trigger, run.x_test, planted),
            target,
            fingerprint(estimator),
            trigger,
        )
        context = EvaluationContext(
            estimator=estimator,
            x_train=poisoned.x,
            y_train=poisoned.y,
            texts=list(run.texts),
            text_labels=run.text_labels,
            x_test=run.x_test,
            test_targets=run.test_targets,
            task=run.task,
            x_clean=run.x_shadow,
            y_clean=run.y_shadow,
            seed=spec.seed,
        )
        return context, truth

    def _finished(
        self, kind: str, key: str, seed: int, spec: AttackSpec | None = None, defense: DefenseSpec | None = None
    ) -> bool:
        """True when the cell exists, did not fail and was computed by this code (or ``reuse_stale``); ValueError
        when it was computed under other settings (a cell of other code is recomputed whatever its settings)."""
        try:
            record = self.store.load(kind, key, arrays=False)
        except KeyError:
            return False
        if not self._valid(kind, key, record):
            return False
        if self._stale(record):
            if key not in self.stale:
                self.stale.append(key)
            return False
        changed = _differences(record.get("settings"), self._settings(seed, spec, defense))
        if changed:
            raise SettingsMismatchError(
                f"{self.store.cell_path(kind, key)} was computed with other settings "
                f"({', '.join(changed)}); use another output folder, or delete the cell to recompute it"
            )
        return record.get("status") != "failed"

    def _current(self, kind: str, key: str) -> dict[str, Any] | None:
        """The cell's record when it exists and was computed by this code (or ``reuse_stale``), else None."""
        try:
            record = self.store.load(kind, key)
        except KeyError:
            return None
        return None if self._stale(record) or not self._valid(kind, key, record) else record

    def _key(self, spec: AttackSpec) -> str:
        """The name of ``spec``'s cells and model folder (``StudyConfig.attack_key``)."""
        return self.config.attack_key(spec)

    def _valid(self, kind: str, key: str, record: dict[str, Any]) -> bool:
        """True when ``record`` has the fields its kind needs, of their types (``RECORD_FIELDS``); else a warning
        naming the file and the field, and the cell counts as missing (recomputed), never as finished."""
        status = record.get("status", "ok")
        which = "base" if kind == "model" and key.startswith("base-") else kind
        fields: dict[str, tuple[type, ...]] = {"settings": (dict,), "status": (str,)}
        if status == "ok":
            fields.update(RECORD_FIELDS.get(which, {}))
        for name, types in fields.items():
            value = record.get(name, "ok" if name == "status" else _MISSING)
            if value is _MISSING or isinstance(value, bool) or not isinstance(value, types):
                got = "missing" if value is _MISSING else f"{value!r} ({type(value).__name__})"
                warnings.warn(
                    f"ignoring result cell {self.store.cell_path(kind, key)}: field {name!r} must be "
                    f"{_type_names(types)}, got {got}; it will be recomputed",
                    stacklevel=3,
                )
                return False
        return True

    def _stale(self, record: dict[str, Any]) -> bool:
        """True when ``record`` was computed by other artmed code and ``reuse_stale`` does not keep it."""
        source = (record.get("provenance") or {}).get("source_hash")
        return source != self.store.provenance()["source_hash"] and not self.reuse_stale

    def _settings(
        self, seed: int, spec: AttackSpec | None = None, defense: DefenseSpec | None = None
    ) -> dict[str, Any]:
        """What one cell's result depends on (device and output folder excluded), in JSON form."""
        cfg = self.config
        data = {k: v for k, v in to_jsonable(cfg.data).items() if k != "num_workers"}  # workers change no result
        parts: dict[str, Any] = {
            "seed": seed,
            "task": cfg.task,
            "data": data,
            "pretrain": cfg.pretrain,
            "model": cfg.model,
            "tasks": cfg.tasks,
            "evaluation": cfg.evaluation,
        }
        if spec is not None:
            parts.update(train=cfg.train, attack=spec.settings())
        if defense is not None:
            parts["defense"] = defense
        return to_jsonable(parts)

    def _stamp(
        self, record: dict[str, Any], seed: int, spec: AttackSpec | None = None, defense: DefenseSpec | None = None
    ) -> dict[str, Any]:
        return {
            **record,
            "settings": self._settings(seed, spec, defense),
            "config": self.config.to_dict(),
            "seed": seed,
            "provenance": self.store.provenance(),
            "world_size": world_size(),
        }


_MISSING = object()
_NUMBER = (int, float)
RECORD_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "base": {"final_loss": _NUMBER},
    "model": {"ca": _NUMBER, "asr": (*_NUMBER, type(None)), "n_poison": (int,)},
    "defense": {"ca_before": (*_NUMBER, type(None)), "asr_before": (*_NUMBER, type(None))},
}
"""The fields a finished cell (status "ok") must hold to be reused, with their JSON types (None: a NaN saved), by
kind ("base": a seed's base model cell). Every cell also needs its ``settings`` (a mapping)."""


def _type_names(types: tuple[type, ...]) -> str:
    """``types`` in words, e.g. "a number or null" (an int is a number)."""
    names = {int: "an integer", float: "a number", dict: "a mapping", str: "a string", type(None): "null"}
    return " or ".join(names[t] for t in types if not (t is int and float in types))


@dataclass(frozen=True)
class _Truth:
    """The harness's own copy of what defenses are scored against (a defense cannot change it)."""

    poison_mask: np.ndarray
    x_test_triggered: np.ndarray
    target_class: int | None
    fingerprint: str
    trigger: Any


@dataclass
class _SeedData:
    """One seed's inputs, built by ``Harness.load_data`` and handed to each of that seed's cells: the study's data,
    the zero-shot tasks (``task``: the headline one, its images ``x_test``), the sampled prompt sets, and the caches
    the seed's cells share (each attack step's output by its key, the natively triggered test images)."""

    seed: int
    x_train: Any
    y_train: np.ndarray
    x_shadow: Any
    y_shadow: np.ndarray
    texts: list[str]
    text_labels: np.ndarray
    tasks: dict[str, ZeroShotTask]
    task: ZeroShotTask
    x_test: np.ndarray
    test_targets: np.ndarray
    prompt_sets: dict[str, list[dict[str, list[str]]]]
    task_files: dict[str, FileImageSet]
    report_sampler: Any
    steps: StepCache = field(default_factory=dict)
    native_triggered: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def forget(self, keep: set[str]) -> None:
        """Drop the cached step outputs whose key is not in ``keep`` (no later attack of the seed needs them)."""
        for key in [k for k in self.steps if k not in keep]:
            del self.steps[key]


def _save_model(estimator: MedCLIPEstimator, path: Path) -> None:
    """Save a model folder; under ``torchrun`` rank 0 alone writes (the cell saved next waits for it)."""
    if is_main_process():
        estimator.save(path)


def fingerprint(estimator: MedCLIPEstimator) -> str:
    """A hash of the model's parameters and buffers: equal before and after a defense that left the model alone."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in estimator.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _verdict_fields(verdict: ModelVerdict, spec: AttackSpec, truth: _Truth) -> dict[str, Any]:
    """A model-level verdict against the truth (every attacked model is backdoored); with an inverted ``mask``, the
    share of its mass inside the true trigger's footprint, and the mask and pattern as the record's arrays."""
    backdoored = bool(spec.composition)
    fields: dict[str, Any] = {
        "model_score": verdict.score,
        "model_flagged": float(verdict.backdoored),
        "backdoored": backdoored,
        "verdict_correct": verdict.backdoored == backdoored,
        "threshold": verdict.threshold,
    }
    mask = verdict.extra.get("mask")
    if mask is not None:
        mask = np.abs(np.asarray(mask, dtype=np.float64))
        mask = mask.reshape(-1, *mask.shape[-2:]).mean(axis=0)  # (H, W), channels averaged
        if backdoored:
            footprint = truth.trigger.mask(mask.shape)
            total = mask.sum()
            fields["mask_overlap"] = float(mask[footprint].sum() / total) if total > 0 else float("nan")
        fields["arrays"] = {
            "mask": mask,
            **({"pattern": np.asarray(verdict.extra["pattern"])} if "pattern" in verdict.extra else {}),
        }
    return fields


def _check_result(name: str, kind: str, result: Any, n: int) -> None:
    """A defense's result must be of its kind, with finite scores for every training sample."""
    expected = RESULT_TYPES.get(kind)
    if expected is None:
        raise ValueError(f"{name} declares kind {kind!r}; valid kinds: {sorted(RESULT_TYPES)}")
    if not isinstance(result, expected):
        raise ValueError(
            f"{name} is a {kind} defense but run() returned {type(result).__name__}, not a {expected.__name__}"
        )
    if isinstance(result, DetectionResult):
        if result.scores.shape != (n,):
            raise ValueError(f"{name} returned {result.scores.shape[0]} scores for {n} training samples")
        bad = int((~np.isfinite(result.scores)).sum())
        if bad:
            raise ValueError(f"{name} returned {bad} NaN or infinite score(s) of {n}")


class BaseModelFailed(RuntimeError):
    """A cell needed its seed's base model, which could not be built or loaded (the base cell records why)."""


class _LazyBase:
    """A seed's base model, built or loaded when a cell first needs it (``get``): a seed whose cells are all
    finished never reads it, so a damaged base model file cannot fail finished cells. A failure is kept: every later
    ``get`` raises ``BaseModelFailed`` with it (``error``: one already met, by the process that built it)."""

    def __init__(self, harness: Harness, run: _SeedData, error: str | None = None) -> None:
        self._harness, self._run = harness, run
        self._model: MedCLIPEstimator | None = None
        self._error = error

    def get(self) -> MedCLIPEstimator:
        if self._model is None and self._error is None:
            self._model, self._error = self._harness._guarded(self._run)
        if self._model is None:
            raise BaseModelFailed(f"base model: {self._error}")
        return self._model


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the code called sys.exit()"
    return f"{type(exc).__name__}: {exc}"


def _skipped(spec: AttackSpec, key: str, defense: DefenseSpec, error: str) -> dict[str, Any]:
    """The record of a defense cell not run because what it needs failed (``error`` says what)."""
    return {
        "cell": f"defense/{key}+{defense.name}",
        **_spec_fields(spec, key),
        "defense": defense.name,
        "seed": spec.seed,
        "status": "skipped",
        "error": error,
    }


def _spec_fields(spec: AttackSpec, key: str) -> dict[str, Any]:
    return {
        "attack_key": key,
        "attack": spec.attack,
        "trigger": spec.trigger if spec.composition else None,
        "percent_poison": spec.percent_poison if spec.uses("percent_poison") else 0.0,
        "target": spec.target,
        "attack_seed": spec.seed,
    }


def _step_fields(spec: AttackSpec, history: dict[str, Any]) -> dict[str, Any]:
    """Every step's scalar columns for the model's record (``AttackStep.summary``: BadDist's separation)."""
    return {name: value for step in spec.composition for name, value in step.summary(history).items()}


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths at which two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{path}.{k}" if path else k)
        ]
    return [] if old == new else [path]


def _der(record: dict[str, Any]) -> float:
    values = [record.get(k) for k in ("asr_before", "asr_after", "ca_before", "ca_after")]
    if any(v is None or not np.isfinite(v) for v in values):
        return float("nan")
    return defense_effectiveness_rating(*cast("list[float]", values))  # none is None (checked above)
