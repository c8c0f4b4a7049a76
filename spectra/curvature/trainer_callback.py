"""A Hugging Face ``transformers.TrainerCallback`` that runs a :class:`SharpnessTracker` every N optimizer
steps and logs through the Trainer's own ``log`` (so TensorBoard, W&B, CSV, ... receive the values as
configured) and to a JSONL file.

transformers is imported only when :class:`SharpnessCallback` is first used (module ``__getattr__``)::

    from hessian_spectra.curvature.trainer_callback import SharpnessCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    SharpnessCallback.attach(trainer, every=50, jsonl="out/sharpness.jsonl")
    trainer.train()

Batches: ``batches=`` if given, else the first ``num_examples`` examples of the training dataset,
collated by the Trainer's dataloader's own ``collate_fn`` once at the start of training (the same
fixed subset every time; the sampler is never iterated, so the training data order is untouched).
Under distributed training only the main process measures and logs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SharpnessCallback"]  # noqa: F822 (built on first use by __getattr__)

_CLASS: type | None = None


def _first_examples(dataloader: Any, n: int) -> Any:
    """``collate_fn`` of the first ``n`` dataset items: a fixed batch, without touching the sampler."""
    from hessian_spectra.errors import InputError

    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__getitem__"):
        raise InputError(
            None, "SharpnessCallback: the training dataloader has no indexable dataset; pass batches="
        )
    count = min(int(n), len(dataset))
    return collate([dataset[i] for i in range(count)])


def _build() -> type:
    from hessian_spectra.curvature.tracking import SharpnessTracker
    from transformers import TrainerCallback

    class SharpnessCallback(TrainerCallback):
        """Sharpness (lambda_max, 2/lr, the optimizer's threshold, ...) every ``every`` optimizer steps.

        Keyword arguments other than those below go to :class:`SharpnessTracker` (``lambda_min``,
        ``blocks``, ``trace``, ``tol``, ``max_steps``, ``warm_start``, ``max_examples``, ``jsonl``, ...).
        ``prefix`` names the logged keys (``sharpness/lambda_max``, ...). Use :meth:`attach` to log
        through ``trainer.log``; without a trainer the values go to ``state.log_history`` and the JSONL
        only.
        """

        def __init__(
            self,
            every: int = 50,
            *,
            batches: list[Any] | None = None,
            loss: Any = None,
            num_examples: int = 8,
            prefix: str = "sharpness/",
            trainer: Any = None,
            **tracker_kwargs: Any,
        ):
            self.tracker = SharpnessTracker(loss, every, batches=batches, **tracker_kwargs)
            self.num_examples, self.prefix, self.trainer = int(num_examples), prefix, trainer

        @classmethod
        def attach(cls, trainer: Any, every: int = 50, **kwargs: Any) -> SharpnessCallback:
            """Create the callback, bind it to ``trainer`` (its ``log`` reaches every configured
            logger) and add it to the trainer's callbacks; returns it."""
            callback = cls(every, trainer=trainer, **kwargs)
            trainer.add_callback(callback)
            return callback

        @property
        def history(self) -> list[Any]:
            return self.tracker.history

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            if self.tracker.batches is None:
                self.tracker.batches = [_first_examples(train_dataloader, self.num_examples)]
            return self.on_step_end(args, state, control, **kwargs)  # the starting point (step 0)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            if not state.is_world_process_zero or not self.tracker.due(state.global_step):
                return control
            if self.tracker.history and self.tracker.history[-1].step == state.global_step:
                return control  # resumed at a step already measured
            record = self.tracker.measure(model, step=state.global_step, optimizer=optimizer)
            values = record.log_values(self.prefix)
            if self.trainer is not None:
                # Trainer.log -> on_log clears control.should_log, which would drop the Trainer's own
                # loss log due at this step: keep the flag as the flow callback set it
                due = control.should_log
                self.trainer.log(values)
                control.should_log = due
            else:
                state.log_history.append({**values, "step": state.global_step})
            return control

    return SharpnessCallback


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "SharpnessCallback":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
